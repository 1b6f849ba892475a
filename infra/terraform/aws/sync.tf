# -- inventory sync: a scheduled function that sends each target's names to the control plane --
#
# It only reads: the targets' inventories (names and ARNs, never policy documents or data), the
# catalog's secrets, and the versions the control plane acknowledged (a DynamoDB table). It is
# deployed when the catalog names the control plane's webhook (connector.webhook_url and
# connector.signing_key): the inventory has nowhere else to go.

variable "sync_interval_minutes" {
  description = "Minutes between inventory syncs to the control plane; also the period of the sync heartbeat alarm."
  type        = number
  default     = 60

  validation {
    condition     = var.sync_interval_minutes >= 5 && var.sync_interval_minutes <= 1440 && floor(var.sync_interval_minutes) == var.sync_interval_minutes
    error_message = "sync_interval_minutes: a whole number from 5 to 1440."
  }
}

variable "sync_missed_runs" {
  description = "Intervals without a complete inventory sync before the heartbeat alarm fires."
  type        = number
  default     = 3

  validation {
    condition     = var.sync_missed_runs >= 1 && var.sync_missed_runs <= 288 && floor(var.sync_missed_runs) == var.sync_missed_runs
    error_message = "sync_missed_runs: a whole number from 1 to 288."
  }
}

locals {
  sync      = try(local.catalog.connector.webhook_url, null) != null && try(local.catalog.connector.signing_key, null) != null ? 1 : 0
  sync_name = "${var.name}-sync"
  # The log streams of the sync's log group ("" while the sync is not deployed).
  sync_log_arn = join("", [for group in aws_cloudwatch_log_group.sync : "${group.arn}:*"])
  # A CloudWatch alarm evaluates at most one day: a longer interval is watched over one day.
  sync_alarm_period = min(var.sync_interval_minutes, 1440) * 60
  sync_alarm_runs   = max(1, min(var.sync_missed_runs, floor(86400 / local.sync_alarm_period)))
}

# The acknowledged versions: per integration, the hashes of the pages the control plane holds.
# Hashes only (no names): losing the table costs one full sync, nothing else.
resource "aws_dynamodb_table" "sync_state" {
  #checkov:skip=CKV_AWS_119:Items are sha256 hashes of inventory pages, no names or secrets; the AWS managed key (aws/dynamodb) encrypts them without giving the function a KMS grant.
  #checkov:skip=CKV_AWS_28:The table is a cache of acknowledgements: lost, the next sync is simply full.
  count        = local.sync
  name         = "${var.name}-inventory-state"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "integration"

  attribute {
    name = "integration"
    type = "S"
  }

  server_side_encryption {
    enabled = true
  }

  tags = var.tags
}

resource "aws_cloudwatch_log_group" "sync" {
  count             = local.sync
  name              = "/aws/lambda/${local.sync_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = var.tags
}

resource "aws_iam_role" "sync" {
  count              = local.sync
  name               = local.sync_name
  assume_role_policy = data.aws_iam_policy_document.lambda_trust.json
  tags               = var.tags
}

# What the sync calls, and nothing else: it reads targets (list and describe), never changes
# them; it reads the catalog's secrets to connect and to sign; it keeps its state in one table.
data "aws_iam_policy_document" "sync" {
  count = local.sync
  source_policy_documents = concat(
    data.aws_iam_policy_document.vpc_network_interfaces[*].json,
    data.aws_iam_policy_document.catalog_secret_keys[*].json,
  )
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [local.sync_log_arn]
  }
  statement {
    sid       = "AcknowledgedVersions"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem"]
    resources = [aws_dynamodb_table.sync_state[0].arn]
  }
  statement {
    #checkov:skip=CKV_AWS_111:X-Ray trace segments have no resource ARN to scope to.
    #checkov:skip=CKV_AWS_356:X-Ray trace segments have no resource ARN to scope to.
    sid       = "Traces"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }
  dynamic "statement" {
    for_each = length(local.secret_arns) > 0 ? [1] : []
    content {
      sid       = "ReadCatalogSecrets"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = local.secret_arns
    }
  }
  dynamic "statement" {
    for_each = length(var.member_role_arns) > 0 ? [1] : []
    content {
      sid       = "ActInMemberAccounts"
      actions   = ["sts:AssumeRole"]
      resources = var.member_role_arns
    }
  }

  # -- aws_iam targets: names and ARNs of roles, users and the connector's policies --
  dynamic "statement" {
    #checkov:skip=CKV_AWS_111:IAM list actions have no resource to scope to.
    #checkov:skip=CKV_AWS_356:IAM list actions have no resource to scope to.
    for_each = var.iam_target == null ? [] : [1]
    content {
      sid       = "ListPrincipalsAndPolicies"
      actions   = ["iam:ListRoles", "iam:ListUsers", "iam:ListPolicies"]
      resources = ["*"]
    }
  }
  dynamic "statement" {
    for_each = var.iam_target == null ? [] : [1]
    content {
      sid       = "ReadGrantPolicyLabels"
      actions   = ["iam:GetPolicy", "iam:ListEntitiesForPolicy"]
      resources = [local.iam_grant_policy_arn]
    }
  }

  # -- aws_identity_center targets: the catalog's permission sets, their accounts, the store --
  dynamic "statement" {
    for_each = local.idc == null ? [] : [1]
    content {
      sid = "ReadPermissionSets"
      actions = [
        "sso:DescribePermissionSet", "sso:ListAccountsForProvisionedPermissionSet",
        "sso:ListTagsForResource", "sso:ListAccountAssignments",
      ]
      resources = local.idc_resources
    }
  }
  # The connector's own view of its Identity Center grants: the ledger (ledger.tf), read only.
  dynamic "statement" {
    for_each = local.idc == null ? [] : [1]
    content {
      sid       = "ReadIdentityCenterLedger"
      actions   = ["dynamodb:Scan"]
      resources = [local.ledger_arn]
    }
  }
  dynamic "statement" {
    for_each = local.idc == null ? [] : [1]
    content {
      sid       = "ReadIdentityCenterLedgerKey"
      actions   = ["kms:Decrypt", "kms:DescribeKey"]
      resources = [aws_kms_key.this.arn]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["dynamodb.${local.region}.amazonaws.com"]
      }
    }
  }
  dynamic "statement" {
    for_each = local.idc == null ? [] : [1]
    content {
      sid       = "ListUsersAndGroups"
      actions   = ["identitystore:ListUsers", "identitystore:ListGroups"]
      resources = ["arn:${local.partition}:identitystore::${local.account}:identitystore/${local.idc.identity_store_id}"]
    }
  }
}

resource "aws_iam_role_policy" "sync" {
  count  = local.sync
  name   = local.sync_name
  role   = aws_iam_role.sync[0].id
  policy = data.aws_iam_policy_document.sync[0].json
}

resource "aws_lambda_function" "sync" {
  #checkov:skip=CKV_AWS_116:Invoked by a schedule that runs again an interval later; nothing to dead-letter.
  #checkov:skip=CKV_AWS_272:Code signing needs a signing profile the company owns; the zip is built reproducibly by `jitc package aws` and pinned by source_code_hash.
  #checkov:skip=CKV_AWS_50:Tracing is a choice (var.tracing, off by default), as for the other functions.
  #checkov:skip=CKV_AWS_117:A VPC is optional (var.vpc_config), as for the worker and sweep.
  # The reservation is counted in concurrency_budget like the others (reserved_concurrency
  # "sync"; nothing when left out). One run at a time is the run lease in the state table
  # (jitc.aws.sync_state), which holds whether or not anything is reserved.
  count                          = local.sync
  function_name                  = local.sync_name
  role                           = aws_iam_role.sync[0].arn
  runtime                        = "python3.11"
  architectures                  = ["x86_64"]
  handler                        = "jitc.aws.sync.handler"
  filename                       = var.package_path
  source_code_hash               = filebase64sha256(var.package_path)
  memory_size                    = var.memory_size
  timeout                        = 300
  reserved_concurrent_executions = lookup(var.reserved_concurrency, "sync", -1)
  layers                         = [aws_lambda_layer_version.catalog.arn]
  kms_key_arn                    = aws_kms_key.this.arn

  environment {
    variables = {
      JITC_CATALOG_PATH            = "/opt/jitc/catalog.json"
      JITC_CATALOG_SHA256          = local.catalog_sha256
      JITC_SYNC_TABLE              = aws_dynamodb_table.sync_state[0].name
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

  dynamic "vpc_config" {
    for_each = var.vpc_config == null ? [] : [var.vpc_config]
    content {
      subnet_ids         = vpc_config.value.subnet_ids
      security_group_ids = vpc_config.value.security_group_ids
    }
  }

  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.sync[0].name
  }

  depends_on = [aws_iam_role_policy.sync]
  tags       = var.tags
}

resource "aws_iam_role" "sync_schedule" {
  count              = local.sync
  name               = "${local.sync_name}-schedule"
  assume_role_policy = data.aws_iam_policy_document.scheduler_trust.json
  tags               = var.tags
}

# The schedule is encrypted with the module's key: Scheduler decrypts it with this role.
data "aws_iam_policy_document" "sync_schedule" {
  count = local.sync
  statement {
    sid       = "InvokeTheSync"
    actions   = ["lambda:InvokeFunction"]
    resources = [aws_lambda_function.sync[0].arn]
  }
  statement {
    sid       = "DecryptTheSchedule"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
  }
}

resource "aws_iam_role_policy" "sync_schedule" {
  count  = local.sync
  name   = "${local.sync_name}-schedule"
  role   = aws_iam_role.sync_schedule[0].id
  policy = data.aws_iam_policy_document.sync_schedule[0].json
}

resource "aws_scheduler_schedule" "sync" {
  count               = local.sync
  name                = local.sync_name
  schedule_expression = "rate(${var.sync_interval_minutes} minutes)"
  kms_key_arn         = aws_kms_key.this.arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_lambda_function.sync[0].arn
    role_arn = aws_iam_role.sync_schedule[0].arn
    input    = jsonencode({ source = "jit-connector.sync" })

    retry_policy {
      maximum_retry_attempts = 2
    }
  }
}

# Silence is the failure to watch: a sync never invoked, failing, or never complete emits no
# heartbeat, and its absence for sync_missed_runs intervals (within a day) alarms.
resource "aws_cloudwatch_metric_alarm" "sync_heartbeat" {
  count               = local.sync
  alarm_name          = "${local.sync_name}-heartbeat"
  alarm_description   = "No complete inventory sync in ${local.sync_alarm_runs} intervals: the control plane's view of users, roles and resources is going stale."
  namespace           = "JitConnector"
  metric_name         = "InventoryCompleted"
  dimensions          = { service = "jit-connector" }
  statistic           = "Sum"
  period              = local.sync_alarm_period
  evaluation_periods  = local.sync_alarm_runs
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = var.tags
}

resource "aws_cloudwatch_metric_alarm" "sync_errors" {
  count               = local.sync
  alarm_name          = "${local.sync_name}-errors"
  alarm_description   = "The inventory sync function failed (configuration, catalog, or the control plane unreachable)."
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = { FunctionName = aws_lambda_function.sync[0].function_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = var.tags
}

output "sync_function_arn" {
  description = "ARN of the inventory sync function (null when the catalog names no webhook)."
  value       = one(aws_lambda_function.sync[*].arn)
}
