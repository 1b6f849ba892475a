output "intake_url" {
  description = "POST signed requests here (/v1/requests)."
  value       = google_cloudfunctions2_function.function["intake"].service_config[0].uri
}

output "worker_url" {
  description = "The worker's URL, the audience of the tasks' OIDC tokens."
  value       = local.url.worker
}

output "queue" {
  description = "The Cloud Tasks queue (projects/P/locations/L/queues/Q)."
  value       = local.queue_name
}

output "service_accounts" {
  description = "Service account email of each function, and of the invoker."
  value       = merge({ for k, sa in google_service_account.function : k => sa.email }, { invoker = google_service_account.invoker.email })
}

output "catalog_sha256" {
  description = "Digest of the catalog the functions run with."
  value       = sha256(local.catalog_json)
}
