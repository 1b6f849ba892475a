# Rotation of the connector's own admin credentials (docs/aws.md, "Rotating the admin
# credentials"): a Secrets Manager rotation function for every aws-sm: credential of a
# PostgreSQL or MySQL/MariaDB integration in the catalog, single-user (the admin account keeps
# its name, its password changes), on a schedule.

variable "rotation" {
  description = "Rotate the admin credentials of the catalog's postgresql, mysql, redis and rabbitmq integrations held in Secrets Manager (null: no rotation). schedule_expression: rate(N days) or cron(...) as Secrets Manager takes it; window: how long each rotation may take, whole hours from 1h to 24h (e.g. 3h) and no longer than a rate in hours; rotate_immediately: also rotate once when this is applied. Its concurrency is reserved_concurrency[\"rotation\"], within concurrency_budget."
  type = object({
    schedule_expression = optional(string, "rate(30 days)")
    window              = optional(string, "3h")
    rotate_immediately  = optional(bool, false)
  })
  default = null
  validation {
    # Secrets Manager takes rate(N days|hours) down to 4 hours; more than 90 days between
    # rotations is refused here, as security baselines (CIS, checkov CKV_AWS_304) require.
    condition     = can(regex("^(cron[(].+[)]|rate[(](([1-9]|[1-8][0-9]|90) days?|([4-9]|1[0-9]|2[0-3]) hours)[)])$", try(var.rotation.schedule_expression, "rate(30 days)")))
    error_message = "rotation.schedule_expression: rate(1 day) to rate(90 days), or rate(4 hours) to rate(23 hours), or a cron(...) expression."
  }
  validation {
    # Secrets Manager's Duration: whole hours ("3h"), and the window may extend neither into
    # the next UTC day nor, for a rate in hours, into the next rotation's window.
    condition = can(regex("^([1-9]|1[0-9]|2[0-4])h$", try(var.rotation.window, "3h"))) && try(
      tonumber(trimsuffix(var.rotation.window, "h")) <= tonumber(regex("^rate[(]([0-9]+) hours[)]$", var.rotation.schedule_expression)[0]),
      true
    )
    error_message = "rotation.window: whole hours from 1h to 24h, and no longer than the interval of a rate in hours."
  }
}

locals {
  # The same catalog data the functions get: which integrations hold an admin password that the
  # function can rotate (jitc.rotation.ROTATORS), and the secret each one names.
  rotated_secret_ids = var.rotation == null ? [] : distinct([
    for integration in values(try(local.catalog.integrations, {})) :
    split("#", trimprefix(integration.credentials, "aws-sm:"))[0]
    if contains(["postgresql", "mysql", "redis", "rabbitmq"], try(integration.kind, ""))
    && startswith(try(integration.credentials, ""), "aws-sm:")
  ])
  rotated_secrets = {
    for id in local.rotated_secret_ids : id => (
      startswith(id, "arn:") ? id : "arn:${local.partition}:secretsmanager:${local.region}:${local.account}:secret:${id}-??????"
    )
  }
  rotation_secret_arns  = values(local.rotated_secrets)
  rotation_enabled      = length(local.rotated_secrets) > 0
  rotation_log_arn      = local.rotation_enabled ? "${aws_cloudwatch_log_group.rotation[0].arn}:*" : ""
  rotation_function     = "${var.name}-rotation"
  rotation_function_arn = "arn:${local.partition}:lambda:${local.region}:${local.account}:function:${local.rotation_function}"
}

resource "aws_cloudwatch_log_group" "rotation" {
  count             = local.rotation_enabled ? 1 : 0
  name              = "/aws/lambda/${local.rotation_function}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = var.tags
}

resource "aws_iam_role" "rotation" {
  count              = local.rotation_enabled ? 1 : 0
  name               = local.rotation_function
  assume_role_policy = data.aws_iam_policy_document.lambda_trust.json
  tags               = var.tags
}

# Only the calls jitc.aws.rotation makes, on only the secrets it rotates, and only while this
# function is the secret's rotation function (Secrets Manager's AllowRotationLambdaArn key).
data "aws_iam_policy_document" "rotation" {
  count = local.rotation_enabled ? 1 : 0
  # In the targets' VPC, as the worker.
  source_policy_documents = data.aws_iam_policy_document.vpc_network_interfaces[*].json
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [local.rotation_log_arn]
  }
  statement {
    sid = "RotateTheAdminSecrets"
    actions = [
      "secretsmanager:DescribeSecret",
      "secretsmanager:GetSecretValue",
      "secretsmanager:PutSecretValue",
      "secretsmanager:UpdateSecretVersionStage",
      "secretsmanager:ListSecretVersionIds",
    ]
    resources = local.rotation_secret_arns
    condition {
      test     = "StringEquals"
      variable = "secretsmanager:resource/AllowRotationLambdaArn"
      values   = [local.rotation_function_arn]
    }
  }
  statement {
    #checkov:skip=CKV_AWS_111:X-Ray trace segments have no resource ARN to scope to.
    #checkov:skip=CKV_AWS_356:X-Ray trace segments have no resource ARN to scope to.
    sid       = "Traces"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }
  # A secret under a customer managed key: reading a version decrypts, putting one encrypts.
  dynamic "statement" {
    for_each = length(var.secret_kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "SecretKeys"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = var.secret_kms_key_arns
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${local.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "rotation" {
  count  = local.rotation_enabled ? 1 : 0
  name   = local.rotation_function
  role   = aws_iam_role.rotation[0].id
  policy = data.aws_iam_policy_document.rotation[0].json
}

resource "aws_lambda_function" "rotation" {
  #checkov:skip=CKV_AWS_116:Secrets Manager invokes it synchronously, step by step, and retries a failed rotation itself.
  #checkov:skip=CKV_AWS_272:Code signing needs a signing profile the company owns; the zip is built reproducibly by `jitc package aws` and pinned by source_code_hash.
  #checkov:skip=CKV_AWS_50:Tracing is a choice (var.tracing, off by default), as for the other functions.
  #checkov:skip=CKV_AWS_117:A VPC is optional (var.vpc_config): the function joins the targets' VPC when the worker does.
  count                          = local.rotation_enabled ? 1 : 0
  function_name                  = local.rotation_function
  role                           = aws_iam_role.rotation[0].arn
  runtime                        = "python3.11"
  architectures                  = ["x86_64"]
  handler                        = "jitc.aws.rotation.handler"
  filename                       = var.package_path
  source_code_hash               = filebase64sha256(var.package_path)
  memory_size                    = var.memory_size
  timeout                        = 60
  reserved_concurrent_executions = lookup(var.reserved_concurrency, "rotation", -1)
  layers                         = [aws_lambda_layer_version.catalog.arn]
  kms_key_arn                    = aws_kms_key.this.arn

  environment {
    variables = {
      JITC_CATALOG_PATH            = "/opt/jitc/catalog.json"
      JITC_CATALOG_SHA256          = local.catalog_sha256
      POWERTOOLS_SERVICE_NAME      = "jit-connector"
      POWERTOOLS_METRICS_NAMESPACE = "JitConnector"
      POWERTOOLS_LOG_LEVEL         = "INFO"
      POWERTOOLS_TRACE_DISABLED    = var.tracing ? "false" : "true"
      PYDANTIC_DISABLE_PLUGINS     = "__all__" # see main.tf
    }
  }

  tracing_config {
    mode = var.tracing ? "Active" : "PassThrough"
  }

  # It logs in to the targets as the worker does: the same subnets and security groups, and
  # Secrets Manager through the same endpoint (main.tf) or NAT.
  dynamic "vpc_config" {
    for_each = var.vpc_config == null ? [] : [var.vpc_config]
    content {
      subnet_ids         = vpc_config.value.subnet_ids
      security_group_ids = vpc_config.value.security_group_ids
    }
  }

  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.rotation[0].name
  }

  depends_on = [aws_iam_role_policy.rotation]
  tags       = var.tags
}

# Secrets Manager may invoke it for these secrets of this account only (confused deputy).
resource "aws_lambda_permission" "rotation" {
  for_each       = local.rotated_secrets
  statement_id   = "SecretsManager-${substr(sha256(each.key), 0, 16)}"
  action         = "lambda:InvokeFunction"
  function_name  = aws_lambda_function.rotation[0].function_name
  principal      = "secretsmanager.amazonaws.com"
  source_account = local.account
  source_arn     = each.value
}

resource "aws_secretsmanager_secret_rotation" "this" {
  #checkov:skip=CKV_AWS_304:The schedule is var.rotation.schedule_expression, rate(30 days) by default; the variable's validation refuses a rate over 90 days.
  for_each            = local.rotated_secrets
  secret_id           = each.key
  rotation_lambda_arn = aws_lambda_function.rotation[0].arn
  rotate_immediately  = var.rotation.rotate_immediately

  rotation_rules {
    schedule_expression = var.rotation.schedule_expression
    duration            = var.rotation.window
  }

  depends_on = [aws_lambda_permission.rotation]
}

output "rotation_function_arn" {
  description = "The admin credentials' rotation function (null without var.rotation)."
  value       = local.rotation_enabled ? aws_lambda_function.rotation[0].arn : null
}
