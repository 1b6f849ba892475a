variable "region" {
  description = "Region to deploy into."
  type        = string
  default     = "eu-west-1"
}

variable "package_path" {
  description = "The zip built by `jitc package aws`."
  type        = string
  default     = "../../../../dist/jit-connector-aws.zip"
}

variable "pg_admin_password" {
  description = "Password of the catalog's PostgreSQL admin (stored in Secrets Manager, and in the state)."
  type        = string
  sensitive   = true
}

variable "control_plane_invoker_arns" {
  description = "The control plane's AWS principals that call the intake URL (SigV4)."
  type        = list(string)
}

variable "secrets_kms_key_arn" {
  description = "Customer managed key for the example's secret (null: the AWS managed key)."
  type        = string
  default     = null
}

variable "alarm_actions" {
  description = "Where alarms go (e.g. an SNS topic ARN)."
  type        = list(string)
  default     = []
}

variable "vpc_config" {
  description = "The VPC of the orders database: its id, private subnets and a security group the database admits."
  type = object({
    vpc_id             = string
    subnet_ids         = list(string)
    security_group_ids = list(string)
    create_endpoints   = optional(bool, true)
  })
}

variable "grantee_standing_actions" {
  description = "Actions the grantee roles keep outside any grant (their standing access): the permissions boundary they must carry allows these besides the catalog's. Empty: the grantees can do only what a live grant gives them."
  type        = list(string)
  default     = []
}
