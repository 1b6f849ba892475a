output "intake_url" {
  description = "Give this to the control plane."
  value       = module.jitc.intake_url
}

output "service_accounts" {
  description = "The connector's service accounts."
  value       = module.jitc.service_accounts
}
