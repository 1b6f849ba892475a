variable "project_id" {
  description = "The project the connector runs in (functions, queue, service accounts)."
  type        = string
}

variable "region" {
  description = "Region of the functions, the queue and the scheduler jobs."
  type        = string
}

variable "name" {
  description = "Prefix of every resource name."
  type        = string
  default     = "jitc"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,14}$", var.name))
    error_message = "name: 2-15 lowercase letters, digits or dashes, starting with a letter (service account ids are at most 30 characters)."
  }
}

variable "package_path" {
  description = "The GCP zip built by `jitc package gcp` (main.py, jitc/, pinned requirements)."
  type        = string
}

variable "catalog_file" {
  description = "The company's catalog (YAML). Shipped to the functions as JSON in JITC_CATALOG, with its digest: every change shows in the plan. Its gcp_iam resources (projects, folders, buckets, secrets, BigQuery datasets) are where the worker may change access."
  type        = string
}

variable "intake_invokers" {
  description = "Members allowed to call the intake (roles/run.invoker), e.g. the control plane's service account. Ignored when public_intake is true."
  type        = list(string)
  default     = []
}

variable "public_intake" {
  description = "Let anyone reach the intake (allUsers); only the Ed25519 signature then protects it. Off by default: IAM-authenticated invocation."
  type        = bool
  default     = false
}

variable "kms_key_name" {
  description = "Customer-managed KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K) for the source bucket and the functions. Null: Google-managed keys."
  type        = string
  default     = null
}

variable "sweep_schedule" {
  description = "Cron schedule of the sweep (Cloud Scheduler, UTC)."
  type        = string
  default     = "*/10 * * * *"
}

variable "sweep_silence_alert" {
  description = "Alert when no complete sweep was logged for this long (seconds): a sweep that stops running or always fails."
  type        = number
  default     = 3600

  # Cloud Monitoring's limits on a metric-absence duration: the policy is refused otherwise.
  validation {
    condition     = var.sweep_silence_alert >= 120 && var.sweep_silence_alert <= 84600 && var.sweep_silence_alert % 60 == 0
    error_message = "sweep_silence_alert: whole minutes from 120 to 84600 seconds (23.5 hours, Cloud Monitoring's longest absence)."
  }
}

variable "notification_channels" {
  description = "Monitoring notification channels (ids) of the alerts."
  type        = list(string)
  default     = []
}

variable "runtime" {
  description = "Python runtime of the functions: the one `jitc package gcp` built the zip's wheels for (CPython 3.11 by default)."
  type        = string
  default     = "python311"

  validation {
    condition     = var.runtime == "python311"
    error_message = "runtime: python311, the only runtime the zip's wheels (cp311) install on."
  }
}

variable "log_level" {
  description = "Log level of the functions."
  type        = string
  default     = "INFO"
}

variable "vpc_connector" {
  description = "Serverless VPC Access connector (projects/P/locations/L/connectors/C) for targets in a VPC; null for none."
  type        = string
  default     = null
}

variable "publish_events" {
  description = "Also publish audit events and outcomes to a Pub/Sub topic the module creates (`<name>-events`), for the company's own consumers."
  type        = bool
  default     = false
}

variable "queue_writers" {
  description = "Members (e.g. the control plane's service account) that may create tasks on the queue directly, carrying the same signed envelope, for a company that wants no inbound HTTP. They get cloudtasks.enqueuer on the queue and serviceAccountUser on the invoker account (a task's OIDC token needs it)."
  type        = list(string)
  default     = []
}

variable "build_service_account" {
  description = "Service account Cloud Build builds the functions as (projects/P/serviceAccounts/EMAIL), holding roles/cloudbuild.builds.builder or the rights it needs: read the source bucket, write the image repository and logs. Null: the project's default build account, which projects whose policies strip its roles (new organizations by default) cannot build with."
  type        = string
  default     = null

  validation {
    condition     = var.build_service_account == null || can(regex("^projects/[^/]+/serviceAccounts/[^/]+@[^/]+$", var.build_service_account))
    error_message = "build_service_account: projects/P/serviceAccounts/EMAIL, or null."
  }
}
