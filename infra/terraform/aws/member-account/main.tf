# The role a jit-connector deployed in another account assumes to act on this account's IAM (or
# on Identity Center, when it is administered from here). It trusts only the connector's worker
# and sweep roles, and only with the external id, and may do here what the connector module
# lets the worker do on a target in its own account: no more.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account              = data.aws_caller_identity.current.account_id
  partition            = data.aws_partition.current.partition
  iam_path             = var.iam_target == null ? "/jitc/" : var.iam_target.policy_path
  iam_grant_policy_arn = "arn:${local.partition}:iam::${local.account}:policy${local.iam_path}jitc-*"
  iam_boundary_arn     = "arn:${local.partition}:iam::${local.account}:policy/${var.name}-grant-boundary"
  idc                  = var.identity_center_target
  idc_resources = local.idc == null ? [] : concat(
    [local.idc.instance_arn],
    local.idc.permission_set_arns,
    [for account in local.idc.account_ids : "arn:${local.partition}:sso:::account/${account}"],
  )
}

data "aws_iam_policy_document" "trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "AWS"
      identifiers = var.connector_role_arns
    }
    condition {
      test     = "StringEquals"
      variable = "sts:ExternalId"
      values   = [var.external_id]
    }
  }
}

resource "aws_iam_role" "connector" {
  name                 = "${var.name}-connector"
  assume_role_policy   = data.aws_iam_policy_document.trust.json
  max_session_duration = 3600
  tags                 = var.tags
}

data "aws_iam_policy_document" "connector" {
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
    #checkov:skip=CKV_AWS_111:iam:ListPolicies has no resource to scope to.
    #checkov:skip=CKV_AWS_356:iam:ListPolicies has no resource to scope to.
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

resource "aws_iam_role_policy" "connector" {
  count  = var.iam_target == null && local.idc == null ? 0 : 1
  name   = "${var.name}-connector"
  role   = aws_iam_role.connector.id
  policy = data.aws_iam_policy_document.connector.json
}

data "aws_iam_policy_document" "grant_boundary" {
  count = var.iam_target == null ? 0 : 1
  #checkov:skip=CKV_AWS_111:A boundary caps actions; the grant policies it bounds name the resources.
  #checkov:skip=CKV_AWS_356:A boundary caps actions; the grant policies it bounds name the resources.
  #checkov:skip=CKV_AWS_109:A boundary caps actions; the grant policies it bounds name the resources.
  statement {
    sid       = "Ceiling"
    actions   = var.iam_target.boundary_actions
    resources = ["*"]
  }
}

resource "aws_iam_policy" "grant_boundary" {
  count       = var.iam_target == null ? 0 : 1
  name        = "${var.name}-grant-boundary"
  path        = "/"
  description = "Permissions boundary of every principal the jit-connector may grant to in this account."
  policy      = data.aws_iam_policy_document.grant_boundary[0].json
  tags        = var.tags
}
