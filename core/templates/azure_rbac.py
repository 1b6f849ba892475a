"""Azure RBAC: a role assignment (a role definition on a subscription, resource group or resource
scope) for the identity's Entra ID object id, through the ARM authorization API.

Two modes (the connection's `mode`):

- `assignment`: a plain role assignment, named by a GUID derived from the grant id and scope,
  its description the grant's label. The connector ends it: at expiry (the scheduled revoke) or
  in the sweep. Works in every tenant.
- `pim`: a PIM `roleAssignmentScheduleRequests` (`AdminAssign`) with `scheduleInfo.expiration`,
  so Azure itself ends the assignment on time even if the connector is down (fail closed). Needs
  Entra ID P2 (or Governance). A revoke is an `AdminRemove` request.

The ledger. ARM refuses a second assignment of one role to one principal on one scope
(409 RoleAssignmentExists), so two grants of the same access share one assignment: its label
lists every grant it holds, and a revoke removes its grant from the list, deleting the
assignment only when none is left. A label is acted on only when its MAC (the connector's label
key) verifies over the content *and* the assignment's id, principal and role: anyone who may edit
descriptions can write text, not a label for an assignment the connector did not make, and a
genuine label copied onto another assignment does not verify there. An assignment (or a name)
the connector did not make is never changed or deleted.

What ARM cannot hold, assignment mode keeps in its ledger (`azure_rbac_ledger`, a blob container
of the app's own storage account): a tombstone per revoked grant, which refuses a grant
delivered after its revoke, and a lock per assignment, held around every read-modify-write of
its label (ARM keeps no ETag on an assignment, so two writers would undo each other).

Revokes and the sweep read the assignments at the connection's `scopes` (where Terraform gives
the connector its custom role); every permission's resources lie at or under one of them.

RBAC changes take up to about 10 minutes to apply everywhere (Azure's published figure): the
outcome says so, and a revoke is verified by reading the scope back, not by trying the access.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from jitc import labels
from jitc.errors import Refused, TargetError
from jitc.labels import LabelKey, sign_label, verify_label
from jitc.models import Grant, utcnow
from jitc.secrets import Secret
from jitc.templates.azure_rbac_ledger import Held, Ledger
from jitc.templates.base import (
    GrantResult,
    GrantSpec,
    InventoryRecord,
    PermissionSettings,
    RevokeResult,
    Settings,
    grant_from_label,
)

KIND = "azure_rbac"
GUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_GUID = re.compile(f"^{GUID}$")
# Scopes as the catalog writes them (no leading slash): a subscription, a resource group in it,
# or a resource (provider namespace, type and name pairs) in a resource group.
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._()-]{0,89}"
SCOPE = re.compile(
    rf"^subscriptions/(?P<sub>{GUID})"
    rf"(/resourceGroups/{_SEGMENT}"
    rf"(/providers/[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)+(/[A-Za-z][A-Za-z0-9]*/{_SEGMENT})+)?)?$"
)
# Built-in roles that hand out access itself; the catalog must mark a permission using one
# `privileged: true`. Their ids are the same in every tenant.
PRIVILEGED_ROLES = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
    "f58310d9-a9f6-439a-9e8d-f62e7b41a168": "Role Based Access Control Administrator",
}
# Actions that write access: a role whose actions match one of these is privileged too (a custom
# role can be an Owner in all but name). Matched with ARM's wildcard, case-insensitively.
ACCESS_WRITING_ACTIONS = (
    "microsoft.authorization/roleassignments/write",
    "microsoft.authorization/roledefinitions/write",
    "microsoft.authorization/elevateaccess/action",
    "microsoft.authorization/roleassignmentschedulerequests/write",
    "microsoft.authorization/roleeligibilityschedulerequests/write",
)
NOTE = (
    "Azure RBAC applies role assignments within about 10 minutes; access may take that long "
    "to work everywhere"
)
# One assignment holds at most this many grants (each adds 200-330 characters to its description).
MAX_SHARED = 8
# ARM's limit on a role assignment's description (2 KB, the conditions FAQ): a grant whose entry
# would not fit is refused rather than sent as a write ARM rejects (retried into the poison queue).
DESCRIPTION_MAX = 2048
_NAMESPACE = uuid.UUID("6f1d2c7e-3b8a-5e43-9a61-0c2b4a7e9d15")
# Bounds on every ARM call, well under the ledger's 60 s lease: azure-core's defaults (300 s
# timeouts, 10 retries, Retry-After honoured however long) let one call outlive the lease. A
# write is sent once (`WRITE_ONCE`), so it lasts at most connect + read = 40 s; a refused write
# (429, 5xx) fails the operation and the queue retries the message later.
ARM_CONNECT_SECONDS = 10
ARM_READ_SECONDS = 30
ARM_RETRIES = 2
ARM_RETRY_AFTER_MAX = 5.0
WRITE_ONCE: dict[str, Any] = {"retry_total": 0}

# The process's credential, transport options and ledger container (the Azure runtime sets them;
# see `use`).
_credential: Any = None
_transport: dict[str, Any] = {}
_ledger_url: str | None = None
_own_scope: str | None = None


def use(
    credential: Any,
    transport: dict[str, Any],
    ledger_url: str | None = None,
    own_scope: str | None = None,
) -> None:
    """Act with this credential and these azure-core transport options (the function app's
    managed identity); None falls back to `DefaultAzureCredential`. `ledger_url` is the blob
    container assignment mode keeps its tombstones and locks in (`azure_rbac_ledger`).
    `own_scope` is the connector's own resource group (app setting JITC_AZURE_OWN_SCOPE): no
    grant may be on it, on a resource in it, or on a scope holding it."""
    global _credential, _transport, _ledger_url, _own_scope
    _credential = credential
    _transport = dict(transport)
    _ledger_url = ledger_url
    _own_scope = own_scope


def _retry_policy() -> Any:
    from azure.core.pipeline.policies import RetryPolicy

    class BoundedRetry(RetryPolicy[Any, Any]):
        """Honours a throttled read's Retry-After up to a few seconds, not minutes."""

        def get_retry_after(self, response: Any) -> float | None:
            after = super().get_retry_after(response)
            return None if after is None else min(after, ARM_RETRY_AFTER_MAX)

    return BoundedRetry(
        retry_total=ARM_RETRIES,
        retry_backoff_max=ARM_RETRY_AFTER_MAX,
        timeout=ARM_CONNECT_SECONDS + ARM_READ_SECONDS,
    )


def arm_options() -> dict[str, Any]:
    """The azure-core options of the ARM client: every call bounded well under the lease."""
    return {
        "connection_timeout": ARM_CONNECT_SECONDS,
        "read_timeout": ARM_READ_SECONDS,
        "retry_policy": _retry_policy(),
    }


def assignment_name(grant_id: str, scope: str) -> str:
    """The GUID name of a grant's assignment on one scope: every delivery computes the same."""
    return str(uuid.uuid5(_NAMESPACE, f"{grant_id}\0{scope.lower()}"))


def _names(assignment: Any, grant_id: str) -> bool:
    """Whether an assignment bears `grant_id`: its name (the one the grant gave it) or its
    description."""
    named = assignment_name(grant_id, str(assignment.scope).lstrip("/"))
    return str(assignment.name).lower() == named or grant_id in str(assignment.description or "")


def _remove_name(grant_id: str, scope: str) -> str:
    """The GUID name of the AdminRemove request that revokes a PIM grant on `/scope`."""
    return str(uuid.uuid5(_NAMESPACE, f"remove\0{grant_id}\0{scope.lower()}"))


def role_definition_id(subscription_id: str, role: str) -> str:
    return (
        f"/subscriptions/{subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{role}"
    )


def _arm_glob(pattern: str, action: str) -> bool:
    return fnmatch.fnmatchcase(action, pattern.lower().replace("[", "[[]"))


def writes_access(actions: list[str]) -> list[str]:
    """The actions of a role that could hand out access (empty: none can)."""
    return [a for a in actions if any(_arm_glob(a.lower(), w) for w in ACCESS_WRITING_ACTIONS)]


class Connection(Settings):
    subscription_id: str = Field(pattern=f"^{GUID}$")
    scopes: list[str] = Field(
        min_length=1,
        description="the scopes where the module gives the connector its custom role (no "
        "leading slash); every permission's resources lie at or under one of them",
    )
    mode: Literal["assignment", "pim"] = Field(
        default="assignment",
        description="assignment: plain role assignment, ended by the connector; pim: a PIM "
        "schedule request with an expiration, ended by Azure (Entra ID P2)",
    )
    allowed_principal_ids: list[str] = Field(
        min_length=1,
        description="object ids a grant may go to, or ['*'] for any principal of the tenant",
    )
    arm_endpoint: str = Field(
        default="https://management.azure.com",
        pattern=r"^https://[a-z0-9.-]+(:\d{1,5})?$",
        description="Azure Resource Manager (another for sovereign clouds)",
    )

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, scopes: list[str]) -> list[str]:
        for scope in scopes:
            if not SCOPE.match(scope):
                raise ValueError(
                    f"{scope!r} is not a subscription, resource group or resource scope"
                )
        return scopes

    @field_validator("allowed_principal_ids")
    @classmethod
    def _principals(cls, ids: list[str]) -> list[str]:
        for item in ids:
            if item != "*" and not _GUID.match(item):
                raise ValueError(f"{item!r} is not an object id (lower-case GUID) or '*'")
        return ids


class Permission(PermissionSettings):
    role_definition_id: str = Field(
        pattern=f"^{GUID}$", description="the role definition's GUID (built-in or custom)"
    )
    principal_type: Literal["User", "Group", "ServicePrincipal"] = "User"
    privileged: bool = Field(
        default=False,
        description="this role hands out access (Owner, User Access Administrator, RBAC "
        "Administrator, or a role that writes role assignments): reviewed as such",
    )

    @field_validator("resources")
    @classmethod
    def _resources(cls, resources: list[str]) -> list[str]:
        for resource in resources:
            if not SCOPE.match(resource):
                raise ValueError(
                    f"{resource!r} is not a scope: subscriptions/ID[/resourceGroups/NAME"
                    "[/providers/NAMESPACE/TYPE/NAME]]"
                )
        return resources

    @model_validator(mode="after")
    def _privileged(self) -> Permission:
        role = self.role_definition_id
        if role in PRIVILEGED_ROLES and not self.privileged:
            raise ValueError(
                f"role {PRIVILEGED_ROLES[role]} hands out access: mark the permission "
                "`privileged: true` if that is intended"
            )
        return self


def _under(scope: str, parent: str) -> bool:
    return scope.lower() == parent.lower() or scope.lower().startswith(parent.lower() + "/")


def _principal_id(connection: Connection, spec: GrantSpec) -> str:
    object_id = spec.identity.object_id
    if object_id is None:
        raise Refused("identity.object_id", "an Azure RBAC grant needs the identity's object id")
    allowed = connection.allowed_principal_ids
    if "*" not in allowed and object_id not in allowed:
        raise Refused("identity.object_id", "not among the catalog's allowed principals")
    return object_id


def _overlaps(one: str, other: str) -> bool:
    """Whether either scope is, holds or lies in the other."""
    a, b = one.strip("/"), other.strip("/")
    return _under(a, b) or _under(b, a)


def _check_scopes(connection: Connection, resources: tuple[str, ...] | list[str]) -> None:
    for index, resource in enumerate(resources):
        match = SCOPE.match(resource)
        if match is None or match.group("sub") != connection.subscription_id:
            raise Refused(f"resources[{index}]", "not a scope in the connection's subscription")
        if not any(_under(resource, scope) for scope in connection.scopes):
            raise Refused(f"resources[{index}]", "not under any of the connection's scopes")
        if _own_scope and _overlaps(resource, _own_scope):
            # The connector's storage account (queues, ledger, package) and app live there: even
            # a role ARM does not count as privileged (Storage Account Contributor) would let
            # the grantee turn shared keys on, delete tombstones or replace the package.
            raise Refused(
                f"resources[{index}]",
                "holds or lies in the connector's own resource group; it is never granted on",
            )


class AzureRbacTemplate:
    kind: ClassVar[str] = KIND
    Connection: ClassVar[type[Settings]] = Connection
    Permission: ClassVar[type[PermissionSettings]] = Permission
    uses_label_key: ClassVar[bool] = True

    def needs_secret_delivery(self, permission: PermissionSettings) -> bool:
        return False

    def check(self, connection: Settings, permission: PermissionSettings, spec: GrantSpec) -> None:
        assert isinstance(connection, Connection)
        _principal_id(connection, spec)
        _check_scopes(connection, spec.resources)

    def plan(self, connection: Settings, spec: GrantSpec) -> list[str]:
        assert isinstance(connection, Connection)
        permission = spec.permission
        assert isinstance(permission, Permission)
        principal = _principal_id(connection, spec)
        _check_scopes(connection, spec.resources)
        role = role_definition_id(connection.subscription_id, permission.role_definition_id)
        until = spec.expires_at.astimezone(UTC).isoformat()
        if connection.mode == "pim":
            return [
                f"PIM AdminAssign {role} to {permission.principal_type} {principal} on "
                f"/{scope}, expiring {until} (Azure ends it)"
                for scope in spec.resources
            ]
        return [
            f"/{scope}/providers/Microsoft.Authorization/roleAssignments/"
            f"{assignment_name(spec.grant_id, scope)}: assign {role} to "
            f"{permission.principal_type} {principal}, revoked by the connector at {until}"
            for scope in spec.resources
        ]

    def open(
        self,
        integration: str,
        connection: Settings,
        secret: Secret | None,
        label_key: LabelKey | None = None,
    ) -> AzureRbacSession:
        assert isinstance(connection, Connection)
        return AzureRbacSession(integration, connection, labels.required(label_key))


def _code(exc: Exception) -> str:
    error = getattr(exc, "error", None)
    return str(getattr(error, "code", "") or "")


class AzureRbacSession:
    """An ARM authorization client for one batch, acting as the app's identity (no secret)."""

    def __init__(self, integration: str, connection: Connection, key: LabelKey) -> None:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
        from azure.mgmt.authorization import AuthorizationManagementClient

        credential = _credential
        # Made here (no runtime handed one in, as under `jitc serve`): closed with the session.
        self._own_credential: Any = None
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = self._own_credential = DefaultAzureCredential(**_transport)
        self.integration = integration
        self.settings = connection
        self.key = key
        self.HttpResponseError = HttpResponseError
        self.NotFound = ResourceNotFoundError
        endpoint = connection.arm_endpoint
        audience = "https://management.azure.com/.default"
        if endpoint != "https://management.azure.com":
            audience = f"{endpoint}/.default"
        self.client = AuthorizationManagementClient(
            credential,
            connection.subscription_id,
            base_url=endpoint,
            credential_scopes=[audience],
            **{**_transport, **arm_options()},
        )
        self.assignments = self.client.role_assignments  # api-version 2022-04-01
        self.requests = self.client.role_assignment_schedule_requests  # 2020-10-01
        self.ledger: Ledger | None = None
        if connection.mode == "assignment":
            if _ledger_url is None:
                self.client.close()  # type: ignore[no-untyped-call]
                # Without tombstones and locks a late grant is made again and concurrent
                # revokes undo each other: refuse to act rather than act unsafely.
                raise TargetError(
                    "assignment mode needs its ledger container (app setting "
                    "JITC_RBAC_LEDGER_URL); see docs/azure.md"
                )
            from azure.storage.blob import ContainerClient

            self._container = ContainerClient.from_container_url(
                _ledger_url, credential=credential, **_transport
            )
            self.ledger = Ledger(self._container, key, integration)

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]
        if self.ledger is not None:
            self._container.close()
        if self._own_credential is not None:
            self._own_credential.close()

    # -- labels ----------------------------------------------------------------------------

    def _bound(self, assignment: Any) -> str:
        """What a label is bound to: the assignment's id, principal and role."""
        return "\0".join(
            [
                str(assignment.id).lower(),
                str(assignment.principal_id).lower(),
                str(assignment.role_definition_id).lower(),
            ]
        )

    def _label(self, assignment: Any) -> dict[str, Any] | None:
        label = verify_label(self.key, KIND, self._bound(assignment), assignment.description)
        if label is None or label.get("integration") != self.integration:
            return None
        if not isinstance(label.get("grants"), dict):
            return None
        return label

    def _describe(
        self, assignment_id: str, principal: str, role: str, label: dict[str, Any]
    ) -> str:
        bound = "\0".join([assignment_id.lower(), principal.lower(), role.lower()])
        return sign_label(self.key, KIND, bound, label)

    # -- reads -----------------------------------------------------------------------------

    def _get(self, scope: str, name: str) -> Any | None:
        try:
            return self.assignments.get(f"/{scope}", name)
        except self.NotFound:
            return None

    def _listed(self) -> list[tuple[Any, dict[str, Any] | None]]:
        """Every assignment at or under the connection's scopes, with our label, or None for
        one that carries none that verifies."""
        found: dict[str, tuple[Any, dict[str, Any] | None]] = {}
        for scope in self.settings.scopes:
            for assignment in self.assignments.list_for_scope(f"/{scope}"):
                if str(assignment.id).lower() in found:
                    continue
                if not any(
                    _under(str(assignment.scope).lstrip("/"), s) for s in self.settings.scopes
                ):
                    continue
                found[str(assignment.id).lower()] = (assignment, self._label(assignment))
        return list(found.values())

    def _ours(self) -> list[tuple[Any, dict[str, Any]]]:
        """Every assignment at or under the connection's scopes that carries our label."""
        return [(assignment, label) for assignment, label in self._listed() if label is not None]

    def _holding(self, principal: str, role: str, scope: str) -> Any | None:
        """The assignment of `role` to `principal` exactly at `scope`, whoever made it."""
        for assignment in self.assignments.list_for_scope(
            f"/{scope}", filter=f"principalId eq '{principal}'"
        ):
            if (
                str(assignment.scope).lower() == f"/{scope}".lower()
                and str(assignment.role_definition_id).lower() == role.lower()
            ):
                return assignment
        return None

    # -- grant -----------------------------------------------------------------------------

    def _check_role(self, permission: Permission, scope: str) -> None:
        """A custom role may write access under another name: read it at grant time."""
        if permission.privileged:
            return
        definition = self.client.role_definitions.get(f"/{scope}", permission.role_definition_id)
        actions = [a for p in definition.permissions or [] for a in (p.actions or [])]
        reasons = writes_access(actions)
        if reasons:
            raise Refused(
                "permission",
                f"role {definition.role_name} can hand out access ({', '.join(reasons)}); "
                "mark the permission privileged if that is intended",
            )

    def grant(self, spec: GrantSpec) -> GrantResult:
        permission = spec.permission
        assert isinstance(permission, Permission)
        principal = _principal_id(self.settings, spec)
        _check_scopes(self.settings, spec.resources)
        role = role_definition_id(self.settings.subscription_id, permission.role_definition_id)
        entry = {
            "request_id": spec.request_id,
            "permission": spec.permission_name,
            "digest": spec.request_digest,
            "expires_at": spec.expires_at.astimezone(UTC).isoformat(),
        }
        reissued = True
        recorded: datetime | None = None
        if self.ledger is not None:
            self._unless_revoked(spec.grant_id)
        for scope in spec.resources:
            self._check_role(permission, scope)
            if self.settings.mode == "pim":
                made, at = self._grant_pim(spec, scope, principal, role, entry)
            else:
                made, at = self._grant_assignment(spec, scope, principal, role, entry, permission)
            reissued = reissued and not made
            recorded = at if recorded is None else min(recorded, at)
        if self.ledger is not None:
            # A revoke that wrote its tombstone after the check above and listed the scope
            # before this grant's assignment existed found nothing to remove: looking again
            # after the write, one of the two always sees the other.
            self._unless_revoked(spec.grant_id)
        mode = (
            "PIM schedule (Azure ends it at expiry)"
            if self.settings.mode == "pim"
            else ("role assignment (the connector ends it at expiry)")
        )
        return GrantResult(
            principal=f"{permission.principal_type}/{principal}",
            reissued=reissued,
            expires_at=recorded,
            note=f"{mode}. {NOTE}.",
        )

    def _unless_revoked(self, grant_id: str) -> None:
        """Refuse a grant whose tombstone exists, first removing what a delivery of it made
        (one that crashed before it could look again, or one made while it was revoked)."""
        assert self.ledger is not None
        if not self.ledger.tombstoned(grant_id):
            return
        residual = self._remove(grant_id).residual
        if residual:
            raise TargetError(f"this grant was revoked and {residual[0]}; retried")
        raise Refused("request_id", "this grant was already revoked; it will not be made again")

    def _entry_of(self, label: dict[str, Any], spec: GrantSpec) -> dict[str, Any] | None:
        entry = label["grants"].get(spec.grant_id)
        if entry is None:
            return None
        if entry.get("state") == "tombstone":
            raise Refused("request_id", "this grant was already revoked; it will not be made again")
        if entry.get("digest") != spec.request_digest:
            raise Refused("request_id", "this request id was already used for another request")
        return dict(entry)

    def _grant_assignment(
        self,
        spec: GrantSpec,
        scope: str,
        principal: str,
        role: str,
        entry: dict[str, Any],
        permission: Permission,
    ) -> tuple[bool, datetime]:
        assert self.ledger is not None
        with self.ledger.lock(scope, principal, role) as held:
            return self._grant_locked(spec, scope, principal, role, entry, permission, held)

    def _grant_locked(
        self,
        spec: GrantSpec,
        scope: str,
        principal: str,
        role: str,
        entry: dict[str, Any],
        permission: Permission,
        held: Held,
    ) -> tuple[bool, datetime]:
        name = assignment_name(spec.grant_id, scope)
        existing = self._get(scope, name) or self._holding(principal, role, scope)
        if existing is not None:
            label = self._label(existing)
            if label is None:
                raise Refused(
                    "identity.object_id",
                    f"role assignment {existing.name} on /{scope} was not created by this "
                    "connector; it is left alone",
                )
            if (
                str(existing.principal_id) != principal
                or str(existing.role_definition_id).lower() != role.lower()
            ):
                raise TargetError(f"role assignment {name} holds another principal or role")
            known = self._entry_of(label, spec)
            if known is not None:
                return False, datetime.fromisoformat(known["expires_at"])
            # Another grant of the same access: this one joins its assignment (leaving out any
            # grant revoked meanwhile, which a write that outlasted its lease may have put back).
            grants = self._live(label["grants"])
            if sum(1 for e in grants.values() if e.get("state") != "tombstone") >= MAX_SHARED:
                raise Refused("identity.object_id", "too many grants of this role on this scope")
            grants[spec.grant_id] = entry
            text = self._text(
                existing.scope, existing.name, principal, role, permission.principal_type, grants
            )
            if len(text) > DESCRIPTION_MAX:
                raise Refused("identity.object_id", "too many grants of this role on this scope")
            where, name = str(existing.scope), str(existing.name)
        else:
            where, grants = f"/{scope}", {spec.grant_id: entry}
        held.renew()
        try:
            self._write(where, name, principal, role, permission, grants)
        except BaseException:
            self._settle(held, where, name, principal, role)
            raise
        left = self._settle(held, where, name, principal, role)
        if left is not None and spec.grant_id not in left:
            # Another holder's write, made while ours was on its way, landed last: retried.
            raise TargetError(f"role assignment {name} on {where} lost this grant; retried")
        return True, spec.expires_at

    def _live(self, grants: dict[str, Any]) -> dict[str, Any]:
        """The entries of `grants` whose grant was not revoked (no tombstone in the ledger)."""
        assert self.ledger is not None
        return {
            g: e
            for g, e in grants.items()
            if e.get("state") != "tombstone" and not self.ledger.tombstoned(g)
        }

    def _settle(
        self, held: Held, scope: str, name: str, principal: str, role: str
    ) -> dict[str, Any] | None:
        """After a write of assignment `name`: None if the lease outlived it (nobody else wrote
        meanwhile). Otherwise the write may have landed after another holder's and put back a
        grant that holder removed: under a new lock, read the assignment again and remove every
        grant with a tombstone, whichever revoke it was. Returns the grants left ({}: none)."""
        assert self.ledger is not None
        if held.kept():
            return None
        with self.ledger.lock(scope, principal, role) as again:
            assignment = self._get(scope.lstrip("/"), name)
            current = (self._label(assignment) if assignment is not None else None) or {}
            grants = current.get("grants", {})
            keep = self._live(grants)
            if keep == grants:
                return keep
            again.renew()
            if keep:
                kind = str(current.get("principal_type", "User"))
                self._write(scope, name, principal, role, None, keep, kind)
            else:
                with contextlib.suppress(self.NotFound):
                    self.assignments.delete(scope, name, **WRITE_ONCE)
            if not again.kept():
                raise TargetError(f"lost the lock on {again.what} twice; the operation is retried")
            return keep

    def _text(
        self, scope: str, name: str, principal: str, role: str, kind: str, grants: dict[str, Any]
    ) -> str:
        """The description (the signed label) of assignment `name` on `scope` holding `grants`."""
        assignment_id = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"
        label = {"integration": self.integration, "principal_type": kind, "grants": grants}
        return self._describe(assignment_id, principal, role, label)

    def _write(
        self,
        scope: str,
        name: str,
        principal: str,
        role: str,
        permission: Permission | None,
        grants: dict[str, Any],
        principal_type: str | None = None,
    ) -> None:
        kind = principal_type or (permission.principal_type if permission else "User")
        from azure.mgmt.authorization.v2022_04_01.models import RoleAssignmentCreateParameters

        parameters = RoleAssignmentCreateParameters(
            role_definition_id=role,
            principal_id=principal,
            principal_type=kind,
            description=self._text(scope, name, principal, role, kind, grants),
        )
        try:
            self.assignments.create(scope, name, parameters, **WRITE_ONCE)
        except self.HttpResponseError as exc:
            # The object id is a principal of another type than the permission's: no delivery
            # can succeed, so it is a refusal, not a failure retried into the poison queue.
            if _code(exc) != "UnmatchedPrincipalType":
                raise
            raise Refused(
                "identity.object_id", f"not a {kind} (the permission's principal_type)"
            ) from None
        made = self._get(scope.lstrip("/"), name)  # read back: what ARM holds now
        if made is None or self._label(made) is None:
            raise TargetError(f"role assignment {name} on {scope} did not read back as written")

    def _pim_label(self, request: Any) -> dict[str, Any] | None:
        if request is None or request.request_type != "AdminAssign":
            return None
        label = verify_label(self.key, KIND, self._bound(request), request.justification)
        if label is None or label.get("integration") != self.integration:
            return None
        return label if isinstance(label.get("grants"), dict) else None

    def _grant_pim(
        self, spec: GrantSpec, scope: str, principal: str, role: str, entry: dict[str, Any]
    ) -> tuple[bool, datetime]:
        from azure.mgmt.authorization.v2020_10_01.models import (
            RoleAssignmentScheduleRequest,
            RoleAssignmentScheduleRequestPropertiesScheduleInfo,
            RoleAssignmentScheduleRequestPropertiesScheduleInfoExpiration,
        )

        name = assignment_name(spec.grant_id, scope)
        try:
            # PIM keeps every request: the AdminRemove of a revoke is this grant's tombstone.
            self.requests.get(f"/{scope}", _remove_name(spec.grant_id, f"/{scope}"))
            raise Refused("request_id", "this grant was already revoked; it will not be made again")
        except self.NotFound:
            pass
        try:
            existing = self.requests.get(f"/{scope}", name)
        except self.NotFound:
            existing = None
        if existing is not None:
            label = self._pim_label(existing)
            if label is None:
                raise Refused(
                    "identity.object_id",
                    f"PIM request {name} on /{scope} was not created by this connector; it is "
                    "left alone",
                )
            known = self._entry_of(label, spec)
            if known is None:
                raise TargetError(f"PIM request {name} holds another grant")
            return False, datetime.fromisoformat(known["expires_at"])
        request_id = (
            f"/{scope}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{name}"
        )
        label = {"integration": self.integration, "grants": {spec.grant_id: entry}}
        bound = "\0".join([request_id.lower(), principal.lower(), role.lower()])
        request = RoleAssignmentScheduleRequest(
            role_definition_id=role,
            principal_id=principal,
            request_type="AdminAssign",
            justification=sign_label(self.key, KIND, bound, label),
            schedule_info=RoleAssignmentScheduleRequestPropertiesScheduleInfo(
                start_date_time=utcnow().replace(microsecond=0),
                expiration=RoleAssignmentScheduleRequestPropertiesScheduleInfoExpiration(
                    type="AfterDateTime", end_date_time=spec.expires_at
                ),
            ),
        )
        try:
            self.requests.create(f"/{scope}", name, request)
        except self.HttpResponseError as exc:
            if _code(exc) != "RoleAssignmentExists":
                raise
            raise Refused(
                "identity.object_id",
                f"the principal already holds this role on /{scope} through an assignment not "
                "created by this connector (PIM cannot share it); it is left alone",
            ) from None
        return True, spec.expires_at

    def _pim_ours(self) -> list[tuple[Any, dict[str, Any]]]:
        found: dict[str, tuple[Any, dict[str, Any]]] = {}
        for scope in self.settings.scopes:
            for request in self.requests.list_for_scope(f"/{scope}"):
                label = self._pim_label(request)
                if label is not None and str(request.id).lower() not in found:
                    found[str(request.id).lower()] = (request, label)
        return list(found.values())

    def _revoke_pim(self, grant_id: str) -> RevokeResult:
        from azure.mgmt.authorization.v2020_10_01.models import RoleAssignmentScheduleRequest

        result = RevokeResult(found=False)
        for request, label in self._pim_ours():
            entry = label["grants"].get(grant_id)
            if entry is None:
                continue
            scope = str(request.scope)
            remove = _remove_name(grant_id, scope)
            result.principal = f"{label.get('principal_type', 'User')}/{request.principal_id}"
            result.expires_at = datetime.fromisoformat(entry["expires_at"])
            if utcnow() >= result.expires_at:
                # Azure ended this schedule at its expiration. An AdminRemove acts on whatever
                # active assignment of the role the principal holds there now: one made since,
                # by someone else, which the connector must leave alone.
                continue
            try:
                self.requests.get(scope, remove)
                continue  # an earlier delivery of this revoke removed it
            except self.NotFound:
                pass
            result.found = True
            try:
                self.requests.create(
                    scope,
                    remove,
                    RoleAssignmentScheduleRequest(
                        role_definition_id=str(request.role_definition_id),
                        principal_id=str(request.principal_id),
                        request_type="AdminRemove",
                        justification=f"jit-connector revoke {grant_id}",
                    ),
                )
            except self.HttpResponseError as exc:
                # Azure ended it already (the expiration): nothing left to remove.
                if _code(exc) != "RoleAssignmentDoesNotExist":
                    raise
            role = str(request.role_definition_id)
            if self._holding(str(request.principal_id), role, scope.lstrip("/")) is not None:
                result.residual.append(f"the PIM assignment of {grant_id} on {scope} still exists")
        result.verified = not result.residual
        return result

    # -- revoke ----------------------------------------------------------------------------

    def revoke(self, grant_id: str, tombstone_until: datetime) -> RevokeResult:
        if self.settings.mode == "pim":
            return self._revoke_pim(grant_id)
        assert self.ledger is not None
        # The tombstone first: a crash after it leaves an entry that this revoke's retry, a
        # later delivery of the grant (which removes it before refusing) or the sweep (which
        # takes a tombstoned entry as due) removes; a crash before it leaves nothing done.
        self.ledger.bury(grant_id, tombstone_until)
        return self._remove(grant_id)

    def _remove(self, grant_id: str) -> RevokeResult:
        """Take `grant_id` out of every assignment holding it, each under its lock, deleting an
        assignment when no grant is left in it."""
        assert self.ledger is not None
        result = RevokeResult(found=False)
        everything = self._listed()
        # One under this grant's name, or whose description names it, that does not verify
        # (edited or forged): never touched, named in the outcome so that someone looks.
        alone = [
            f"role assignment {assignment.name} on {assignment.scope} names {grant_id} but does "
            "not verify as the connector's (edited or forged): left alone"
            for assignment, label in everything
            if label is None and _names(assignment, grant_id)
        ]
        for listed, label in [(a, found) for a, found in everything if found is not None]:
            entry = label["grants"].get(grant_id)
            if entry is None or entry.get("state") == "tombstone":
                continue
            result.found = True
            result.principal = f"{label.get('principal_type', 'User')}/{listed.principal_id}"
            result.expires_at = datetime.fromisoformat(entry["expires_at"])
            scope, name = str(listed.scope), str(listed.name)
            principal, role = str(listed.principal_id), str(listed.role_definition_id)
            with self.ledger.lock(scope, principal, role) as held:
                # Read again under the lock: the listing may predate another writer's change.
                assignment = self._get(scope.lstrip("/"), name)
                current = (self._label(assignment) if assignment is not None else None) or {}
                grants = current.get("grants", {})
                if grant_id not in grants:
                    continue  # removed meanwhile (another delivery of this revoke)
                # Every revoked grant goes, not only this one: one a stale write put back too.
                rest = {g: e for g, e in self._live(grants).items() if g != grant_id}
                held.renew()
                try:
                    if rest:
                        self._write(scope, name, principal, role, None, rest,
                                    str(current.get("principal_type", "User")))  # fmt: skip
                    else:
                        with contextlib.suppress(self.NotFound):
                            self.assignments.delete(scope, name, **WRITE_ONCE)
                except BaseException:
                    self._settle(held, scope, name, principal, role)
                    raise
                self._settle(held, scope, name, principal, role)
                if rest:
                    continue
                if self._get(scope.lstrip("/"), name) is not None:
                    result.residual.append(f"role assignment {name} on {scope} still exists")
        result.verified = not result.residual
        result.residual = [*alone, *result.residual]
        return result

    def forget(self, grant_id: str, principal: str | None = None) -> None:
        """Delete the grant's tombstone (the sweep, once no delivery of it can succeed)."""
        if self.ledger is not None:
            self.ledger.forget(grant_id)

    # -- sweep and inventory ---------------------------------------------------------------

    def active_grants(self) -> list[Grant]:
        grants: list[Grant] = []
        if self.settings.mode == "pim":
            return self._pim_active()
        assert self.ledger is not None
        tombstones = dict(self.ledger.tombstones())
        for grant_id, until in tombstones.items():
            grant = grant_from_label(
                KIND,
                "",
                {
                    "grant_id": grant_id,
                    "integration": self.integration,
                    "expires_at": until.isoformat(),
                    "state": "tombstone",
                },
            )
            if grant is not None:
                grants.append(grant)
        for assignment, label in self._ours():
            for grant_id, entry in label["grants"].items():
                if entry.get("state") == "tombstone":
                    continue
                grant = grant_from_label(
                    KIND,
                    f"{label.get('principal_type', 'User')}/{assignment.principal_id}",
                    {
                        "grant_id": grant_id,
                        "request_id": entry.get("request_id", ""),
                        "integration": self.integration,
                        "permission": entry.get("permission", ""),
                        "expires_at": entry.get("expires_at"),
                        "scope": str(assignment.scope),
                        # Revoked but still listed (a revoke that stopped after its tombstone):
                        # the sweep removes it now, not at its expiry.
                        "state": "revoking" if grant_id in tombstones else "active",
                    },
                )
                if grant is not None:
                    grants.append(grant)
        return grants

    def _pim_active(self) -> list[Grant]:
        grants: list[Grant] = []
        for request, label in self._pim_ours():
            scope = str(request.scope)
            role = str(request.role_definition_id)
            if self._holding(str(request.principal_id), role, scope.lstrip("/")) is None:
                continue  # ended by Azure at its expiration, or removed
            for grant_id, entry in label["grants"].items():
                if utcnow() >= datetime.fromisoformat(entry["expires_at"]):
                    continue  # ended by Azure: what the principal holds now is someone else's
                grant = grant_from_label(
                    KIND,
                    f"{label.get('principal_type', 'User')}/{request.principal_id}",
                    {
                        "grant_id": grant_id,
                        "request_id": entry.get("request_id", ""),
                        "integration": self.integration,
                        "permission": entry.get("permission", ""),
                        "expires_at": entry.get("expires_at"),
                        "scope": scope,
                    },
                )
                if grant is not None:
                    grants.append(grant)
        return grants

    def inventory_records(self) -> Iterator[InventoryRecord]:
        """Per managed scope: each role assignment there (its role definition, on its scope, for
        its principal's object id); never a description, which holds the connector's labels."""
        for scope in sorted(self.settings.scopes):
            yield InventoryRecord("scope", scope)
            found = sorted(
                (str(a.scope), str(a.role_definition_id), str(a.principal_id), str(a.name))
                for a in self.assignments.list_for_scope(f"/{scope}")
            )
            for where, role, principal, name in found:
                yield InventoryRecord("role_assignment", role, where, id=f"{principal}/{name}")

    def inventory(self) -> dict[str, list[str]]:
        assignments: set[str] = set()
        for scope in self.settings.scopes:
            for assignment in self.assignments.list_for_scope(f"/{scope}"):
                assignments.add(
                    f"{assignment.scope} {assignment.principal_id} {assignment.role_definition_id}"
                )
        return {"scopes": sorted(self.settings.scopes), "role_assignments": sorted(assignments)}
