variable "project_id" {
  description = "The project the connector runs in."
  type        = string
  default     = "acme-jit"
}

variable "region" {
  description = "Region of the connector."
  type        = string
  default     = "europe-west1"
}

variable "control_plane_invoker" {
  description = "The control plane's service account, allowed to call the intake."
  type        = string
}

variable "kms_key_name" {
  description = "Customer-managed key for the source bucket and functions (null: Google-managed)."
  type        = string
  default     = null
}

variable "vpc_connector" {
  description = "Serverless VPC Access connector that reaches the database."
  type        = string
  default     = null
}
