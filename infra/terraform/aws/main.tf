data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account   = data.aws_caller_identity.current.account_id
  partition = data.aws_partition.current.partition
  region    = data.aws_region.current.region # provider 6: `name` is deprecated
  functions = {
    intake = { handler = "jitc.aws.intake.handler", timeout = 10 }
    worker = { handler = "jitc.aws.worker.handler", timeout = var.worker_timeout }
    sweep  = { handler = "jitc.aws.sweep.handler", timeout = 300 }
  }
  schedule_group = "${var.name}-expiry"
  catalog        = yamldecode(file(var.catalog_file))
  # The functions get the reviewed YAML as JSON: the same data, without a YAML parser in
  # every cold start.
  catalog_json   = jsonencode(local.catalog)
  catalog_sha256 = sha256(local.catalog_json)
}

# -- encryption -----------------------------------------------------------------------------

resource "aws_kms_key" "this" {
  description             = "${var.name}: queues, logs and function environment"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
  tags                    = var.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_109:A key policy's "*" resource is the key itself; administration stays with the account's IAM.
  #checkov:skip=CKV_AWS_111:A key policy's "*" resource is the key itself.
  #checkov:skip=CKV_AWS_356:A key policy's "*" resource is the key itself.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account}:root"]
    }
  }

  statement {
    sid       = "LogsEncrypt"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account}:log-group:/aws/lambda/${var.name}-*"]
    }
  }

  dynamic "statement" {
    for_each = length(var.control_plane_principal_arns) > 0 ? [1] : []
    content {
      sid       = "ControlPlaneSendsToQueue"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = ["*"]
      principals {
        type        = "AWS"
        identifiers = var.control_plane_principal_arns
      }
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["sqs.${local.region}.amazonaws.com"]
      }
    }
  }
}

# -- queues ---------------------------------------------------------------------------------

resource "aws_sqs_queue" "dead_letters" {
  name                      = "${var.name}-dead-letters.fifo"
  fifo_queue                = true
  message_retention_seconds = 1209600
  kms_master_key_id         = aws_kms_key.this.arn
  tags                      = var.tags
}

# FIFO with the grant id as message group: each grant's messages arrive in order (docs/aws.md).
resource "aws_sqs_queue" "requests" {
  name                        = "${var.name}-requests.fifo"
  fifo_queue                  = true
  content_based_deduplication = true
  deduplication_scope         = "messageGroup"
  fifo_throughput_limit       = "perMessageGroupId"
  visibility_timeout_seconds  = 6 * var.worker_timeout
  # Shorter than the dead-letter queue's 14 days: a moved message keeps its first enqueue
  # time, so with equal retention it could expire from the DLQ the moment it arrives.
  message_retention_seconds = var.request_retention_seconds
  kms_master_key_id         = aws_kms_key.this.arn
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letters.arn
    maxReceiveCount     = var.max_receive_count
  })
  tags = var.tags
}

# EventBridge Scheduler dead-letters only to a standard queue (a FIFO ARN is refused by
# CreateSchedule), so the expiries it cannot deliver get a queue of their own, alarmed like the other.
resource "aws_sqs_queue" "schedule_dead_letters" {
  name                      = "${var.name}-schedule-dead-letters"
  message_retention_seconds = 1209600
  kms_master_key_id         = aws_kms_key.this.arn
  tags                      = var.tags
}

resource "aws_sqs_queue_redrive_allow_policy" "dead_letters" {
  queue_url = aws_sqs_queue.dead_letters.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.requests.arn]
  })
}

data "aws_iam_policy_document" "queue" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["sqs:*"]
    resources = [aws_sqs_queue.requests.arn]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  dynamic "statement" {
    for_each = length(var.control_plane_principal_arns) > 0 ? [1] : []
    content {
      sid       = "ControlPlaneSends"
      actions   = ["sqs:SendMessage"]
      resources = [aws_sqs_queue.requests.arn]
      principals {
        type        = "AWS"
        identifiers = var.control_plane_principal_arns
      }
    }
  }
}

resource "aws_sqs_queue_policy" "requests" {
  queue_url = aws_sqs_queue.requests.id
  policy    = data.aws_iam_policy_document.queue.json
}

# -- the catalog, as a layer: /opt/jitc/catalog.json ----------------------------------------

data "archive_file" "catalog" {
  type        = "zip"
  output_path = "${path.root}/.terraform/${var.name}-catalog.zip"

  source {
    content  = local.catalog_json
    filename = "jitc/catalog.json"
  }
}

resource "aws_lambda_layer_version" "catalog" {
  layer_name          = "${var.name}-catalog"
  description         = "jit-connector catalog sha256:${local.catalog_sha256}"
  filename            = data.archive_file.catalog.output_path
  source_code_hash    = data.archive_file.catalog.output_base64sha256
  compatible_runtimes = ["python3.11"]
}

# -- functions ------------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "function" {
  for_each          = local.functions
  name              = "/aws/lambda/${var.name}-${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = var.tags
}

resource "aws_iam_role" "function" {
  for_each           = local.functions
  name               = "${var.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.lambda_trust.json
  tags               = var.tags
}

data "aws_iam_policy_document" "lambda_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

resource "aws_iam_role_policy" "function" {
  for_each = local.functions
  name     = "${var.name}-${each.key}"
  role     = aws_iam_role.function[each.key].id
  policy = {
    intake = data.aws_iam_policy_document.intake.json
    worker = data.aws_iam_policy_document.worker.json
    sweep  = data.aws_iam_policy_document.sweep.json
  }[each.key]
}

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_116:No asynchronous invocations to dead-letter: the intake is called synchronously, the worker by SQS (whose queue has its own dead-letter queue), the sweep by a schedule that runs again minutes later.
  #checkov:skip=CKV_AWS_272:Code signing needs a signing profile the company owns; the zip is built reproducibly by `jitc package aws` and pinned by source_code_hash.
  #checkov:skip=CKV_AWS_50:Tracing is a choice (var.tracing, off by default): the X-Ray SDK costs a third of every cold start; logs and metrics carry request and grant ids.
  #checkov:skip=CKV_AWS_117:A VPC is optional (var.vpc_config), for the worker and sweep only: the intake talks to SQS alone.
  for_each                       = local.functions
  function_name                  = "${var.name}-${each.key}"
  role                           = aws_iam_role.function[each.key].arn
  runtime                        = "python3.11"
  architectures                  = ["x86_64"]
  handler                        = each.value.handler
  filename                       = var.package_path
  source_code_hash               = filebase64sha256(var.package_path)
  memory_size                    = var.memory_size
  timeout                        = each.value.timeout
  reserved_concurrent_executions = lookup(var.reserved_concurrency, each.key, -1)
  layers                         = [aws_lambda_layer_version.catalog.arn]
  kms_key_arn                    = aws_kms_key.this.arn

  environment {
    variables = merge(
      {
        JITC_CATALOG_PATH            = "/opt/jitc/catalog.json"
        JITC_CATALOG_SHA256          = local.catalog_sha256
        JITC_QUEUE_URL               = aws_sqs_queue.requests.url
        JITC_QUEUE_ARN               = aws_sqs_queue.requests.arn
        JITC_SCHEDULE_GROUP          = local.schedule_group
        JITC_SCHEDULER_ROLE_ARN      = aws_iam_role.scheduler.arn
        JITC_SCHEDULE_DLQ_ARN        = aws_sqs_queue.schedule_dead_letters.arn
        POWERTOOLS_SERVICE_NAME      = "jit-connector"
        POWERTOOLS_METRICS_NAMESPACE = "JitConnector"
        POWERTOOLS_LOG_LEVEL         = "INFO"
        # Off by default: the X-Ray SDK is then never imported (a third of a cold start).
        POWERTOOLS_TRACE_DISABLED = var.tracing ? "false" : "true"
        # The connector uses no pydantic plugin: skip their discovery (an entry-point scan of
        # every installed distribution at the first model: 10-25 ms with 150 of them installed).
        PYDANTIC_DISABLE_PLUGINS = "__all__"
      },
      var.event_bus_name == null ? {} : { JITC_EVENT_BUS = var.event_bus_name },
    )
  }

  tracing_config {
    mode = var.tracing ? "Active" : "PassThrough"
  }

  # The worker and the sweep reach the targets; the intake only SQS, so it stays outside.
  dynamic "vpc_config" {
    for_each = var.vpc_config == null || each.key == "intake" ? [] : [var.vpc_config]
    content {
      subnet_ids         = vpc_config.value.subnet_ids
      security_group_ids = vpc_config.value.security_group_ids
    }
  }

  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.function[each.key].name
  }

  depends_on = [aws_iam_role_policy.function]
  tags       = var.tags

  lifecycle {
    precondition {
      condition     = length(try(local.catalog.control_plane.keys, {})) > 0
      error_message = "The catalog's control_plane.keys is empty: every request would be refused (401). Add the control plane's Ed25519 public key (jitc keygen --signing)."
    }
    precondition {
      condition = alltrue([
        for integration in values(try(local.catalog.integrations, {})) :
        tostring(integration.connection.account_id) == local.account
        if try(integration.kind, "") == "aws_iam" && try(integration.connection.role_arn, null) == null
      ])
      error_message = "An aws_iam integration of the catalog names another account_id than the one deployed into: give it a role_arn (the member-account module) or correct the id."
    }
    # What the module repeats from the catalog must agree with it: a policy scoped to other
    # ARNs than the template uses fails every call, or (worse) lets it reach what it should not.
    precondition {
      condition = alltrue([
        for integration in values(try(local.catalog.integrations, {})) :
        try(integration.connection.path, "/jitc/") == local.iam_path
        && integration.connection.permissions_boundary_arn == local.iam_boundary_arn
        if try(integration.kind, "") == "aws_iam" && try(integration.connection.role_arn, null) == null
      ])
      error_message = "An aws_iam integration of the catalog disagrees with the module: its connection.path must equal iam_target.policy_path and its permissions_boundary_arn the grant_boundary_arn output."
    }
    precondition {
      condition = alltrue([
        for integration in values(try(local.catalog.integrations, {})) :
        local.idc != null
        && integration.connection.instance_arn == try(local.idc.instance_arn, "")
        && integration.connection.identity_store_id == try(local.idc.identity_store_id, "")
        && length(setsubtract([for p in values(integration.permissions) : p.permission_set_arn], try(local.idc.permission_set_arns, []))) == 0
        && length(setsubtract(flatten([for p in values(integration.permissions) : [for a in p.resources : tostring(a)]]), try(local.idc.account_ids, []))) == 0
        if try(integration.kind, "") == "aws_identity_center"
      ])
      error_message = "An aws_identity_center integration of the catalog names an instance, identity store, permission set or account that identity_center_target does not: the policy would not cover it."
    }
  }
}

resource "aws_lambda_event_source_mapping" "worker" {
  event_source_arn        = aws_sqs_queue.requests.arn
  function_name           = aws_lambda_function.this["worker"].arn
  batch_size              = var.worker_batch_size
  function_response_types = ["ReportBatchItemFailures"]

  # No more pollers than the worker's reservation: a throttled message goes back to the queue
  # and counts toward max_receive_count, so excess pollers would push requests into the DLQ.
  dynamic "scaling_config" {
    for_each = contains(keys(var.reserved_concurrency), "worker") ? [var.reserved_concurrency["worker"]] : []
    content {
      maximum_concurrency = scaling_config.value
    }
  }
}

resource "aws_lambda_function_url" "intake" {
  #checkov:skip=CKV_AWS_258:NONE is the company's explicit choice (function_url_auth_type); every request must still carry the control plane's Ed25519 signature over a fresh timestamp, checked against keys in the catalog, and replays are refused.
  count              = var.enable_function_url ? 1 : 0
  function_name      = aws_lambda_function.this["intake"].function_name
  authorization_type = var.function_url_auth_type
}

# A Function URL answers 403 unless the function's resource policy lets the caller both reach
# the URL (lambda:InvokeFunctionUrl, bound to the URL's auth type) and, since October 2025,
# invoke the function through it (lambda:InvokeFunction, only when InvokedViaFunctionUrl).
locals {
  url_principals = var.function_url_auth_type == "NONE" ? ["*"] : var.intake_invoker_arns
  url_invokers = var.enable_function_url ? {
    for index, principal in local.url_principals : tostring(index) => principal
  } : {}
}

resource "aws_lambda_permission" "intake_url" {
  #checkov:skip=CKV_AWS_364:The principal is the control plane (AWS_IAM) or anyone (NONE, signed requests only), not an AWS service with a source ARN.
  for_each               = local.url_invokers
  statement_id           = "JitcIntakeUrl${each.key}"
  action                 = "lambda:InvokeFunctionUrl"
  function_name          = aws_lambda_function.this["intake"].function_name
  principal              = each.value
  function_url_auth_type = var.function_url_auth_type
}

resource "aws_lambda_permission" "intake_url_invoke" {
  #checkov:skip=CKV_AWS_364:The principal is the control plane (AWS_IAM) or anyone (NONE, signed requests only), not an AWS service with a source ARN.
  for_each                 = local.url_invokers
  statement_id             = "JitcIntakeUrlInvoke${each.key}"
  action                   = "lambda:InvokeFunction"
  function_name            = aws_lambda_function.this["intake"].function_name
  principal                = each.value
  invoked_via_function_url = true
}

# -- expiry: EventBridge Scheduler ----------------------------------------------------------

resource "aws_scheduler_schedule_group" "expiry" {
  name = local.schedule_group
  tags = var.tags
}

resource "aws_iam_role" "scheduler" {
  name               = "${var.name}-scheduler"
  assume_role_policy = data.aws_iam_policy_document.scheduler_trust.json
  tags               = var.tags
}

data "aws_iam_policy_document" "scheduler_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

# The expiry schedules deliver a revoke to the queue, and dead-letter what they cannot deliver.
data "aws_iam_policy_document" "scheduler" {
  statement {
    sid       = "DeliverExpiries"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.requests.arn, aws_sqs_queue.schedule_dead_letters.arn]
  }
  statement {
    sid       = "EncryptForTheQueue"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
  }
}

resource "aws_iam_role_policy" "scheduler" {
  name   = "${var.name}-scheduler"
  role   = aws_iam_role.scheduler.id
  policy = data.aws_iam_policy_document.scheduler.json
}

resource "aws_iam_role" "sweep_schedule" {
  name               = "${var.name}-sweep-schedule"
  assume_role_policy = data.aws_iam_policy_document.scheduler_trust.json
  tags               = var.tags
}

# The schedule is encrypted with the module's key: Scheduler decrypts it with this role before
# every run, so without kms:Decrypt the sweep would never be invoked.
data "aws_iam_policy_document" "sweep_schedule" {
  statement {
    sid       = "InvokeTheSweep"
    actions   = ["lambda:InvokeFunction"]
    resources = [aws_lambda_function.this["sweep"].arn]
  }
  statement {
    sid       = "DecryptTheSchedule"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
  }
}

resource "aws_iam_role_policy" "sweep_schedule" {
  name   = "${var.name}-sweep-schedule"
  role   = aws_iam_role.sweep_schedule.id
  policy = data.aws_iam_policy_document.sweep_schedule.json
}

resource "aws_scheduler_schedule" "sweep" {
  name                = "${var.name}-sweep"
  schedule_expression = var.sweep_interval_minutes == 1 ? "rate(1 minute)" : "rate(${var.sweep_interval_minutes} minutes)"
  kms_key_arn         = aws_kms_key.this.arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_lambda_function.this["sweep"].arn
    role_arn = aws_iam_role.sweep_schedule.arn
    input    = jsonencode({ source = "jit-connector.sweep" })

    retry_policy {
      maximum_retry_attempts = 2
    }
  }
}

# -- alarms ---------------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "dead_letters" {
  alarm_name          = "${var.name}-dead-letters"
  alarm_description   = "A request or expiry could not be processed: inspect and redrive ${aws_sqs_queue.dead_letters.name}."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dead_letters.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = var.tags
}

resource "aws_cloudwatch_metric_alarm" "schedule_dead_letters" {
  alarm_name          = "${var.name}-schedule-dead-letters"
  alarm_description   = "An expiry could not be delivered to the queue: its grant is revoked by the sweep; inspect ${aws_sqs_queue.schedule_dead_letters.name}."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.schedule_dead_letters.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = var.tags
}

# A sweep that is never invoked (or fails every time) raises nothing else: the heartbeat is a
# metric each complete sweep emits, and its absence for sweep_missed_runs intervals alarms.
resource "aws_cloudwatch_metric_alarm" "sweep_heartbeat" {
  alarm_name          = "${var.name}-sweep-heartbeat"
  alarm_description   = "No complete sweep in ${var.sweep_missed_runs} intervals: grants whose scheduled revoke was lost are not being revoked."
  namespace           = "JitConnector"
  metric_name         = "SweepCompleted"
  dimensions          = { service = "jit-connector" }
  statistic           = "Sum"
  period              = 60 * var.sweep_interval_minutes
  evaluation_periods  = var.sweep_missed_runs
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = var.tags

  lifecycle {
    precondition {
      condition     = var.sweep_missed_runs * var.sweep_interval_minutes <= 1440
      error_message = "sweep_missed_runs times sweep_interval_minutes exceeds one day, the longest a CloudWatch alarm evaluates."
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "revoke_failures" {
  alarm_name          = "${var.name}-revoke-failures"
  alarm_description   = "A revoke failed and is being retried: access may outlive its grant until it succeeds."
  namespace           = "JitConnector"
  metric_name         = "RevokeFailures"
  dimensions          = { service = "jit-connector" }
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

resource "aws_cloudwatch_metric_alarm" "function_errors" {
  for_each            = local.functions
  alarm_name          = "${var.name}-${each.key}-errors"
  alarm_description   = "The ${each.key} function failed (configuration, catalog or an unexpected error)."
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = { FunctionName = aws_lambda_function.this[each.key].function_name }
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

# -- a VPC: endpoints for what the worker and sweep call -------------------------------------

# A function in a private subnet reaches no AWS API without a NAT or these endpoints. IAM and
# Identity Center targets, and a control plane webhook, still need a NAT (docs/aws.md).
locals {
  vpc_endpoint_services = var.vpc_config == null || !try(var.vpc_config.create_endpoints, true) ? [] : [
    "sqs", "secretsmanager", "scheduler", "events", "sts", "xray",
  ]
}

resource "aws_security_group" "endpoints" {
  count       = length(local.vpc_endpoint_services) > 0 ? 1 : 0
  name        = "${var.name}-endpoints"
  description = "HTTPS from the jit-connector functions to the interface endpoints"
  vpc_id      = var.vpc_config.vpc_id
  tags        = var.tags

  ingress {
    description     = "HTTPS from the functions"
    from_port       = 443
    to_port         = 443
    protocol        = "tcp"
    security_groups = var.vpc_config.security_group_ids
  }
}

resource "aws_vpc_endpoint" "this" {
  for_each            = toset(local.vpc_endpoint_services)
  vpc_id              = var.vpc_config.vpc_id
  service_name        = "com.amazonaws.${local.region}.${each.key}"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = var.vpc_config.subnet_ids
  security_group_ids  = [aws_security_group.endpoints[0].id]
  private_dns_enabled = true
  tags                = var.tags
}
