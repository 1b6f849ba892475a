variable "name" {
  description = "Prefix of every resource name (letters and digits, 3-12): the storage account is '<name>jitc<suffix>'."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9]{2,11}$", var.name))
    error_message = "name: 3-12 lower-case letters and digits, starting with a letter."
  }
}

variable "resource_group_name" {
  description = "Resource group that holds the connector's resources (created beforehand)."
  type        = string
}

variable "location" {
  description = "Azure region of every resource."
  type        = string
}

variable "catalog_file" {
  description = "The company's catalog (YAML or JSON). Shipped as the JITC_CATALOG app setting, with its digest, so every change shows in `terraform plan`."
  type        = string
}

variable "package_zip" {
  description = "The zip built by `jitc package azure` (function_app.py and host.json at its root)."
  type        = string
}

variable "package_deploy" {
  description = "How the package reaches the app. terraform: azurerm pushes package_zip at apply, over the app's publishing credentials (Basic auth on its SCM site, enabled for that alone). external: Basic auth stays off; after apply, deploy package_zip with an Entra ID token (az functionapp deployment source config-zip --resource-group RG --name APP --src ZIP)."
  type        = string
  default     = "terraform"
  validation {
    condition     = contains(["terraform", "external"], var.package_deploy)
    error_message = "package_deploy: terraform or external."
  }
}

variable "key_vault_id" {
  description = "Resource id of the Key Vault holding the connector's secrets. It must use the Azure RBAC permission model: access policies cannot be scoped to single secrets."
  type        = string
}

variable "key_vault_secret_names" {
  description = "The secrets the catalog references (azure-kv:https://VAULT.vault.azure.net/secrets/NAME): the app may read only these."
  type        = list(string)
  validation {
    condition     = alltrue([for n in var.key_vault_secret_names : can(regex("^[0-9A-Za-z-]{1,127}$", n))])
    error_message = "key_vault_secret_names: Key Vault secret names (letters, digits, dashes)."
  }
}

variable "rbac_role_definition_scope" {
  description = "Where the RBAC target's custom role is defined (a subscription id path, /subscriptions/ID); null when the catalog has no azure_rbac integration."
  type        = string
  default     = null
}

variable "rbac_scopes" {
  description = "The scopes of the catalog's azure_rbac connections (with a leading slash): the connector may read, write and delete role assignments only there."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for s in var.rbac_scopes : can(regex("^/subscriptions/[0-9a-f-]{36}(/resourceGroups/[^/]+(/providers/.+)?)?$", s))])
    error_message = "rbac_scopes: /subscriptions/ID[/resourceGroups/NAME[/providers/...]]."
  }
}

variable "rbac_role_ids" {
  description = "The role definition GUIDs the catalog's azure_rbac permissions hand out: a condition on the connector's own assignment lets it write or delete assignments of these roles only."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for r in var.rbac_role_ids : can(regex("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", r))])
    error_message = "rbac_role_ids: lower-case GUIDs."
  }
}

variable "rbac_pim" {
  description = "The catalog uses mode: pim (Entra ID P2): adds the PIM schedule-request actions to the custom role."
  type        = bool
  default     = false
}

variable "control_plane_principal_id" {
  description = "Optional: the control plane's service principal, allowed to put signed messages on the queue directly (no inbound HTTP needed)."
  type        = string
  default     = null
}

variable "sweep_schedule" {
  description = "NCRONTAB (six fields) of the sweep."
  type        = string
  default     = "0 */5 * * * *"
  validation {
    condition     = length(split(" ", var.sweep_schedule)) == 6
    error_message = "sweep_schedule: an NCRONTAB expression of six fields (seconds first)."
  }
}

variable "sweep_silence_minutes" {
  description = "Alert when no sweep has completed for this long (a window the scheduled query rule accepts)."
  type        = number
  default     = 30
  validation {
    condition     = contains([10, 15, 30, 45, 60], var.sweep_silence_minutes)
    error_message = "sweep_silence_minutes: one of 10, 15, 30, 45, 60."
  }
}

variable "expiry_max_delay_seconds" {
  description = "Longest delay of one expiry message (Storage Queues allow 7 days); longer grants hop."
  type        = number
  default     = 604800
  validation {
    condition     = var.expiry_max_delay_seconds >= 60 && var.expiry_max_delay_seconds <= 604800
    error_message = "expiry_max_delay_seconds: 60 to 604800."
  }
}

variable "maximum_instance_count" {
  description = "Flex Consumption scale-out limit."
  type        = number
  default     = 40
}

variable "alert_emails" {
  description = "Who is told when a message is poisoned, functions fail, or the sweep falls silent."
  type        = list(string)
  default     = []
}

variable "log_retention_days" {
  description = "Log Analytics retention."
  type        = number
  default     = 90
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
