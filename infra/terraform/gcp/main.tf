# The connector on Cloud Run functions (2nd gen): intake (HTTP, signed requests), worker (Cloud
# Tasks pushes one message per task, with an OIDC token of the invoker account) and sweep
# (Cloud Scheduler, OIDC). One service account per function, holding only what its code calls.

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  catalog_json   = jsonencode(yamldecode(file(var.catalog_file)))
  catalog        = jsondecode(local.catalog_json)
  integrations   = try(local.catalog.integrations, {})
  connector_refs = [for key in ["signing_key", "label_key"] : try(local.catalog.connector[key], null)]
  # Every gcp-sm: reference in the catalog, as the secret's resource name (projects/P/secrets/S).
  secret_refs = compact(concat(
    [for i in values(local.integrations) : try(i.credentials, null)],
    local.connector_refs,
  ))
  secrets = toset([
    for ref in local.secret_refs : regex("^gcp-sm:(projects/[^/]+/secrets/[^/#]+)", ref)[0]
    if startswith(ref, "gcp-sm:")
  ])
  # The resources of every gcp_iam integration: the only places the worker may set IAM policy.
  iam_resources = toset(flatten([
    for i in values(local.integrations) : try(i.connection.resources, []) if i.kind == "gcp_iam"
  ]))
  iam_projects = toset([for r in local.iam_resources : trimprefix(r, "projects/") if can(regex("^projects/[^/]+$", r))])
  iam_folders  = toset([for r in local.iam_resources : r if startswith(r, "folders/")])
  iam_buckets  = toset([for r in local.iam_resources : trimprefix(r, "buckets/") if startswith(r, "buckets/")])
  iam_secrets  = toset([for r in local.iam_resources : r if can(regex("^projects/[^/]+/secrets/[^/]+$", r))])
  iam_datasets = toset([for r in local.iam_resources : r if can(regex("^projects/[^/]+/datasets/[^/]+$", r))])

  functions = {
    # Cloud Tasks and Cloud Scheduler count as internal traffic: only the intake, which the
    # control plane calls from outside, takes requests from the internet.
    intake = { entry_point = "intake", timeout = 30, memory = "256Mi", ingress = "ALLOW_ALL" }
    worker = { entry_point = "worker", timeout = 540, memory = "256Mi", ingress = "ALLOW_INTERNAL_ONLY" }
    sweep  = { entry_point = "sweep", timeout = 540, memory = "256Mi", ingress = "ALLOW_INTERNAL_ONLY" }
    sync   = { entry_point = "sync", timeout = 540, memory = "512Mi", ingress = "ALLOW_INTERNAL_ONLY" }
  }
  # Cloud Run functions (2nd gen) answer at this URL too; the tasks and jobs use it because it
  # is known before the function exists (the functions' environment needs it).
  url = { for k, _ in local.functions : k => "https://${var.region}-${var.project_id}.cloudfunctions.net/${var.name}-${k}" }
  # Scheduled jobs: name -> schedule and the function it calls (a second job is one line here
  # and one entry point in main.py).
  scheduled_jobs = {
    sweep = { schedule = var.sweep_schedule, function = "sweep" }
    sync  = { schedule = var.sync_schedule, function = "sync" }
  }
  queue_name = "projects/${var.project_id}/locations/${var.region}/queues/${google_cloud_tasks_queue.requests.name}"
  environment = {
    JITC_PROJECT              = var.project_id
    JITC_QUEUE                = local.queue_name
    JITC_WORKER_URL           = local.url.worker
    JITC_SWEEP_URL            = local.url.sweep
    JITC_SYNC_URL             = local.url.sync
    JITC_SYNC_BUCKET          = google_storage_bucket.sync_state.name
    JITC_GCP_TOMBSTONE_BUCKET = google_storage_bucket.tombstones.name
    JITC_INVOKER_EMAIL        = google_service_account.invoker.email
    JITC_CATALOG              = local.catalog_json
    JITC_CATALOG_SHA256       = sha256(local.catalog_json)
    JITC_LOG_LEVEL            = var.log_level
    JITC_EVENT_TOPIC          = var.publish_events ? google_pubsub_topic.events[0].id : ""
    # Worker and sweep are never public (run.invoker: the invoker account only), so Cloud Run
    # checks each token and removes its signature before the function sees it.
    JITC_BEHIND_CLOUD_RUN_IAM = "1"
    # The connector uses no pydantic plugin: skip their discovery (an entry-point scan of
    # every installed distribution at the first model: 10-25 ms with 150 of them installed).
    PYDANTIC_DISABLE_PLUGINS = "__all__"
  }
  function_environment = {
    for k, f in local.functions : k => merge(local.environment, { JITC_TIMEOUT_SECONDS = tostring(f.timeout) })
  }
  # Cloud Functions take at most 32 KiB of environment (names and values) per function, and the
  # catalog travels there. Bytes, not characters: base64 gives the UTF-8 length (within 2).
  environment_bytes = {
    for k, environment in local.function_environment : k => sum([
      for key, value in environment : length(key) + length(base64encode(value)) / 4 * 3
    ])
  }
}

# -- Source -----------------------------------------------------------------------------------

resource "google_storage_bucket" "source" {
  #checkov:skip=CKV_GCP_62:Access logs of a bucket holding only the connector's public code add nothing the audit logs lack.
  project                     = var.project_id
  name                        = "${var.name}-source-${data.google_project.this.number}"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = true
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }
}

resource "google_storage_bucket_object" "package" {
  name   = "jit-connector-gcp-${filesha256(var.package_path)}.zip"
  bucket = google_storage_bucket.source.name
  source = var.package_path
}

# With a customer-managed key, Cloud Functions need a build image repository encrypted with the
# same key (their service agents need roles/cloudkms.cryptoKeyEncrypterDecrypter on it: see
# docs/gcp.md).
resource "google_artifact_registry_repository" "images" {
  count         = var.kms_key_name == null ? 0 : 1
  project       = var.project_id
  location      = var.region
  repository_id = "${var.name}-functions"
  format        = "DOCKER"
  kms_key_name  = var.kms_key_name
}

# -- Service accounts: one per function, and the one whose OIDC tokens tasks and jobs carry --

resource "google_service_account" "function" {
  for_each     = local.functions
  project      = var.project_id
  account_id   = "${var.name}-${each.key}"
  display_name = "jit-connector ${each.key}"
}

resource "google_service_account" "invoker" {
  project      = var.project_id
  account_id   = "${var.name}-invoker"
  display_name = "jit-connector task and job invoker (OIDC)"
}

# -- Queue: requests, expiries and hops, one HTTP task each ------------------------------------

resource "google_cloud_tasks_queue" "requests" {
  project  = var.project_id
  name     = "${var.name}-requests"
  location = var.region

  # A revoke is never dropped: unlimited attempts, backing off to ten minutes; the failure
  # alert below fires meanwhile.
  retry_config {
    max_attempts       = -1
    max_retry_duration = "0s"
    min_backoff        = "5s"
    max_backoff        = "600s"
    max_doublings      = 7
  }

  rate_limits {
    max_dispatches_per_second = 50
    max_concurrent_dispatches = 20
  }

  stackdriver_logging_config {
    sampling_ratio = 1.0
  }
}

# -- Events (optional) ------------------------------------------------------------------------

resource "google_pubsub_topic" "events" {
  count        = var.publish_events ? 1 : 0
  project      = var.project_id
  name         = "${var.name}-events"
  kms_key_name = var.kms_key_name

  message_retention_duration = "604800s"
}

# -- Functions --------------------------------------------------------------------------------

resource "google_cloudfunctions2_function" "function" {
  #checkov:skip=CKV_GCP_124:Only the intake allows all ingress (the control plane calls it from outside; IAM invocation and the Ed25519 signature guard it); worker and sweep are internal only.
  for_each     = local.functions
  project      = var.project_id
  name         = "${var.name}-${each.key}"
  location     = var.region
  kms_key_name = var.kms_key_name

  build_config {
    runtime           = var.runtime
    entry_point       = each.value.entry_point
    service_account   = var.build_service_account
    docker_repository = var.kms_key_name == null ? null : google_artifact_registry_repository.images[0].id
    # The buildpack installs requirements.txt from the zip's wheels/ (pip --no-index
    # --find-links wheels): the pinned versions, no fetch from PyPI at build time. It also
    # compiles the source again (compileall -f): with SOURCE_DATE_EPOCH set, into bytecode
    # checked against the source's hash, not its time, which the image's export resets to
    # 1980-01-01 00:00:01 and which would make every module recompile at every cold start.
    environment_variables = {
      GOOGLE_VENDOR_PIP_DEPENDENCIES = "wheels"
      SOURCE_DATE_EPOCH              = "315532800"
    }
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.package.name
      }
    }
  }

  service_config {
    service_account_email = google_service_account.function[each.key].email
    available_memory      = each.value.memory
    timeout_seconds       = each.value.timeout
    # One request per instance: a message's events are buffered until its answer.
    max_instance_request_concurrency = 1
    max_instance_count               = 20
    ingress_settings                 = each.value.ingress
    all_traffic_on_latest_revision   = true
    vpc_connector                    = var.vpc_connector
    vpc_connector_egress_settings    = var.vpc_connector == null ? null : "PRIVATE_RANGES_ONLY"
    environment_variables            = local.function_environment[each.key]
  }

  lifecycle {
    # Room kept for what Cloud Functions adds itself (LOG_EXECUTION_ID).
    precondition {
      condition     = local.environment_bytes[each.key] <= 32768 - 512
      error_message = "The catalog is too large for a function's environment (32 KiB with the other settings): shorten it or split the deployment."
    }
  }
}

# -- Who may invoke what ----------------------------------------------------------------------

resource "google_cloud_run_service_iam_member" "intake" {
  for_each = toset(var.public_intake ? ["allUsers"] : var.intake_invokers)
  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.function["intake"].service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value
}

resource "google_cloud_run_service_iam_member" "invoker" {
  for_each = toset(["worker", "sweep", "sync"])
  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.function[each.key].service_config[0].service
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.invoker.email}"
}

# -- Scheduled jobs ---------------------------------------------------------------------------

resource "google_cloud_scheduler_job" "job" {
  for_each         = local.scheduled_jobs
  project          = var.project_id
  region           = var.region
  name             = "${var.name}-${each.key}"
  schedule         = each.value.schedule
  time_zone        = "Etc/UTC"
  attempt_deadline = "600s"

  retry_config {
    retry_count          = 1
    min_backoff_duration = "30s"
  }

  http_target {
    uri         = local.url[each.value.function]
    http_method = "POST"
    oidc_token {
      service_account_email = google_service_account.invoker.email
      audience              = local.url[each.value.function]
    }
  }
}
