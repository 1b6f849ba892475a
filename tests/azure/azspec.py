"""The constraints of Azure's REST APIs that the local fakes enforce, in one place.

The published OpenAPI specs (azure-rest-api-specs) are not available offline here, so what the
fakes rely on is encoded from the REST reference pages, each with its source:

- Role Assignments (Microsoft.Authorization, 2022-04-01): `PUT {scope}/providers/
  Microsoft.Authorization/roleAssignments/{roleAssignmentName}`; the name must be a GUID;
  `properties.roleDefinitionId` and `properties.principalId` are required; `principalType` is one
  of User, Group, ServicePrincipal, ForeignGroup, Device, and must be the principal's type in the
  directory (`400 UnmatchedPrincipalType`); a second assignment of one role to one
  principal on one scope is `409 RoleAssignmentExists`; a description is at most 2 KB (the
  conditions FAQ, "What are the limits for a description?"); an assignment's role, principal and
  scope cannot change (`400 RoleAssignmentUpdateNotPermitted`). `$filter` takes `atScope()`,
  `principalId eq '{id}'` (or `assignedTo('{id}')`).
- Role Definitions - Get (2022-04-01): `GET {scope}/providers/Microsoft.Authorization/
  roleDefinitions/{roleDefinitionId}`.
- Role Assignment Schedule Requests - Create (2020-10-01): the name is a GUID;
  `properties.principalId`, `roleDefinitionId` and `requestType` are required; requestType is
  one of AdminAssign, AdminRemove, AdminUpdate, AdminExtend, AdminRenew, SelfActivate,
  SelfDeactivate, SelfExtend, SelfRenew; `scheduleInfo.expiration.type` is AfterDuration,
  AfterDateTime or NoExpiration, and AfterDateTime needs `endDateTime`.
- Key Vault Get Secret (7.x and 2025+): `GET {vault}/secrets/{name}/{version}?api-version=`;
  names of 1-127 letters, digits and dashes; an unauthenticated request is answered 401 with
  a `WWW-Authenticate: Bearer authorization=..., resource=...` challenge.
- Authorization: the data and control actions of the built-in roles the module assigns, from
  the "Azure built-in roles" reference; `Microsoft.Authorization/roleAssignments/write` and
  `/delete` are checked against the ABAC condition on the caller's assignment (the "constrain
  roles" example of "Delegate Azure role assignment management to others with conditions").
"""

from __future__ import annotations

import re

GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

API_VERSIONS = {
    "roleAssignments": {"2015-07-01", "2018-01-01-preview", "2020-04-01-preview", "2022-04-01"},
    "roleDefinitions": {"2015-07-01", "2018-01-01-preview", "2022-04-01", "2022-05-01-preview"},
    "roleAssignmentScheduleRequests": {
        "2020-10-01",
        "2020-10-01-preview",
        "2022-04-01-preview",
        "2024-02-01-preview",
        "2024-09-01-preview",
    },
    "keyvault": {"7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01", "2026-04-01"},
}

DESCRIPTION_MAX = 2048
PRINCIPAL_TYPES = {"User", "Group", "ServicePrincipal", "ForeignGroup", "Device"}
REQUEST_TYPES = {
    "AdminAssign",
    "AdminRemove",
    "AdminUpdate",
    "AdminExtend",
    "AdminRenew",
    "SelfActivate",
    "SelfDeactivate",
    "SelfExtend",
    "SelfRenew",
}
EXPIRATION_TYPES = {"AfterDuration", "AfterDateTime", "NoExpiration"}
SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
ROLE_DEFINITION_ID = re.compile(
    r"^/subscriptions/[0-9a-f-]{36}/providers/Microsoft\.Authorization/roleDefinitions/"
    r"(?P<guid>[0-9a-f-]{36})$"
)

# Built-in roles: name -> (id, actions, data actions).
BUILTIN_ROLES: dict[str, tuple[str, list[str], list[str]]] = {
    "Key Vault Secrets User": (
        "4633458b-17de-408a-b874-0445c86b69e6",
        [],
        [
            "Microsoft.KeyVault/vaults/secrets/getSecret/action",
            "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
        ],
    ),
    "Storage Queue Data Contributor": (
        "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
        [
            "Microsoft.Storage/storageAccounts/queueServices/queues/delete",
            "Microsoft.Storage/storageAccounts/queueServices/queues/read",
            "Microsoft.Storage/storageAccounts/queueServices/queues/write",
        ],
        [
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/delete",
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/read",
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/write",
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/process/action",
        ],
    ),
    "Storage Queue Data Message Sender": (
        "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a",
        [],
        ["Microsoft.Storage/storageAccounts/queueServices/queues/messages/add/action"],
    ),
    "Storage Blob Data Owner": (
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
        [
            "Microsoft.Storage/storageAccounts/blobServices/containers/*",
            "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action",
        ],
        ["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/*"],
    ),
    "Storage Blob Data Contributor": (
        "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
        [
            "Microsoft.Storage/storageAccounts/blobServices/containers/delete",
            "Microsoft.Storage/storageAccounts/blobServices/containers/read",
            "Microsoft.Storage/storageAccounts/blobServices/containers/write",
            "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action",
        ],
        [
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete",
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/move/action",
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/add/action",
        ],
    ),
    "Monitoring Metrics Publisher": (
        "3913510d-42f4-4e42-8a64-420c390055eb",
        [
            "Microsoft.Insights/Register/Action",
            "Microsoft.Support/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
        ],
        ["Microsoft.Insights/Metrics/Write", "Microsoft.Insights/Telemetry/Write"],
    ),
    "Reader": ("acdd72a7-3385-48ef-bd42-f606fba81ae7", ["*/read"], []),
    "Owner": ("8e3af657-a8ff-443c-a75c-2fe8c4bcb635", ["*"], []),
}

# Queue REST operations -> the data action they need (Storage's authorization reference).
QUEUE_ACTIONS = {
    (
        "POST",
        "messages",
    ): "Microsoft.Storage/storageAccounts/queueServices/queues/messages/add/action",
    (
        "GET",
        "messages",
    ): "Microsoft.Storage/storageAccounts/queueServices/queues/messages/process/action",
    ("GET", "peek"): "Microsoft.Storage/storageAccounts/queueServices/queues/messages/read",
    ("DELETE", "message"): "Microsoft.Storage/storageAccounts/queueServices/queues/messages/delete",
    ("PUT", "message"): "Microsoft.Storage/storageAccounts/queueServices/queues/messages/write",
    ("PUT", "queue"): "Microsoft.Storage/storageAccounts/queueServices/queues/write",
    ("GET", "queue"): "Microsoft.Storage/storageAccounts/queueServices/queues/read",
}
# Data actions that imply others (Storage: `messages/write` covers add; `process` is also
# granted by `messages/read` + `messages/delete` in the Contributor role).
IMPLIED = {
    "Microsoft.Storage/storageAccounts/queueServices/queues/messages/add/action": [
        "Microsoft.Storage/storageAccounts/queueServices/queues/messages/write"
    ],
}
