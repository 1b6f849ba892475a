# -- inventory sync: a scheduled function that sends each target's names to the control plane --
#
# The `sync` function (Cloud Scheduler, OIDC, like the sweep) reads the targets' inventories
# (names only), the catalog's secrets (to connect and to sign), and the versions the control
# plane acknowledged: one small JSON object (page hashes, no names) in a bucket of its own. Its
# service account holds nothing else: the objects of that bucket, and getIamPolicy (never set)
# on the resources of the catalog's gcp_iam integrations.

variable "sync_schedule" {
  description = "Cron schedule of the inventory sync to the control plane (Cloud Scheduler, UTC)."
  type        = string
  default     = "0 * * * *"
}

variable "sync_silence_alert" {
  description = "Alert when no complete inventory sync was logged for this long (seconds; keep it a few sync intervals). Only with connector.webhook_url in the catalog."
  type        = number
  default     = 10800

  # Cloud Monitoring's limits on a metric-absence duration: the policy is refused otherwise.
  validation {
    condition     = var.sync_silence_alert >= 600 && var.sync_silence_alert <= 84600 && var.sync_silence_alert % 60 == 0
    error_message = "sync_silence_alert: whole minutes from 600 to 84600 seconds (23.5 hours, Cloud Monitoring's longest absence)."
  }
}

locals {
  sync_enabled = try(local.catalog.connector.webhook_url, null) != null && try(local.catalog.connector.signing_key, null) != null
  iam_readers  = toset(["sync"])
}

# Hashes only: losing the bucket costs one full sync, nothing else.
resource "google_storage_bucket" "sync_state" {
  #checkov:skip=CKV_GCP_62:Access logs of a bucket holding page hashes add nothing the audit logs lack.
  #checkov:skip=CKV_GCP_78:Versioning would keep every superseded state; the object is rewritten only under generation preconditions.
  project                     = var.project_id
  name                        = "${var.project_id}-${var.name}-sync"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }
}

# Read the state object and replace it (a replacement needs delete as well as create).
resource "google_project_iam_custom_role" "sync_state" {
  project     = var.project_id
  role_id     = replace("${var.name}_sync_state", "-", "_")
  title       = "jit-connector sync state"
  description = "Read and replace the inventory sync's state object."
  permissions = ["storage.objects.get", "storage.objects.create", "storage.objects.delete"]
}

resource "google_storage_bucket_iam_member" "sync_state" {
  bucket = google_storage_bucket.sync_state.name
  role   = google_project_iam_custom_role.sync_state.id
  member = "serviceAccount:${google_service_account.function["sync"].email}"
}

# The inventory of a gcp_iam integration is its resources' IAM policies: read, never written.
# Buckets and secrets take a custom role of exactly their getIamPolicy; projects and folders
# the predefined read-only IAM role (a project's custom role cannot be bound on another project
# or on a folder).
resource "google_project_iam_custom_role" "iam_reader" {
  count       = length(local.iam_buckets) + length(local.iam_secrets) > 0 ? 1 : 0
  project     = var.project_id
  role_id     = replace("${var.name}_iam_reader", "-", "_")
  title       = "jit-connector IAM reader"
  description = "Read the IAM policy of the buckets and secrets the catalog names."
  permissions = ["storage.buckets.getIamPolicy", "secretmanager.secrets.getIamPolicy"]
}

resource "google_storage_bucket_iam_member" "iam_reader" {
  for_each = { for pair in setproduct(local.iam_readers, local.iam_buckets) : "${pair[0]} ${pair[1]}" => { function = pair[0], bucket = pair[1] } }
  bucket   = each.value.bucket
  role     = google_project_iam_custom_role.iam_reader[0].id
  member   = "serviceAccount:${google_service_account.function[each.value.function].email}"
}

resource "google_secret_manager_secret_iam_member" "iam_reader" {
  for_each  = { for pair in setproduct(local.iam_readers, local.iam_secrets) : "${pair[0]} ${pair[1]}" => { function = pair[0], secret = pair[1] } }
  project   = split("/", each.value.secret)[1]
  secret_id = each.value.secret
  role      = google_project_iam_custom_role.iam_reader[0].id
  member    = "serviceAccount:${google_service_account.function[each.value.function].email}"
}

resource "google_project_iam_custom_role" "bigquery_reader" {
  count       = length(local.iam_datasets) > 0 ? 1 : 0
  project     = var.project_id
  role_id     = replace("${var.name}_bigquery_reader", "-", "_")
  title       = "jit-connector BigQuery dataset reader"
  description = "Read the access entries of the datasets the catalog names."
  permissions = ["bigquery.datasets.get", "bigquery.datasets.getIamPolicy"]
}

resource "google_bigquery_dataset_access" "iam_reader" {
  for_each      = { for pair in setproduct(local.iam_readers, local.iam_datasets) : "${pair[0]} ${pair[1]}" => { function = pair[0], dataset = pair[1] } }
  project       = split("/", each.value.dataset)[1]
  dataset_id    = split("/", each.value.dataset)[3]
  role          = google_project_iam_custom_role.bigquery_reader[0].id
  user_by_email = google_service_account.function[each.value.function].email
}

resource "google_project_iam_member" "iam_reader" {
  for_each = { for pair in setproduct(local.iam_readers, local.iam_projects) : "${pair[0]} ${pair[1]}" => { function = pair[0], project = pair[1] } }
  project  = each.value.project
  role     = "roles/iam.securityReviewer"
  member   = "serviceAccount:${google_service_account.function[each.value.function].email}"
}

resource "google_folder_iam_member" "iam_reader" {
  for_each = { for pair in setproduct(local.iam_readers, local.iam_folders) : "${pair[0]} ${pair[1]}" => { function = pair[0], folder = pair[1] } }
  folder   = each.value.folder
  role     = "roles/iam.securityReviewer"
  member   = "serviceAccount:${google_service_account.function[each.value.function].email}"
}

# The heartbeat: a complete sync (every integration's part complete) logs `sync done` with
# complete=true; its absence for sync_silence_alert seconds alerts.
resource "google_logging_metric" "sync_completed" {
  project = var.project_id
  name    = "${var.name}-sync-completed"
  filter  = <<-EOT
    resource.type="cloud_run_revision"
    resource.labels.service_name="${var.name}-sync"
    jsonPayload.message="sync done"
    jsonPayload.complete=true
  EOT
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
  }
}

resource "google_monitoring_alert_policy" "sync_silence" {
  count                 = local.sync_enabled ? 1 : 0
  project               = var.project_id
  display_name          = "${var.name}: no complete inventory sync"
  combiner              = "OR"
  notification_channels = var.notification_channels
  depends_on            = [time_sleep.log_metrics]

  conditions {
    display_name = "sync heartbeat absent"
    condition_absent {
      filter   = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.sync_completed.name}\" AND resource.type=\"cloud_run_revision\""
      duration = "${var.sync_silence_alert}s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_SUM"
      }
    }
  }
}
