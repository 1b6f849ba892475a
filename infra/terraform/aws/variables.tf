variable "name" {
  description = "Prefix of every resource name."
  type        = string
  default     = "jitc"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name))
    error_message = "name: 2-21 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "package_path" {
  description = "The AWS zip built by `jitc package aws` (core + aws + pinned requirements)."
  type        = string
}

variable "catalog_file" {
  description = "The company's catalog (YAML). Shipped as a layer at /opt/jitc/catalog.yaml; every change shows in the plan."
  type        = string
}

variable "secret_arns" {
  description = "Secrets the functions may read beyond those the catalog references (every aws-sm: reference in the catalog is derived from it already); normally empty."
  type        = list(string)
  default     = []
}

variable "secret_kms_key_arns" {
  description = "Customer managed KMS keys that encrypt those secrets (empty when they use the AWS managed key)."
  type        = list(string)
  default     = []
}

variable "event_bus_name" {
  description = "EventBridge bus that receives audit events and outcomes (null: the function logs only)."
  type        = string
  default     = null
}

variable "control_plane_principal_arns" {
  description = "AWS principals of the control plane allowed to put signed envelopes on the queue directly (for companies that want no inbound HTTP)."
  type        = list(string)
  default     = []
}

variable "enable_function_url" {
  description = "Expose the intake as a Lambda Function URL (see function_url_auth_type). Requests must carry the control plane's Ed25519 signature."
  type        = bool
  default     = true
}

variable "function_url_auth_type" {
  description = "AWS_IAM: each request to the intake URL must be SigV4-signed by one of intake_invoker_arns, and Ed25519-signed by a catalog key. NONE: anyone reaches the function; only the Ed25519 signature protects it."
  type        = string
  default     = "AWS_IAM"

  validation {
    condition     = contains(["AWS_IAM", "NONE"], var.function_url_auth_type)
    error_message = "function_url_auth_type: AWS_IAM or NONE."
  }
}

variable "intake_invoker_arns" {
  description = "The control plane's AWS principals allowed to call the intake URL when function_url_auth_type is AWS_IAM."
  type        = list(string)
  default     = []
}

variable "tracing" {
  description = "X-Ray tracing of the functions (Powertools Tracer, botocore patched). Off by default: importing the X-Ray SDK costs a third of every cold start."
  type        = bool
  default     = false
}

variable "memory_size" {
  description = "Memory of each function, in MB."
  type        = number
  default     = 128

  validation {
    # Lambda's range (its API takes 128 MB at least; 10,240 MB is the documented maximum).
    condition     = var.memory_size >= 128 && var.memory_size <= 10240 && floor(var.memory_size) == var.memory_size
    error_message = "memory_size: a whole number of MB from 128 to 10240."
  }
}

variable "worker_timeout" {
  description = "Worker timeout in seconds; the queue's visibility timeout is six times this. At least 60: the worker starts no message with less than 30 s left, and an Identity Center grant may wait 20 s."
  type        = number
  default     = 60

  validation {
    condition     = var.worker_timeout >= 60 && var.worker_timeout <= 900 && floor(var.worker_timeout) == var.worker_timeout
    error_message = "worker_timeout: whole seconds from 60 (below that no message would start) to 900 (Lambda's maximum)."
  }
}

variable "worker_batch_size" {
  description = "Messages per worker invocation (a FIFO event source takes at most 10)."
  type        = number
  default     = 10

  validation {
    condition     = var.worker_batch_size >= 1 && var.worker_batch_size <= 10
    error_message = "worker_batch_size: 1 to 10 (an SQS FIFO event source's limit)."
  }
}

variable "max_receive_count" {
  description = "Deliveries of one message before it moves to the dead-letter queue (alarmed). Expired grants are still revoked by the sweep."
  type        = number
  default     = 10

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000 && floor(var.max_receive_count) == var.max_receive_count
    error_message = "max_receive_count: a whole number from 1 to 1000 (SQS's redrive policy range)."
  }
}

variable "request_retention_seconds" {
  description = "How long a request may wait in the queue; the dead-letter queue keeps messages 14 days, which must be longer."
  type        = number
  default     = 345600

  validation {
    condition     = var.request_retention_seconds >= 60 && var.request_retention_seconds <= 604800
    error_message = "request_retention_seconds: 60 to 604800 (7 days), leaving the dead-letter queue's 14 days longer."
  }
}

variable "concurrency_budget" {
  description = "The most concurrent executions this module may reserve in the account and region, all its functions together. An account's default quota is 1,000 and Lambda keeps 100 unreserved, so no module may take more than 900, and other reservations in the account share those 900."
  type        = number
  default     = 16

  validation {
    condition     = var.concurrency_budget >= 0 && var.concurrency_budget <= 900 && floor(var.concurrency_budget) == var.concurrency_budget
    error_message = "concurrency_budget: a whole number from 0 to 900 (the default account quota of 1,000 less the 100 Lambda keeps unreserved)."
  }
}

variable "reserved_concurrency" {
  description = "Reserved concurrent executions per function of the module (intake, worker, sweep, and any function a later file adds), within concurrency_budget. A function left out draws on the account's unreserved pool. An empty map reserves nothing (accounts whose quota is below 1,000 cannot reserve). The inventory sync (deployed when the catalog names a webhook) is \"sync\": left out, as by default, it reserves nothing, and a run lease in its state table keeps a second run from starting while one is going, reserved or not; give it 1 (counted in the budget) to also keep it from waiting on the unreserved pool."
  type        = map(number)
  default     = { intake = 10, worker = 5, sweep = 1 }

  validation {
    # 0 would stop the function altogether (every invocation throttled).
    condition     = alltrue([for n in values(var.reserved_concurrency) : n >= 1 && floor(n) == n])
    error_message = "reserved_concurrency: whole numbers of 1 or more; leave a function out to reserve nothing for it."
  }
  validation {
    condition     = sum(concat([0], values(var.reserved_concurrency))) <= var.concurrency_budget
    error_message = "reserved_concurrency: the reservations add up to more than concurrency_budget."
  }
  validation {
    # The queue's pollers are capped at the worker's reservation (maximum_concurrency, at least
    # 2): with fewer, Lambda throttles messages back to the queue and they reach the DLQ.
    condition     = lookup(var.reserved_concurrency, "worker", 2) >= 2
    error_message = "reserved_concurrency.worker: at least 2 (the smallest maximum concurrency of an SQS event source)."
  }
}

variable "sweep_interval_minutes" {
  description = "Minutes between sweeps, which revoke grants past their expiry; also the period of the sweep heartbeat alarm."
  type        = number
  default     = 5

  validation {
    condition     = var.sweep_interval_minutes >= 1 && var.sweep_interval_minutes <= 60 && floor(var.sweep_interval_minutes) == var.sweep_interval_minutes
    error_message = "sweep_interval_minutes: a whole number from 1 to 60."
  }
}

variable "sweep_missed_runs" {
  description = "Intervals without a complete sweep before the heartbeat alarm fires."
  type        = number
  default     = 3

  validation {
    # At most a day of the longest interval: CloudWatch caps evaluation periods times the
    # period at one day (the heartbeat alarm checks it against the actual interval).
    condition     = var.sweep_missed_runs >= 1 && var.sweep_missed_runs <= 1440 && floor(var.sweep_missed_runs) == var.sweep_missed_runs
    error_message = "sweep_missed_runs: a whole number from 1 to 1440."
  }
}

variable "log_retention_days" {
  description = "Retention of the functions' logs (the audit trail)."
  type        = number
  default     = 365

  validation {
    # The values CloudWatch Logs accepts (PutRetentionPolicy); 0 keeps the logs forever.
    condition     = contains([0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days: one of CloudWatch Logs' retention periods (0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)."
  }
}

variable "alarm_actions" {
  description = "ARNs notified by the alarms (e.g. an SNS topic)."
  type        = list(string)
  default     = []
}

variable "vpc_config" {
  description = "The VPC, subnets and security groups of the worker and sweep, when targets (e.g. PostgreSQL) are only reachable inside a VPC. create_endpoints adds interface endpoints for the AWS APIs they call (sqs, secretsmanager, scheduler, events, sts, xray); set it false when the subnets already reach them (NAT or existing endpoints)."
  type = object({
    vpc_id             = string
    subnet_ids         = list(string)
    security_group_ids = list(string)
    create_endpoints   = optional(bool, true)
  })
  default = null
}

variable "iam_target" {
  description = "For `aws_iam` integrations: the roles/users (ARNs, wildcards allowed) grants may go to, the policy path of the catalog, the managed policies the catalog copies, and actions the grantees' permissions boundary allows beyond the catalog's own (their standing access; the copied managed policies' actions). Every grantee must carry the boundary (output `grant_boundary_arn`)."
  type = object({
    principal_arns         = list(string)
    policy_path            = optional(string, "/jitc/")
    managed_policy_arns    = optional(list(string), [])
    boundary_extra_actions = optional(list(string), [])
  })
  default = null
}

variable "member_role_arns" {
  description = "Roles made by the member-account module in other accounts (output role_arn there): the worker and sweep may assume these, and only these, for catalog integrations with a role_arn."
  type        = list(string)
  default     = []
}

variable "identity_center_target" {
  description = "For `aws_identity_center` integrations: the instance, identity store, permission sets and accounts of the catalog."
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
