# -- inventory sync: a timer function that sends each target's names to the control plane --
#
# The app's `sync` timer reads the targets' inventories (names only), the catalog's secrets, and
# the versions the control plane acknowledged: one small JSON blob (page hashes, no names) in a
# container of its own, the only blob data the identity may write outside the host's
# containers. The silence alert exists when the catalog names a webhook (connector.webhook_url
# and connector.signing_key): without one the timer only logs that it has nowhere to send.

variable "sync_schedule" {
  description = "NCRONTAB (six fields) of the inventory sync to the control plane."
  type        = string
  default     = "0 0 * * * *"
  validation {
    condition     = length(split(" ", var.sync_schedule)) == 6
    error_message = "sync_schedule: an NCRONTAB expression of six fields (seconds first)."
  }
}

variable "sync_silence_hours" {
  description = "Alert when no inventory sync has completed for this long (a window the scheduled query rule accepts; keep it a few sync intervals)."
  type        = number
  default     = 3
  validation {
    condition     = contains([2, 3, 4, 5, 6, 24, 48], var.sync_silence_hours)
    error_message = "sync_silence_hours: one of 2, 3, 4, 5, 6, 24, 48."
  }
}

locals {
  catalog_connector = try(yamldecode(file(var.catalog_file)).connector, {})
  sync_enabled      = try(local.catalog_connector.webhook_url, null) != null && try(local.catalog_connector.signing_key, null) != null
}

# Hashes only: losing the container costs one full sync, nothing else.
resource "azurerm_storage_container" "sync" {
  #checkov:skip=CKV2_AZURE_21:Blob read logging goes through the account's diagnostic settings.
  name                  = "jitc-inventory-state"
  storage_account_id    = azurerm_storage_account.app.id
  container_access_type = "private"
}

# Read and conditionally write the state blob, in this container only.
resource "azurerm_role_assignment" "sync_state" {
  scope                = "${azurerm_storage_account.app.id}/blobServices/default/containers/${azurerm_storage_container.sync.name}"
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

# Silence is the failure to watch: a timer not firing, a sync failing, or one target down every
# time logs no "inventory sync completed" for the window.
resource "azurerm_monitor_scheduled_query_rules_alert_v2" "sync_silence" {
  count                = local.sync_enabled ? 1 : 0
  name                 = "${var.name}-jitc-sync-silence"
  resource_group_name  = var.resource_group_name
  location             = var.location
  description          = "No complete inventory sync: the control plane's view of users, roles and resources is going stale."
  scopes               = [azurerm_application_insights.app.id]
  severity             = 2
  evaluation_frequency = "PT15M"
  window_duration      = "PT${var.sync_silence_hours}H"
  tags                 = var.tags

  criteria {
    query                   = "traces | where message contains 'inventory sync completed'"
    time_aggregation_method = "Count"
    operator                = "LessThan"
    threshold               = 1
    failing_periods {
      minimum_failing_periods_to_trigger_alert = 1
      number_of_evaluation_periods             = 1
    }
  }

  action {
    action_groups = [azurerm_monitor_action_group.app.id]
  }
}
