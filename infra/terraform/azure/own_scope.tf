# The connector's own resource group holds its storage account (queues, host state, the app
# package, the RBAC ledger's tombstones and locks), its Function App and its identity. A role
# the connector hands out there (Storage Account Contributor, say, which is not privileged by
# ARM's measure) lets a grantee re-enable shared keys, delete tombstones or replace the package:
# no scope the connector assigns roles on may be that group, hold it (its subscription) or lie in
# it. The template refuses the same at grant time, from the JITC_AZURE_OWN_SCOPE app setting.

locals {
  own_scope = "/subscriptions/${data.azurerm_client_config.current.subscription_id}/resourceGroups/${var.resource_group_name}"
  # The catalog's azure_rbac scopes (connection scopes and permission resources, written
  # without a leading slash), besides the rbac_scopes the connector's custom role is assigned on.
  catalog_rbac_scopes = flatten([
    for integration in values(try(yamldecode(file(var.catalog_file)).integrations, {})) : concat(
      try(integration.connection.scopes, []),
      flatten([for permission in values(try(integration.permissions, {})) : try(permission.resources, [])]),
    ) if try(integration.kind, "") == "azure_rbac"
  ])
  rbac_scopes_over_own = [
    for scope in concat(var.rbac_scopes, [for s in local.catalog_rbac_scopes : "/${trimprefix(s, "/")}"]) : scope
    if lower(trimsuffix(scope, "/")) == lower(local.own_scope)
    || startswith(lower(local.own_scope), "${lower(trimsuffix(scope, "/"))}/")
    || startswith(lower(scope), "${lower(local.own_scope)}/")
  ]
}

resource "terraform_data" "own_scope_guard" {
  input = local.own_scope

  lifecycle {
    precondition {
      condition     = length(local.rbac_scopes_over_own) == 0
      error_message = "rbac_scopes and the catalog's azure_rbac scopes must not be, contain or lie in the connector's own resource group (${local.own_scope}): a role there could rewrite its storage account, ledger or package. Move the connector to a resource group (and ideally a subscription) of its own. Found: ${join(", ", local.rbac_scopes_over_own)}."
    }
  }
}
