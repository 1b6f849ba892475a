# -- the Identity Center ledger ---------------------------------------------------------------

# The aws_identity_center template's ledger (core/templates/aws_identity_center_ledger.py): one
# MACed item per grant and per assignment a grant holds. It replaced the permission sets' tags,
# which AWS caps at 50 per permission set (shared with the company's own) and which every revoke
# filled with a tombstone for max_duration + 10 minutes. Tombstones carry `expires`, the table's
# TTL: DynamoDB deletes them once they are past, so the table does not grow with revokes.
locals {
  ledger_name = "${var.name}-ledger"
  ledger_arn  = "arn:${local.partition}:dynamodb:${local.region}:${local.account}:table/${local.ledger_name}"
}

resource "aws_dynamodb_table" "ledger" {
  count                       = local.idc == null ? 0 : 1
  name                        = local.ledger_name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "pk"
  range_key                   = "sk"
  deletion_protection_enabled = true

  attribute {
    name = "pk"
    type = "S"
  }
  attribute {
    name = "sk"
    type = "S"
  }

  ttl {
    attribute_name = "expires"
    enabled        = true
  }

  # The ledger is what lets a revoke find an assignment: restorable to any second of 35 days.
  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.this.arn
  }

  tags = var.tags

  lifecycle {
    precondition {
      condition = alltrue([
        for integration in values(try(local.catalog.integrations, {})) :
        try(integration.connection.ledger_table, "") == local.ledger_name
        if try(integration.kind, "") == "aws_identity_center"
      ])
      error_message = "Every aws_identity_center integration of the catalog needs connection.ledger_table = \"<name>-ledger\" (the table this module makes, output identity_center_ledger_table)."
    }
  }
}
