# Least privilege, resource by resource: each binding names one function's service account and
# one resource. tests/gcp/test_gcp_least_privilege.py renders these bindings and runs the flow
# under them, comparing every API call's permission and resource with what is bound here.

locals {
  # Functions that resolve the catalog's secrets: the worker, the sweep and the sync run
  # templates and sign webhook events; the intake only checks signatures against public keys.
  secret_readers = toset(["worker", "sweep", "sync"])
  secret_access = {
    for pair in setproduct(local.secret_readers, local.secrets) : "${pair[0]} ${pair[1]}" => {
      function = pair[0]
      secret   = pair[1]
    }
  }
  iam_editors = toset(["worker", "sweep"])
  # Per managed project or folder: the roles the catalog's gcp_iam permissions bind there. The
  # IAM-admin binding may change grants of these only (tombstones are objects, tombstones.tf).
  iam_roles = {
    for r in local.iam_resources : r => sort(distinct(flatten([
      for i in values(local.integrations) : [
        for p in values(try(i.permissions, {})) : p.role if contains(try(p.resources, []), r)
      ] if i.kind == "gcp_iam"
    ])))
  }
}

# Secret Manager: accessor on each named secret only, never on the project.
resource "google_secret_manager_secret_iam_member" "access" {
  for_each  = local.secret_access
  secret_id = each.value.secret
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.function[each.value.function].email}"
}

# The worker creates expiry tasks, reads one back when its name is still reserved, and deletes
# one at an early revoke: no predefined role holds exactly these three.
resource "google_project_iam_custom_role" "task_scheduler" {
  project     = var.project_id
  role_id     = replace("${var.name}_task_scheduler", "-", "_")
  title       = "jit-connector task scheduler"
  description = "Create, read and delete the connector's expiry tasks."
  permissions = ["cloudtasks.tasks.create", "cloudtasks.tasks.get", "cloudtasks.tasks.delete"]
}

resource "google_cloud_tasks_queue_iam_member" "intake" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_tasks_queue.requests.name
  role     = "roles/cloudtasks.enqueuer"
  member   = "serviceAccount:${google_service_account.function["intake"].email}"
}

resource "google_cloud_tasks_queue_iam_member" "worker" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_tasks_queue.requests.name
  role     = google_project_iam_custom_role.task_scheduler.id
  member   = "serviceAccount:${google_service_account.function["worker"].email}"
}

# The sweep's revokes cancel expiry tasks; it creates none.
resource "google_cloud_tasks_queue_iam_member" "sweep" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_tasks_queue.requests.name
  role     = "roles/cloudtasks.taskDeleter"
  member   = "serviceAccount:${google_service_account.function["sweep"].email}"
}

# A task carrying an OIDC token of the invoker needs actAs on it, from whoever creates the task.
resource "google_service_account_iam_member" "act_as_invoker" {
  for_each           = toset(["intake", "worker"])
  service_account_id = google_service_account.invoker.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.function[each.key].email}"
}

# The IAM target: get and set IAM policy on exactly the resources the catalog's gcp_iam
# integrations name. Projects and folders take the predefined IAM-admin role of their kind
# (exactly get, getIamPolicy and setIamPolicy, and bindable in any project or folder); buckets
# and secrets a custom role, which a project role allows only inside this project.
resource "google_project_iam_custom_role" "iam_target" {
  count       = length(local.iam_buckets) + length(local.iam_secrets) > 0 ? 1 : 0
  project     = var.project_id
  role_id     = replace("${var.name}_iam_target", "-", "_")
  title       = "jit-connector IAM target"
  description = "Read and write the IAM policy of the buckets and secrets the catalog names."
  permissions = [
    "storage.buckets.getIamPolicy",
    "storage.buckets.setIamPolicy",
    "secretmanager.secrets.getIamPolicy",
    "secretmanager.secrets.setIamPolicy",
  ]

  lifecycle {
    precondition {
      condition     = alltrue([for s in local.iam_secrets : split("/", s)[1] == var.project_id])
      error_message = "gcp_iam secrets must be in project_id: the custom role that may set their IAM policy is this project's."
    }
  }
}

# projectIamAdmin and folderIamAdmin could set any role, roles/owner for the connector itself
# included: the condition lets them add or remove grants of the catalog's roles only
# (https://cloud.google.com/iam/docs/setting-limits-on-granting-roles). A role dropped from the
# catalog can then no longer be revoked early; its grants still end by their own condition.
resource "google_project_iam_member" "iam_target" {
  for_each = { for pair in setproduct(local.iam_editors, local.iam_projects) : "${pair[0]} ${pair[1]}" => { function = pair[0], project = pair[1] } }
  project  = each.value.project
  role     = "roles/resourcemanager.projectIamAdmin"
  member   = "serviceAccount:${google_service_account.function[each.value.function].email}"

  condition {
    title       = "jit-connector catalog roles only"
    description = "Grants of the roles the connector's catalog offers."
    expression  = "api.getAttribute('iam.googleapis.com/modifiedGrantsByRole', []).hasOnly(${jsonencode(local.iam_roles["projects/${each.value.project}"])})"
  }
}

resource "google_storage_bucket_iam_member" "iam_target" {
  for_each = { for pair in setproduct(local.iam_editors, local.iam_buckets) : "${pair[0]} ${pair[1]}" => { function = pair[0], bucket = pair[1] } }
  bucket   = each.value.bucket
  role     = google_project_iam_custom_role.iam_target[0].id
  member   = "serviceAccount:${google_service_account.function[each.value.function].email}"
}

resource "google_secret_manager_secret_iam_member" "iam_target" {
  for_each  = { for pair in setproduct(local.iam_editors, local.iam_secrets) : "${pair[0]} ${pair[1]}" => { function = pair[0], secret = pair[1] } }
  project   = split("/", each.value.secret)[1]
  secret_id = each.value.secret
  role      = google_project_iam_custom_role.iam_target[0].id
  member    = "serviceAccount:${google_service_account.function[each.value.function].email}"
}

# BigQuery datasets: their access is the Dataset resource's access[] entries, changed with
# datasets.patch, and reading or changing those entries needs getIamPolicy / setIamPolicy on
# top of get / update (https://cloud.google.com/bigquery/docs/dataset-access-control). Bound as
# one access entry per dataset, not as a dataset IAM member: setting a dataset's IAM policy
# drops its authorized views, a patch of one entry keeps them.
resource "google_project_iam_custom_role" "bigquery_target" {
  count       = length(local.iam_datasets) > 0 ? 1 : 0
  project     = var.project_id
  role_id     = replace("${var.name}_bigquery_target", "-", "_")
  title       = "jit-connector BigQuery dataset target"
  description = "Read and change the access entries of the datasets the catalog names."
  permissions = [
    "bigquery.datasets.get",
    "bigquery.datasets.getIamPolicy",
    "bigquery.datasets.update",
    "bigquery.datasets.setIamPolicy",
  ]

  lifecycle {
    precondition {
      condition     = alltrue([for d in local.iam_datasets : split("/", d)[1] == var.project_id])
      error_message = "gcp_iam datasets must be in project_id: the custom role that may change their access is this project's."
    }
  }
}

resource "google_bigquery_dataset_access" "iam_target" {
  for_each      = { for pair in setproduct(local.iam_editors, local.iam_datasets) : "${pair[0]} ${pair[1]}" => { function = pair[0], dataset = pair[1] } }
  project       = split("/", each.value.dataset)[1]
  dataset_id    = split("/", each.value.dataset)[3]
  role          = google_project_iam_custom_role.bigquery_target[0].id
  user_by_email = google_service_account.function[each.value.function].email
}

resource "google_folder_iam_member" "iam_target" {
  for_each = { for pair in setproduct(local.iam_editors, local.iam_folders) : "${pair[0]} ${pair[1]}" => { function = pair[0], folder = pair[1] } }
  folder   = each.value.folder
  role     = "roles/resourcemanager.folderIamAdmin"
  member   = "serviceAccount:${google_service_account.function[each.value.function].email}"

  condition {
    title       = "jit-connector catalog roles only"
    description = "Grants of the roles the connector's catalog offers."
    expression  = "api.getAttribute('iam.googleapis.com/modifiedGrantsByRole', []).hasOnly(${jsonencode(local.iam_roles[each.value.folder])})"
  }
}

# The optional event topic: the functions that run the engine publish its events there.
resource "google_pubsub_topic_iam_member" "events" {
  for_each = toset(var.publish_events ? ["worker", "sweep"] : [])
  project  = var.project_id
  topic    = google_pubsub_topic.events[0].name
  role     = "roles/pubsub.publisher"
  member   = "serviceAccount:${google_service_account.function[each.key].email}"
}

# No inbound HTTP (optional): the control plane creates the worker's tasks itself, each a
# signed envelope the worker verifies like any other; an unsigned message can only revoke.
resource "google_cloud_tasks_queue_iam_member" "writers" {
  for_each = toset(var.queue_writers)
  project  = var.project_id
  location = var.region
  name     = google_cloud_tasks_queue.requests.name
  role     = "roles/cloudtasks.enqueuer"
  member   = each.value
}

resource "google_service_account_iam_member" "writers_act_as_invoker" {
  for_each           = toset(var.queue_writers)
  service_account_id = google_service_account.invoker.name
  role               = "roles/iam.serviceAccountUser"
  member             = each.value
}
