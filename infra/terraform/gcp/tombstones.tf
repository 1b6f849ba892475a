# -- gcp_iam tombstones: one small object per revoked grant ------------------------------------
#
# A revoke of a gcp_iam grant first writes a MACed object here, create-if-absent
# (ifGenerationMatch=0), named by a keyed hash of the grant; a grant looks for it before and
# after it writes its binding, so a late or concurrent delivery of a revoked grant is refused.
# Tombstones live here rather than in the IAM policies, where each one took one of Google's 100
# conditional bindings per policy and 20 per role and member. Worker and sweep may create and
# read these objects, never replace or delete them; the retention policy keeps anyone else from
# deleting one early, and the lifecycle rule deletes it once no delivery of its grant can succeed.

locals {
  # How long a tombstone must last: the control plane's max_skew plus the longest gcp_iam
  # max_duration plus the engine's 10-minute margin (TOMBSTONE_MARGIN), as the engine computes it.
  # Catalog durations are `1d2h30m15s` or ISO 8601 `P1DT2H`: the ISO form lower-cased without its
  # P and T is the short form.
  tombstone_texts = concat(
    [try(local.catalog.control_plane.max_skew, "5m")],
    [for i in values(local.integrations) : try(i.max_duration, "8h") if i.kind == "gcp_iam"],
  )
  tombstone_seconds = [
    for text in local.tombstone_texts : sum([
      for unit, size in { d = 86400, h = 3600, m = 60, s = 1 } : size * tonumber(coalesce(
        regex("^(?:(?P<d>[0-9]+)d)?(?:(?P<h>[0-9]+)h)?(?:(?P<m>[0-9]+)m)?(?:(?P<s>[0-9]+)s)?$",
        lower(replace(replace(text, "P", ""), "T", "")))[unit], "0"
      ))
    ])
  ]
  tombstone_retention = local.tombstone_seconds[0] + max(concat([0], slice(local.tombstone_seconds, 1, length(local.tombstone_seconds)))...) + 600
}

resource "google_storage_bucket" "tombstones" {
  #checkov:skip=CKV_GCP_62:Access logs of a bucket of tombstones add nothing the audit logs lack.
  #checkov:skip=CKV_GCP_78:Objects are only ever created, never replaced; a retention policy (which excludes versioning) keeps them from early deletion instead.
  project                     = var.project_id
  name                        = "${var.project_id}-${var.name}-tombstones"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  retention_policy {
    retention_period = local.tombstone_retention
  }

  # Lifecycle ages count whole days: one more than the retention, rounded up.
  lifecycle_rule {
    condition {
      age = ceil(local.tombstone_retention / 86400) + 1
    }
    action {
      type = "Delete"
    }
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }
}

# Create and read, nothing else: no predefined role holds exactly these two (objectCreator
# cannot read, objectUser can delete).
resource "google_project_iam_custom_role" "tombstones" {
  project     = var.project_id
  role_id     = replace("${var.name}_tombstones", "-", "_")
  title       = "jit-connector tombstones"
  description = "Create and read the gcp_iam target's tombstone objects."
  permissions = ["storage.objects.create", "storage.objects.get"]
}

resource "google_storage_bucket_iam_member" "tombstones" {
  for_each = toset(["worker", "sweep"])
  bucket   = google_storage_bucket.tombstones.name
  role     = google_project_iam_custom_role.tombstones.id
  member   = "serviceAccount:${google_service_account.function[each.key].email}"
}
