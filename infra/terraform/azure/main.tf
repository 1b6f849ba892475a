# The connector on Azure: one Linux Function App (Python 3.11, Flex Consumption) running the zip
# `jitc package azure` builds, a storage account for its queues and host state with shared-key
# access off, a user-assigned identity holding only the rights the code uses, and Application
# Insights with alerts. See README.md for what each right is for.

data "azurerm_client_config" "current" {}

resource "random_string" "suffix" {
  length  = 6
  special = false
  upper   = false
}

locals {
  suffix  = random_string.suffix.result
  catalog = jsonencode(yamldecode(file(var.catalog_file)))
  # The queue trigger's connection: identity-based (no connection string, no key).
  queue_name        = "${var.name}-requests"
  poison_queue_name = "${var.name}-requests-poison"
  # Containers the Functions host writes (timer leases, keys) and the deployment package.
  host_containers = ["azure-webjobs-hosts", "azure-webjobs-secrets", "app-package"]
  queue_scopes = {
    requests = "${azurerm_storage_account.app.id}/queueServices/default/queues/${azurerm_storage_queue.requests.name}"
    poison   = "${azurerm_storage_account.app.id}/queueServices/default/queues/${azurerm_storage_queue.poison.name}"
  }
  rbac_enabled = length(var.rbac_scopes) > 0
  rbac_actions = concat(
    [
      "Microsoft.Authorization/roleAssignments/read",
      "Microsoft.Authorization/roleAssignments/write",
      "Microsoft.Authorization/roleAssignments/delete",
      # The template reads a custom role's actions before handing it out.
      "Microsoft.Authorization/roleDefinitions/read",
    ],
    var.rbac_pim ? [
      "Microsoft.Authorization/roleAssignmentScheduleRequests/read",
      "Microsoft.Authorization/roleAssignmentScheduleRequests/write",
    ] : [],
  )
  # ABAC condition on the connector's own assignment: it may write or delete assignments of the
  # catalog's roles only, so its right to write assignments cannot make anyone an Owner.
  rbac_roles = join(", ", var.rbac_role_ids)
  rbac_condition = join(" AND ", [
    "((!(ActionMatches{'Microsoft.Authorization/roleAssignments/write'})) OR (@Request[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {${local.rbac_roles}}))",
    "((!(ActionMatches{'Microsoft.Authorization/roleAssignments/delete'})) OR (@Resource[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {${local.rbac_roles}}))",
  ])
}

resource "azurerm_user_assigned_identity" "app" {
  name                = "${var.name}-jitc"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
}

resource "azurerm_storage_account" "app" {
  #checkov:skip=CKV_AZURE_206:The queues hold in-flight messages only; losing a region loses the connector, not data (the targets are the ledger).
  #checkov:skip=CKV2_AZURE_1:Microsoft-managed keys: the account holds signed requests and expiry messages, no secrets.
  #checkov:skip=CKV2_AZURE_33:Private endpoints need a virtual network the company owns; the account takes Entra ID tokens only (no shared key).
  #checkov:skip=CKV_AZURE_59:Flex Consumption apps without virtual network integration reach their storage over the public endpoint; access needs an Entra ID token with a data role.
  #checkov:skip=CKV2_AZURE_41:No SAS is ever issued: shared-key access (which signs SAS) is off.
  #checkov:skip=CKV2_AZURE_40:Shared key access is disabled (shared_access_key_enabled = false); checkov misreads the 4.x argument.
  #checkov:skip=CKV_AZURE_33:Queue service logging is configured through diagnostic settings in azurerm 4.x (the inline block is deprecated).
  name                              = "${var.name}jitc${local.suffix}"
  resource_group_name               = var.resource_group_name
  location                          = var.location
  account_tier                      = "Standard"
  account_replication_type          = "LRS"
  min_tls_version                   = "TLS1_2"
  https_traffic_only_enabled        = true
  shared_access_key_enabled         = false
  default_to_oauth_authentication   = true
  allow_nested_items_to_be_public   = false
  local_user_enabled                = false
  infrastructure_encryption_enabled = true
  tags                              = var.tags

  blob_properties {
    delete_retention_policy {
      days = 7
    }
    container_delete_retention_policy {
      days = 7
    }
  }

  sas_policy {
    expiration_period = "00.01:00:00"
  }
}

resource "azurerm_storage_queue" "requests" {
  name               = local.queue_name
  storage_account_id = azurerm_storage_account.app.id
}

# The host moves a message here after maxDequeueCount (host.json) failed deliveries. Made by
# Terraform so the app's rights can be scoped to it.
resource "azurerm_storage_queue" "poison" {
  name               = local.poison_queue_name
  storage_account_id = azurerm_storage_account.app.id
}

resource "azurerm_storage_container" "host" {
  #checkov:skip=CKV2_AZURE_21:Blob read logging goes through the account's diagnostic settings.
  for_each              = toset(local.host_containers)
  name                  = each.value
  storage_account_id    = azurerm_storage_account.app.id
  container_access_type = "private"
}

resource "azurerm_log_analytics_workspace" "app" {
  name                = "${var.name}-jitc-logs"
  resource_group_name = var.resource_group_name
  location            = var.location
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = var.tags
}

resource "azurerm_application_insights" "app" {
  name                = "${var.name}-jitc"
  resource_group_name = var.resource_group_name
  location            = var.location
  workspace_id        = azurerm_log_analytics_workspace.app.id
  application_type    = "other"
  # Telemetry is sent with the app's Entra ID token (APPLICATIONINSIGHTS_AUTHENTICATION_STRING).
  local_authentication_disabled = true
  tags                          = var.tags
}

resource "azurerm_service_plan" "app" {
  #checkov:skip=CKV_AZURE_225:A Flex Consumption plan (FC1) scales per event and has no instance count or zone setting here; messages wait in the queue through a zone outage.
  #checkov:skip=CKV_AZURE_212:Flex Consumption has no minimum instance count on the plan (always-ready instances are per function); the queue holds work until an instance runs.
  name                = "${var.name}-jitc"
  resource_group_name = var.resource_group_name
  location            = var.location
  os_type             = "Linux"
  sku_name            = "FC1"
  tags                = var.tags
}

resource "azurerm_function_app_flex_consumption" "app" {
  name                = "${var.name}-jitc-${local.suffix}"
  resource_group_name = var.resource_group_name
  location            = var.location
  service_plan_id     = azurerm_service_plan.app.id

  storage_container_type            = "blobContainer"
  storage_container_endpoint        = "${azurerm_storage_account.app.primary_blob_endpoint}${azurerm_storage_container.host["app-package"].name}"
  storage_authentication_type       = "UserAssignedIdentity"
  storage_user_assigned_identity_id = azurerm_user_assigned_identity.app.id

  runtime_name           = "python"
  runtime_version        = "3.11"
  maximum_instance_count = var.maximum_instance_count
  instance_memory_in_mb  = 2048
  # azurerm pushes zip_deploy_file to the app's SCM site with the site's publishing
  # credentials (Basic auth): on only when Terraform deploys the package. With
  # package_deploy = "external" they stay off and the package goes up with an Entra ID token.
  zip_deploy_file                                = var.package_deploy == "terraform" ? var.package_zip : null
  https_only                                     = true
  webdeploy_publish_basic_authentication_enabled = var.package_deploy == "terraform"

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.app.id]
  }

  site_config {
    application_insights_connection_string = azurerm_application_insights.app.connection_string
    minimum_tls_version                    = "1.2"
    http2_enabled                          = true
  }

  app_settings = {
    AzureWebJobsStorage__accountName = azurerm_storage_account.app.name
    AzureWebJobsStorage__credential  = "managedidentity"
    AzureWebJobsStorage__clientId    = azurerm_user_assigned_identity.app.client_id
    JitcQueue__queueServiceUri       = azurerm_storage_account.app.primary_queue_endpoint
    JitcQueue__credential            = "managedidentity"
    JitcQueue__clientId              = azurerm_user_assigned_identity.app.client_id
    # DefaultAzureCredential picks the user-assigned identity by its client id.
    AZURE_CLIENT_ID                           = azurerm_user_assigned_identity.app.client_id
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING = "ClientId=${azurerm_user_assigned_identity.app.client_id};Authorization=AAD"
    JITC_QUEUE_NAME                           = azurerm_storage_queue.requests.name
    JITC_POISON_QUEUE_NAME                    = azurerm_storage_queue.poison.name
    JITC_CATALOG                              = local.catalog
    JITC_CATALOG_SHA256                       = sha256(local.catalog)
    JITC_SWEEP_SCHEDULE                       = var.sweep_schedule
    JITC_SYNC_SCHEDULE                        = var.sync_schedule
    JITC_SYNC_BLOB_SERVICE_URI                = azurerm_storage_account.app.primary_blob_endpoint
    JITC_SYNC_CONTAINER                       = azurerm_storage_container.sync.name
    JITC_RBAC_LEDGER_URL                      = "${azurerm_storage_account.app.primary_blob_endpoint}${azurerm_storage_container.rbac_ledger.name}"
    # The azure_rbac template refuses a grant on, in or over this (see own_scope.tf).
    JITC_AZURE_OWN_SCOPE          = local.own_scope
    JITC_EXPIRY_MAX_DELAY_SECONDS = tostring(var.expiry_max_delay_seconds)
    # The connector uses no pydantic plugin: skip their discovery (an entry-point scan of
    # every installed distribution at the first model: 10-25 ms with 150 of them installed).
    PYDANTIC_DISABLE_PLUGINS = "__all__"
  }

  tags = var.tags
}
