# -- the Azure RBAC template's ledger (assignment mode): tombstones and per-assignment locks --
#
# ARM keeps no ETag on a role assignment and nothing of a revoke that found no assignment, so the
# template keeps both in blobs of a container of its own in the app's storage account:
# `tombstones/` (one per revoked grant, MACed with the label key, deleted by the sweep once no
# delivery of its grant can succeed) and `locks/` (empty blobs leased for 60 s around each
# read-modify-write of an assignment's description). See docs/azure.md.

resource "azurerm_storage_container" "rbac_ledger" {
  #checkov:skip=CKV2_AZURE_21:Blob read logging goes through the account's diagnostic settings.
  name                  = "jitc-rbac-ledger"
  storage_account_id    = azurerm_storage_account.app.id
  container_access_type = "private"
}

# Read, write (create-if-absent, lease) and delete blobs in this container only, and only when
# the catalog has an RBAC target.
resource "azurerm_role_assignment" "rbac_ledger" {
  count                = local.rbac_enabled ? 1 : 0
  scope                = "${azurerm_storage_account.app.id}/blobServices/default/containers/${azurerm_storage_container.rbac_ledger.name}"
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

# A lock blob is made again on its next use, so one idle for a day goes (Storage refuses to
# delete a leased blob without its lease). Tombstones are not in this rule: how long one must
# live is the catalog's max_duration plus margins, which the sweep reads from the tombstone
# itself; a rule in whole days could delete one while its grant could still be delivered.
resource "azurerm_storage_management_policy" "app" {
  storage_account_id = azurerm_storage_account.app.id

  rule {
    name    = "jitc-rbac-ledger-locks"
    enabled = true
    filters {
      prefix_match = ["${azurerm_storage_container.rbac_ledger.name}/locks/"]
      blob_types   = ["blockBlob"]
    }
    actions {
      base_blob {
        delete_after_days_since_modification_greater_than = 1
      }
    }
  }
}
