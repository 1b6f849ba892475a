variable "region" {
  description = "Region to deploy into."
  type        = string
  default     = "eu-west-1"
}

variable "account_id" {
  description = "This account's id (the catalog's aws_iam integration targets it)."
  type        = string
}

variable "package_path" {
  description = "The zip built by `jitc package aws`."
  type        = string
  default     = "../../../../dist/jit-connector-aws.zip"
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
  description = "Subnets and security groups that reach the database."
  type = object({
    subnet_ids         = list(string)
    security_group_ids = list(string)
  })
  default = null
}
