output "intake_url" {
  description = "The Function URL the control plane POSTs signed requests to (null when disabled)."
  value       = var.enable_function_url ? aws_lambda_function_url.intake[0].function_url : null
}

output "queue_url" {
  description = "The request queue (FIFO); the control plane may send signed envelopes here directly."
  value       = aws_sqs_queue.requests.url
}

output "queue_arn" {
  description = "ARN of the request queue."
  value       = aws_sqs_queue.requests.arn
}

output "dead_letter_queue_url" {
  description = "Messages that failed every delivery; alarmed."
  value       = aws_sqs_queue.dead_letters.url
}

output "function_arns" {
  description = "ARNs of the intake, worker and sweep functions."
  value       = { for name, fn in aws_lambda_function.this : name => fn.arn }
}

output "role_arns" {
  description = "Execution roles of the functions (e.g. to trust from target accounts)."
  value       = { for name, role in aws_iam_role.function : name => role.arn }
}

output "schedule_group" {
  description = "The EventBridge Scheduler group holding one expiry schedule per live grant."
  value       = aws_scheduler_schedule_group.expiry.name
}

output "kms_key_arn" {
  description = "The key encrypting the queues, logs and function environment."
  value       = aws_kms_key.this.arn
}

output "grant_boundary_arn" {
  description = "The permissions boundary every aws_iam grantee must carry (the catalog's permissions_boundary_arn); null without iam_target."
  value       = var.iam_target == null ? null : aws_iam_policy.grant_boundary[0].arn
}

output "identity_center_ledger_table" {
  description = "The DynamoDB table every aws_identity_center integration names as connection.ledger_table (null without identity_center_target)."
  value       = local.idc == null ? null : aws_dynamodb_table.ledger[0].name
}
