variable "name" {
  description = "Prefix of every resource name (the connector module's name)."
  type        = string
  default     = "jitc"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name))
    error_message = "name: 2-21 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "connector_role_arns" {
  description = "The connector's worker and sweep roles (the connector module's output role_arns): the only principals this account's role trusts."
  type        = list(string)
}

variable "external_id" {
  description = "The external id the connector presents (the catalog integration's external_id); without it the role cannot be assumed."
  type        = string

  validation {
    condition     = can(regex("^[\\w+=,.@:/-]{2,1224}$", var.external_id))
    error_message = "external_id: 2-1224 characters of letters, digits and +=,.@:/-_."
  }
}

variable "iam_target" {
  description = "For an `aws_iam` integration in this account: the roles/users grants may go to, the catalog's policy path, the managed policies it copies, and the actions the grantees' permissions boundary allows (the catalog's actions and their standing access)."
  type = object({
    principal_arns      = list(string)
    policy_path         = optional(string, "/jitc/")
    managed_policy_arns = optional(list(string), [])
    boundary_actions    = list(string)
  })
  default = null
}

variable "identity_center_target" {
  description = "When Identity Center is administered from this account: its instance, identity store, and the catalog's permission sets and accounts."
  type = object({
    instance_arn        = string
    identity_store_id   = string
    permission_set_arns = list(string)
    account_ids         = list(string)
  })
  default = null
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
