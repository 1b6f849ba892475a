variable "subscription_id" {
  description = "The subscription to deploy into (and that the RBAC target's scopes are in)."
  type        = string
}

variable "location" {
  description = "Azure region."
  type        = string
  default     = "westeurope"
}

variable "package_zip" {
  description = "The zip from `jitc package azure --out dist`."
  type        = string
  default     = "../../../../dist/jit-connector-azure.zip"
}

variable "key_vault_id" {
  description = "Resource id of the (RBAC-mode) vault that holds the catalog's secrets."
  type        = string
}

variable "alert_emails" {
  description = "Who receives the connector's alerts."
  type        = list(string)
  default     = []
}
