# A complete deployment: build the package with `jitc package aws --out dist`, add the control
# plane's Ed25519 public key to catalog.yaml, then `terraform init && terraform apply` here. The
# catalog file is reviewed like any other code, and the module's inputs that repeat catalog facts
# are read from it, so the two cannot disagree.

provider "aws" {
  region = var.region
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  catalog   = yamldecode(file("${path.module}/catalog.yaml"))
  database  = local.catalog.integrations["orders-db"]
  iam       = local.catalog.integrations["account-iam"]
  account   = data.aws_caller_identity.current.account_id
  partition = data.aws_partition.current.partition
  # aws-sm:NAME#field -> NAME
  pg_admin_secret = trimprefix(split("#", local.database.credentials)[0], "aws-sm:")
}

resource "aws_secretsmanager_secret" "pg_admin" {
  #checkov:skip=CKV2_AWS_57:Rotation belongs to the database's owner; the connector reads the current value per batch.
  name       = local.pg_admin_secret
  kms_key_id = var.secrets_kms_key_arn
}

# The value is kept in Terraform's state: encrypt the state, or leave this out and set the
# value with `aws secretsmanager put-secret-value` instead.
resource "aws_secretsmanager_secret_version" "pg_admin" {
  secret_id     = aws_secretsmanager_secret.pg_admin.id
  secret_string = jsonencode({ password = var.pg_admin_password })
}

resource "aws_cloudwatch_event_bus" "jitc" {
  name = "jitc-events"
}

module "jitc" {
  source = "../../aws"

  name         = "jitc"
  package_path = var.package_path
  catalog_file = "${path.module}/catalog.yaml"

  # The secrets the functions may read are every aws-sm: reference in the catalog.
  secret_kms_key_arns = var.secrets_kms_key_arn == null ? [] : [var.secrets_kms_key_arn]
  event_bus_name      = aws_cloudwatch_event_bus.jitc.name
  alarm_actions       = var.alarm_actions
  intake_invoker_arns = var.control_plane_invoker_arns
  # The catalog's database lives in the VPC: the worker and sweep join it.
  vpc_config = var.vpc_config

  iam_target = {
    principal_arns = [
      for pattern in local.iam.connection.allowed_principals :
      "arn:${local.partition}:iam::${local.account}:role/${pattern}"
    ]
    # The boundary caps everything the grantees may do, not only their grants: list their
    # standing access here before giving them the boundary, or it stops working.
    boundary_extra_actions = var.grantee_standing_actions
  }

  tags = { "managed-by" = "terraform", "component" = "jit-connector" }
}
