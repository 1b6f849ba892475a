output "role_arn" {
  description = "The role the connector assumes here: the catalog integration's role_arn, and one of the connector module's member_role_arns."
  value       = aws_iam_role.connector.arn
}

output "grant_boundary_arn" {
  description = "The permissions boundary every grantee here must carry (the catalog's permissions_boundary_arn); null without iam_target."
  value       = var.iam_target == null ? null : aws_iam_policy.grant_boundary[0].arn
}
