# A complete deployment: build the package with `jitc package aws --out dist`, then
# `terraform init && terraform apply` here. The catalog file is reviewed like any other code.

provider "aws" {
  region = var.region
}

resource "aws_secretsmanager_secret" "pg_admin" {
  #checkov:skip=CKV2_AWS_57:Rotation belongs to the database's owner; the connector reads the current value per batch.
  name       = "jitc/pg-admin"
  kms_key_id = var.secrets_kms_key_arn
}

resource "aws_cloudwatch_event_bus" "jitc" {
  name = "jitc-events"
}

module "jitc" {
  source = "../../aws"

  name         = "jitc"
  package_path = var.package_path
  catalog_file = "${path.module}/catalog.yaml"

  secret_arns         = [aws_secretsmanager_secret.pg_admin.arn]
  secret_kms_key_arns = var.secrets_kms_key_arn == null ? [] : [var.secrets_kms_key_arn]
  event_bus_name      = aws_cloudwatch_event_bus.jitc.name
  alarm_actions       = var.alarm_actions
  vpc_config          = var.vpc_config

  iam_target = {
    principal_arns = ["arn:aws:iam::${var.account_id}:role/dev-*"]
  }

  tags = { "managed-by" = "terraform", "component" = "jit-connector" }
}
