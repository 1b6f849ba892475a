output "intake_url" {
  description = "Give this URL to the control plane."
  value       = module.jitc.intake_url
}

output "queue_url" {
  description = "The request queue."
  value       = module.jitc.queue_url
}

output "grant_boundary_arn" {
  description = "The catalog's permissions_boundary_arn: attach it to every dev-* role."
  value       = module.jitc.grant_boundary_arn
}
