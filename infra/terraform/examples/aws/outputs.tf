output "intake_url" {
  description = "Give this URL to the control plane."
  value       = module.jitc.intake_url
}

output "queue_url" {
  description = "The request queue."
  value       = module.jitc.queue_url
}
