# Every right the app's identity holds, each on the narrowest scope the code needs.

# Key Vault: read exactly the secrets the catalog references (RBAC-mode vault).
resource "azurerm_role_assignment" "secrets" {
  for_each             = toset(var.key_vault_secret_names)
  scope                = "${var.key_vault_id}/secrets/${each.value}"
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

# The request queue and its poison queue: send (intake, expiry, hops), receive and delete
# (worker, trigger), peek (sweep's poison check), create-if-missing (host).
resource "azurerm_role_assignment" "queues" {
  for_each             = local.queue_scopes
  scope                = each.value
  role_definition_name = "Storage Queue Data Contributor"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

# The host's own containers (timer leases, function keys) and the deployment package.
resource "azurerm_role_assignment" "host_blobs" {
  for_each             = azurerm_storage_container.host
  scope                = "${azurerm_storage_account.app.id}/blobServices/default/containers/${each.value.name}"
  role_definition_name = "Storage Blob Data Owner"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

# Telemetry with an Entra ID token (local authentication is off on Application Insights).
resource "azurerm_role_assignment" "telemetry" {
  scope                = azurerm_application_insights.app.id
  role_definition_name = "Monitoring Metrics Publisher"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

# The RBAC target: a custom role with only the assignment actions the template calls, assigned
# on only the catalog's scopes, and conditioned to the catalog's roles.
resource "azurerm_role_definition" "rbac_target" {
  count             = local.rbac_enabled ? 1 : 0
  name              = "${var.name}-jitc-role-assigner-${local.suffix}"
  scope             = var.rbac_role_definition_scope
  description       = "jit-connector: grants and revokes the catalog's role assignments."
  assignable_scopes = var.rbac_scopes

  permissions {
    actions     = local.rbac_actions
    not_actions = []
  }

  lifecycle {
    precondition {
      condition     = var.rbac_role_definition_scope != null && length(var.rbac_role_ids) > 0
      error_message = "rbac_scopes needs rbac_role_definition_scope and the catalog's role ids in rbac_role_ids (an empty condition would refuse every grant)."
    }
  }
}

resource "azurerm_role_assignment" "rbac_target" {
  for_each           = local.rbac_enabled ? toset(var.rbac_scopes) : toset([])
  scope              = each.value
  role_definition_id = azurerm_role_definition.rbac_target[0].role_definition_resource_id
  principal_id       = azurerm_user_assigned_identity.app.principal_id
  principal_type     = "ServicePrincipal"
  condition          = local.rbac_condition
  condition_version  = "2.0"
  description        = "jit-connector: may assign and remove only the catalog's roles here."
}

# No inbound HTTP at all, if preferred: the control plane puts the same signed envelope on the
# queue itself.
resource "azurerm_role_assignment" "control_plane_sender" {
  count                = var.control_plane_principal_id == null ? 0 : 1
  scope                = local.queue_scopes.requests
  role_definition_name = "Storage Queue Data Message Sender"
  principal_id         = var.control_plane_principal_id
  principal_type       = "ServicePrincipal"
}
