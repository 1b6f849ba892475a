output "intake_url" {
  description = "Where the control plane POSTs signed requests."
  value       = module.jitc.intake_url
}

output "principal_id" {
  description = "The connector's identity."
  value       = module.jitc.principal_id
}
