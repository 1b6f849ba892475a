# Alerts: work that keeps failing (a failed revoke is retried without end: access may outlive
# its grant meanwhile), a caller refused (an attack, or tasks whose OIDC audience or account is
# misconfigured and will be retried for ever), and a sweep that has not completed for too long.
# Cloud Run refuses a token of the wrong audience or account itself, before the function runs
# and logs anything: its request log's 4xx/5xx answers of worker, sweep and sync count too. A
# scheduled call that never reaches Cloud Run at all (no token could be made for the invoker
# account, the URL does not answer) is logged only by Cloud Scheduler, as a failed attempt: the
# one failure the heartbeat alert cannot see on a sweep that has never completed since an apply.

resource "google_logging_metric" "failures" {
  project = var.project_id
  name    = "${var.name}-failures"
  filter  = <<-EOT
    resource.type="cloud_run_revision"
    resource.labels.service_name=("${var.name}-worker" OR "${var.name}-sweep" OR "${var.name}-intake" OR "${var.name}-sync")
    severity>=WARNING
    (jsonPayload.message="failed; delivered again" OR jsonPayload.message="worker failed" OR jsonPayload.message="sweep failed" OR jsonPayload.message="sync failed" OR jsonPayload.message="caller refused" OR jsonPayload.message="deployment error" OR jsonPayload.message="unhandled error" OR jsonPayload.complete=false OR (logName="projects/${var.project_id}/logs/run.googleapis.com%2Frequests" AND resource.labels.service_name=("${var.name}-worker" OR "${var.name}-sweep" OR "${var.name}-sync") AND httpRequest.status>=400))
  EOT
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
  }
}

resource "google_logging_metric" "scheduler_failures" {
  project = var.project_id
  name    = "${var.name}-scheduler-failures"
  filter  = <<-EOT
    resource.type="cloud_scheduler_job"
    resource.labels.job_id=("${var.name}-sweep" OR "${var.name}-sync")
    jsonPayload."@type"="type.googleapis.com/google.cloud.scheduler.logging.AttemptFinished"
    severity>=ERROR
  EOT
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
  }
}

# A job paused or deleted by hand is never attempted again: no failure and, when the sweep had
# not completed since the last apply, no absence either (Cloud Monitoring judges an absence
# only after a first point). Its Admin Activity audit log entry, always written, counts instead,
# whichever API version made the call (v1, v1beta1, v1alpha1). A destroy, or a replacement of
# a job by Terraform, counts too.
resource "google_logging_metric" "scheduler_stopped" {
  project = var.project_id
  name    = "${var.name}-scheduler-stopped"
  filter  = <<-EOT
    logName="projects/${var.project_id}/logs/cloudaudit.googleapis.com%2Factivity"
    protoPayload.serviceName="cloudscheduler.googleapis.com"
    protoPayload.methodName=~"^google.cloud.scheduler.v1[a-z0-9]*.CloudScheduler.(PauseJob|DeleteJob)$"
    protoPayload.resourceName=~"/jobs/${var.name}-(sweep|sync)$"
  EOT
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
  }
}

resource "google_logging_metric" "sweep_completed" {
  project = var.project_id
  name    = "${var.name}-sweep-completed"
  filter  = <<-EOT
    resource.type="cloud_run_revision"
    resource.labels.service_name="${var.name}-sweep"
    jsonPayload.message="sweep done"
    jsonPayload.complete=true
  EOT
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
  }
}

# Cloud Monitoring finds a new log-based metric only some minutes after Logging made it: an
# alert policy created at once is refused with 404 "Cannot find metric(s)"
# (hashicorp/terraform-provider-google#11102). Should two minutes not do, a second apply does.
resource "time_sleep" "log_metrics" {
  create_duration = "120s"
  triggers = {
    failures        = google_logging_metric.failures.id
    scheduler       = google_logging_metric.scheduler_failures.id
    stopped         = google_logging_metric.scheduler_stopped.id
    sweep_completed = google_logging_metric.sweep_completed.id
    sync_completed  = google_logging_metric.sync_completed.id
  }
}

resource "google_monitoring_alert_policy" "failures" {
  project               = var.project_id
  display_name          = "${var.name}: connector work failing"
  combiner              = "OR"
  notification_channels = var.notification_channels
  depends_on            = [time_sleep.log_metrics]

  conditions {
    display_name = "failures logged"
    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.failures.name}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_SUM"
      }
    }
  }

  conditions {
    display_name = "scheduled calls failing"
    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.scheduler_failures.name}\" AND resource.type=\"cloud_scheduler_job\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_SUM"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "sweep_silence" {
  project               = var.project_id
  display_name          = "${var.name}: no complete sweep"
  combiner              = "OR"
  notification_channels = var.notification_channels
  depends_on            = [time_sleep.log_metrics]

  conditions {
    display_name = "sweep or sync job paused or deleted"
    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.scheduler_stopped.name}\" AND resource.type=\"cloud_scheduler_job\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_SUM"
      }
    }
  }

  conditions {
    display_name = "sweep heartbeat absent"
    condition_absent {
      filter   = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.sweep_completed.name}\" AND resource.type=\"cloud_run_revision\""
      duration = "${var.sweep_silence_alert}s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_SUM"
      }
    }
  }
}
