output "function_app_name" {
  description = "The Function App."
  value       = azurerm_function_app_flex_consumption.app.name
}

output "intake_url" {
  description = "Where the control plane POSTs signed requests (with the function key in x-functions-key)."
  value       = "https://${azurerm_function_app_flex_consumption.app.default_hostname}/api/v1/requests"
}

output "principal_id" {
  description = "Object id of the app's identity (grant it nothing by hand: the module holds every right it needs)."
  value       = azurerm_user_assigned_identity.app.principal_id
}

output "queue_url" {
  description = "The request queue (for a control plane that sends without HTTP)."
  value       = "${azurerm_storage_account.app.primary_queue_endpoint}${azurerm_storage_queue.requests.name}"
}

output "poison_queue_name" {
  description = "Where messages go after every retry failed (alerted)."
  value       = azurerm_storage_queue.poison.name
}

output "application_insights_id" {
  description = "Logs and traces."
  value       = azurerm_application_insights.app.id
}
