# A complete deployment: build the package with `jitc package azure --out dist`, put the control
# plane's Ed25519 public key in catalog.yaml, then `terraform init && terraform apply` here. The
# module's inputs that repeat catalog facts (secret names, RBAC scopes and roles) are read from
# the catalog, so the two cannot disagree.

provider "azurerm" {
  features {}
  # The storage account has shared-key access off: the provider must use Entra ID for data.
  storage_use_azuread = true
  subscription_id     = var.subscription_id
}

locals {
  catalog      = yamldecode(file("${path.module}/catalog.yaml"))
  integrations = local.catalog.integrations
  # Every azure-kv reference in the catalog -> its secret name.
  references = concat(
    [for i in values(local.integrations) : i.credentials if try(i.credentials, null) != null],
    [for k in ["label_key", "signing_key"] : local.catalog.connector[k] if try(local.catalog.connector[k], null) != null],
  )
  secret_names = distinct([for r in local.references : split("/", split("#", r)[0])[4]])
  rbac         = [for i in values(local.integrations) : i if i.kind == "azure_rbac"]
  rbac_scopes  = distinct(flatten([for i in local.rbac : [for s in i.connection.scopes : "/${s}"]]))
  rbac_roles   = distinct(flatten([for i in local.rbac : [for p in values(i.permissions) : p.role_definition_id]]))
  rbac_pim     = anytrue([for i in local.rbac : try(i.connection.mode, "assignment") == "pim"])
}

resource "azurerm_resource_group" "jitc" {
  name     = "jitc-example"
  location = var.location
}

module "jitc" {
  source = "../../azure"

  name                       = "example"
  resource_group_name        = azurerm_resource_group.jitc.name
  location                   = var.location
  catalog_file               = "${path.module}/catalog.yaml"
  package_zip                = var.package_zip
  key_vault_id               = var.key_vault_id
  key_vault_secret_names     = local.secret_names
  rbac_role_definition_scope = "/subscriptions/${var.subscription_id}"
  rbac_scopes                = local.rbac_scopes
  rbac_role_ids              = local.rbac_roles
  rbac_pim                   = local.rbac_pim
  alert_emails               = var.alert_emails
}
