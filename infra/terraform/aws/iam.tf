# Each function's role allows only the AWS calls its code makes (tests/aws/test_aws_least_privilege.py
# compares these documents with the calls recorded while the AWS test suite runs), on only the
# secrets, queues, schedules and targets named in the variables.

locals {
  # Every aws-sm: reference anywhere in the catalog's data (not in its comments) is a secret the
  # worker and sweep may read, and nothing else is: a new kind of reference in the catalog is
  # covered without a change here. A name becomes the ARN pattern of that name (Secrets Manager
  # appends six random characters); an ARN is kept as written.
  catalog_secret_refs = distinct([
    for match in regexall("\"aws-sm:([^\"#]+)", jsonencode(local.catalog)) : match[0]
  ])
  secret_arns = distinct(concat(var.secret_arns, [
    for ref in local.catalog_secret_refs :
    startswith(ref, "arn:") ? ref : "arn:${local.partition}:secretsmanager:${local.region}:${local.account}:secret:${ref}-??????"
  ]))

  log_arns = {
    for name, _ in local.functions :
    name => "${aws_cloudwatch_log_group.function[name].arn}:*"
  }
  schedule_arn = "arn:${local.partition}:scheduler:${local.region}:${local.account}:schedule/${local.schedule_group}/*"
  bus_arn      = var.event_bus_name == null ? null : "arn:${local.partition}:events:${local.region}:${local.account}:event-bus/${var.event_bus_name}"

  iam_path             = var.iam_target == null ? "/jitc/" : var.iam_target.policy_path
  iam_grant_policy_arn = "arn:${local.partition}:iam::${local.account}:policy${local.iam_path}jitc-*"
  # The policies that end a role's older sessions (`jitc-s-<role>-<cutoff>`), a subset of the above.
  iam_sessions_policy_arn = "arn:${local.partition}:iam::${local.account}:policy${local.iam_path}jitc-s-*"
  # Outside the grant path, so no right over grant policies reaches the boundary itself.
  iam_boundary_arn = "arn:${local.partition}:iam::${local.account}:policy/${var.name}-grant-boundary"

  # What the catalog's aws_iam permissions may allow: the boundary's ceiling, read from the
  # catalog itself so a reviewed catalog change moves it in the same plan.
  iam_catalog_actions = distinct(flatten([
    for integration in values(try(local.catalog.integrations, {})) : [
      for permission in values(try(integration.permissions, {})) : [
        for statement in flatten([try(permission.policy.Statement, [])]) :
        try(statement.Effect, "") == "Allow" ? flatten([try(statement.Action, [])]) : []
      ]
    ] if try(integration.kind, "") == "aws_iam"
  ]))
  iam_boundary_actions = var.iam_target == null ? [] : sort(distinct(concat(
    local.iam_catalog_actions, var.iam_target.boundary_extra_actions,
  )))

  idc = var.identity_center_target
  idc_resources = local.idc == null ? [] : concat(
    [local.idc.instance_arn],
    local.idc.permission_set_arns,
    [for account in local.idc.account_ids : "arn:${local.partition}:sso:::account/${account}"],
  )
}

# Statements that several functions' policies share, each group one document their policies
# take in with `source_policy_documents` (present only when its feature is deployed).

# In a VPC, Lambda creates the function's network interfaces with its execution role: the
# worker, the sweep, the sync and the rotation function run there.
data "aws_iam_policy_document" "vpc_network_interfaces" {
  count = var.vpc_config == null ? 0 : 1
  statement {
    sid     = "NetworkInterfacesInTheVpc"
    actions = ["ec2:CreateNetworkInterface"]
    resources = concat(
      ["arn:${local.partition}:ec2:${local.region}:${local.account}:network-interface/*"],
      [for id in var.vpc_config.subnet_ids : "arn:${local.partition}:ec2:${local.region}:${local.account}:subnet/${id}"],
      [for id in var.vpc_config.security_group_ids : "arn:${local.partition}:ec2:${local.region}:${local.account}:security-group/${id}"],
    )
  }
  statement {
    sid       = "OwnNetworkInterfaces"
    actions   = ["ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"]
    resources = ["arn:${local.partition}:ec2:${local.region}:${local.account}:network-interface/*"]
  }
  # EC2's Describe actions have no resource to scope to.
  statement {
    sid       = "DescribeNetworkInterfaces"
    actions   = ["ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"]
    resources = ["*"]
  }
}

# The catalog's secrets under customer managed keys, decrypted through Secrets Manager only: the
# worker, the sweep and the sync read those secrets.
data "aws_iam_policy_document" "catalog_secret_keys" {
  count = length(var.secret_kms_key_arns) > 0 ? 1 : 0
  statement {
    sid       = "DecryptCatalogSecrets"
    actions   = ["kms:Decrypt"]
    resources = var.secret_kms_key_arns
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "intake" {
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [local.log_arns["intake"]]
  }
  statement {
    sid       = "Enqueue"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.requests.arn]
  }
  statement {
    sid       = "EncryptForTheQueue"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
  }
  statement {
    #checkov:skip=CKV_AWS_111:X-Ray trace segments have no resource ARN to scope to.
    #checkov:skip=CKV_AWS_356:X-Ray trace segments have no resource ARN to scope to.
    sid       = "Traces"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }
}

data "aws_iam_policy_document" "worker" {
  source_policy_documents = concat(
    data.aws_iam_policy_document.vpc_network_interfaces[*].json,
    data.aws_iam_policy_document.catalog_secret_keys[*].json,
  )
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [local.log_arns["worker"]]
  }
  statement {
    sid       = "ConsumeQueue"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"]
    resources = [aws_sqs_queue.requests.arn]
  }
  statement {
    sid       = "EnqueueDueExpiries"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.requests.arn]
  }
  statement {
    sid       = "QueueKey"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
  }
  statement {
    sid       = "ScheduleExpiries"
    actions   = ["scheduler:CreateSchedule", "scheduler:DeleteSchedule"]
    resources = [local.schedule_arn]
  }
  statement {
    sid       = "HandSchedulesTheirRole"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.scheduler.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["scheduler.amazonaws.com"]
    }
  }
  statement {
    #checkov:skip=CKV_AWS_111:X-Ray trace segments have no resource ARN to scope to.
    #checkov:skip=CKV_AWS_356:X-Ray trace segments have no resource ARN to scope to.
    sid       = "Traces"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }

  # Targets in other accounts: only through the roles the member-account module made there,
  # which trust these roles only with the catalog's external id.
  dynamic "statement" {
    for_each = length(var.member_role_arns) > 0 ? [1] : []
    content {
      sid       = "ActInMemberAccounts"
      actions   = ["sts:AssumeRole"]
      resources = var.member_role_arns
    }
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
    for_each = local.bus_arn == null ? [] : [1]
    content {
      sid       = "SendEvents"
      actions   = ["events:PutEvents"]
      resources = [local.bus_arn]
    }
  }

  # -- aws_iam targets --
  dynamic "statement" {
    for_each = var.iam_target == null ? [] : [1]
    content {
      sid = "ManageGrantPolicies"
      actions = [
        "iam:CreatePolicy", "iam:GetPolicy", "iam:DeletePolicy", "iam:TagPolicy",
        "iam:ListEntitiesForPolicy", "iam:ListPolicyVersions", "iam:DeletePolicyVersion",
      ]
      resources = [local.iam_grant_policy_arn]
    }
  }
  dynamic "statement" {
    for_each = var.iam_target == null ? [] : [1]
    content {
      sid       = "FindGrantPolicies"
      actions   = ["iam:ListPolicies"]
      resources = ["*"]
    }
  }
  dynamic "statement" {
    for_each = var.iam_target == null || try(length(var.iam_target.managed_policy_arns), 0) == 0 ? [] : [1]
    content {
      sid       = "CopyCatalogManagedPolicies"
      actions   = ["iam:GetPolicy", "iam:GetPolicyVersion"]
      resources = var.iam_target.managed_policy_arns
    }
  }
  dynamic "statement" {
    for_each = var.iam_target == null ? [] : [1]
    content {
      sid       = "AttachOnlyGrantPoliciesToBoundedPrincipals"
      actions   = ["iam:AttachRolePolicy", "iam:AttachUserPolicy"]
      resources = var.iam_target.principal_arns
      condition {
        test     = "ArnLike"
        variable = "iam:PolicyARN"
        values   = [local.iam_grant_policy_arn]
      }
      condition {
        test     = "StringEquals"
        variable = "iam:PermissionsBoundary"
        values   = [local.iam_boundary_arn]
      }
    }
  }
  # Detaching our own policy takes nothing from anyone: allowed even if the boundary was removed.
  dynamic "statement" {
    for_each = var.iam_target == null ? [] : [1]
    content {
      sid       = "DetachOnlyGrantPolicies"
      actions   = ["iam:DetachRolePolicy", "iam:DetachUserPolicy"]
      resources = var.iam_target.principal_arns
      condition {
        test     = "ArnLike"
        variable = "iam:PolicyARN"
        values   = [local.iam_grant_policy_arn]
      }
    }
  }
  # A grant's policy hung on a group (by whoever may attach policies to groups) is taken off
  # it at the revoke: IAM deletes no policy that is still attached anywhere.
  dynamic "statement" {
    for_each = var.iam_target == null ? [] : [1]
    content {
      sid       = "DetachGrantPoliciesFromGroups"
      actions   = ["iam:DetachGroupPolicy"]
      resources = ["arn:${local.partition}:iam::${local.account}:group/*"]
      condition {
        test     = "ArnLike"
        variable = "iam:PolicyARN"
        values   = [local.iam_grant_policy_arn]
      }
    }
  }
  dynamic "statement" {
    for_each = var.iam_target == null ? [] : [1]
    content {
      sid       = "Grantees"
      actions   = ["iam:GetRole", "iam:GetUser", "iam:ListAttachedRolePolicies"]
      resources = var.iam_target.principal_arns
    }
  }

  # -- aws_identity_center targets --
  dynamic "statement" {
    for_each = local.idc == null ? [] : [1]
    content {
      sid = "AssignPermissionSets"
      actions = [
        "sso:CreateAccountAssignment", "sso:DeleteAccountAssignment", "sso:ListAccountAssignments",
        "sso:DescribeAccountAssignmentCreationStatus", "sso:DescribeAccountAssignmentDeletionStatus",
      ]
      resources = local.idc_resources
    }
  }
  # The ledger (ledger.tf): items by key only, no Scan (that is the sweep's).
  dynamic "statement" {
    for_each = local.idc == null ? [] : [1]
    content {
      sid       = "IdentityCenterLedger"
      actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Query"]
      resources = [local.ledger_arn]
    }
  }
  dynamic "statement" {
    for_each = local.idc == null ? [] : [1]
    content {
      sid       = "IdentityCenterLedgerKey"
      actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
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
      sid     = "FindUsersByEmail"
      actions = ["identitystore:GetUserId"]
      resources = [
        "arn:${local.partition}:identitystore::${local.account}:identitystore/${local.idc.identity_store_id}",
        "arn:${local.partition}:identitystore:::user/*",
      ]
    }
  }
}

# The sweep revokes (never grants): the worker's target rights less creation, plus cancelling
# the schedules of what it revokes.
data "aws_iam_policy_document" "sweep" {
  source_policy_documents = concat(
    data.aws_iam_policy_document.vpc_network_interfaces[*].json,
    data.aws_iam_policy_document.catalog_secret_keys[*].json,
  )
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [local.log_arns["sweep"]]
  }
  statement {
    sid       = "CancelExpiries"
    actions   = ["scheduler:DeleteSchedule"]
    resources = [local.schedule_arn]
  }
  statement {
    #checkov:skip=CKV_AWS_111:X-Ray trace segments have no resource ARN to scope to.
    #checkov:skip=CKV_AWS_356:X-Ray trace segments have no resource ARN to scope to.
    sid       = "Traces"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }

  # Targets in other accounts: only through the roles the member-account module made there,
  # which trust these roles only with the catalog's external id.
  dynamic "statement" {
    for_each = length(var.member_role_arns) > 0 ? [1] : []
    content {
      sid       = "ActInMemberAccounts"
      actions   = ["sts:AssumeRole"]
      resources = var.member_role_arns
    }
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
    for_each = local.bus_arn == null ? [] : [1]
    content {
      sid       = "SendEvents"
      actions   = ["events:PutEvents"]
      resources = [local.bus_arn]
    }
  }

  dynamic "statement" {
    for_each = var.iam_target == null ? [] : [1]
    content {
      sid = "RemoveGrantPolicies"
      actions = [
        "iam:CreatePolicy", "iam:GetPolicy", "iam:DeletePolicy", "iam:ListEntitiesForPolicy",
        "iam:ListPolicyVersions", "iam:DeletePolicyVersion",
      ]
      resources = [local.iam_grant_policy_arn]
    }
  }
  dynamic "statement" {
    for_each = var.iam_target == null ? [] : [1]
    content {
      sid       = "FindGrantPolicies"
      actions   = ["iam:ListPolicies"]
      resources = ["*"]
    }
  }
  dynamic "statement" {
    for_each = var.iam_target == null ? [] : [1]
    content {
      sid       = "DetachOnlyGrantPolicies"
      actions   = ["iam:DetachRolePolicy", "iam:DetachUserPolicy"]
      resources = var.iam_target.principal_arns
      condition {
        test     = "ArnLike"
        variable = "iam:PolicyARN"
        values   = [local.iam_grant_policy_arn]
      }
    }
  }
  # A grant's policy hung on a group (by whoever may attach policies to groups) is taken off
  # it at the revoke: IAM deletes no policy that is still attached anywhere.
  dynamic "statement" {
    for_each = var.iam_target == null ? [] : [1]
    content {
      sid       = "DetachGrantPoliciesFromGroups"
      actions   = ["iam:DetachGroupPolicy"]
      resources = ["arn:${local.partition}:iam::${local.account}:group/*"]
      condition {
        test     = "ArnLike"
        variable = "iam:PolicyARN"
        values   = [local.iam_grant_policy_arn]
      }
    }
  }
  dynamic "statement" {
    for_each = var.iam_target == null ? [] : [1]
    content {
      sid       = "EndOlderSessionsOfBoundedRoles"
      actions   = ["iam:AttachRolePolicy"]
      resources = var.iam_target.principal_arns
      condition {
        test     = "ArnLike"
        variable = "iam:PolicyARN"
        values   = [local.iam_sessions_policy_arn]
      }
      condition {
        test     = "StringEquals"
        variable = "iam:PermissionsBoundary"
        values   = [local.iam_boundary_arn]
      }
    }
  }
  dynamic "statement" {
    for_each = var.iam_target == null ? [] : [1]
    content {
      sid       = "FindOlderSessionPolicies"
      actions   = ["iam:ListAttachedRolePolicies"]
      resources = var.iam_target.principal_arns
    }
  }

  # Creating is there only to put back an assignment that a grant of the same user and account
  # labelled while the sweep removed it (the template restores what a live grant relies on).
  dynamic "statement" {
    for_each = local.idc == null ? [] : [1]
    content {
      sid = "UnassignPermissionSets"
      actions = [
        "sso:DeleteAccountAssignment", "sso:ListAccountAssignments",
        "sso:DescribeAccountAssignmentDeletionStatus",
        "sso:CreateAccountAssignment", "sso:DescribeAccountAssignmentCreationStatus",
      ]
      resources = local.idc_resources
    }
  }
  # The sweep reads the whole ledger (Scan) and buries or forgets what it revokes.
  dynamic "statement" {
    for_each = local.idc == null ? [] : [1]
    content {
      sid = "IdentityCenterLedger"
      actions = [
        "dynamodb:Scan", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Query",
      ]
      resources = [local.ledger_arn]
    }
  }
  dynamic "statement" {
    for_each = local.idc == null ? [] : [1]
    content {
      sid       = "IdentityCenterLedgerKey"
      actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
      resources = [aws_kms_key.this.arn]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["dynamodb.${local.region}.amazonaws.com"]
      }
    }
  }
}

# -- the grantees' permissions boundary ------------------------------------------------------

# Every role or user a grant may go to must carry this boundary (the template checks, and the
# worker may attach only to principals that do): no attached grant policy and no inline policy
# the connector writes can reach beyond it. Its ceiling is what the catalog's aws_iam
# permissions allow, plus `boundary_extra_actions` (the grantees' own standing access, and
# the actions of the managed policies the catalog copies).
data "aws_iam_policy_document" "grant_boundary" {
  count = var.iam_target == null ? 0 : 1
  #checkov:skip=CKV_AWS_111:A boundary caps actions; the grant policies it bounds name the resources.
  #checkov:skip=CKV_AWS_356:A boundary caps actions; the grant policies it bounds name the resources.
  #checkov:skip=CKV_AWS_109:A boundary caps actions; the grant policies it bounds name the resources.
  statement {
    sid       = "CatalogCeiling"
    actions   = local.iam_boundary_actions
    resources = ["*"]
  }
}

resource "aws_iam_policy" "grant_boundary" {
  count       = var.iam_target == null ? 0 : 1
  name        = "${var.name}-grant-boundary"
  path        = "/"
  description = "Permissions boundary of every principal the jit-connector may grant to."
  policy      = data.aws_iam_policy_document.grant_boundary[0].json
  tags        = var.tags
}
