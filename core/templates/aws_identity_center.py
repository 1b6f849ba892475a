"""AWS IAM Identity Center: an account assignment of a permission set to the identity's user.

The user is found in the identity store by email. The permission set's own tags are the ledger:
`jitc:<grant>:<account>` = `active <expires_at> <user id> <integration>` for each assignment a
grant made (written *before* the assignment, so nothing exists unlabelled). A revoke removes the
assignment first and then rewrites the *same* tags to `tombstone ...`: it never needs room for a
new tag, so a permission set at AWS's 50-tag limit (shared with the company's own tags) can
always be revoked. Only a revoke that arrives before its grant writes a tag of its own,
`jitc:<grant>:x`; if there is no room it fails and is retried, with nothing to remove meanwhile
(the grant behind it in the queue needs a tag too). AWS's 50 tags bound the concurrent
(grant, account) pairs per permission set; a grant beyond that fails before assigning anything.

The ledger stays on the target (no second store to drift from the assignments); the cost is
those 50 tags, which docs/aws.md discusses.

The connector reads, tags and assigns only the permission sets the catalog names (the policy
covers exactly those); it never removes an assignment it did not make, nor one another live
grant needs: a revoke that removed an assignment looks again and restores it if a concurrent
grant of the same user and account has labelled it meanwhile.

Identity Center cannot make an assignment expire by itself: the expiry is the scheduled revoke
and the sweep. Role credentials already issued through the portal last until the permission
set's `SessionDuration` (docs/aws.md).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from pydantic import Field, field_validator

from jitc.errors import Refused, TargetError
from jitc.models import Grant, utcnow
from jitc.secrets import Secret
from jitc.templates.base import (
    GrantResult,
    GrantSpec,
    InventoryRecord,
    PermissionSettings,
    RevokeResult,
    Settings,
)

TAG_PREFIX = "jitc:"
# Well inside the worker's timeout: an assignment still in progress then is retried, not waited
# out (a timed-out worker would lose the whole batch's outcomes).
STATUS_WAIT_SECONDS = 20.0


class Connection(Settings):
    instance_arn: str = Field(
        pattern=r"^arn:aws[a-z-]*:sso:::instance/(sso)?ins-[a-zA-Z0-9-.]{16}$"
    )
    identity_store_id: str = Field(pattern=r"^d-[0-9a-f]{10}$|^[0-9a-f-]{36}$")
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    role_arn: str | None = Field(
        default=None,
        pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$",
        description="act in the Identity Center account through this role (member-account module)",
    )
    external_id: str | None = Field(
        default=None, pattern=r"^[\w+=,.@:/-]+$", min_length=2, max_length=1224
    )
    # Filled from the catalog's permissions (`AwsIdentityCenterTemplate.scope`), never read from
    # the file: the only permission sets the connector reads, tags or assigns.
    permission_set_arns: tuple[str, ...] = Field(default=(), exclude=True)


class Permission(PermissionSettings):
    permission_set_arn: str = Field(
        pattern=r"^arn:aws[a-z-]*:sso:::permissionSet/(sso)?ins-[a-zA-Z0-9-.]{16}"
        r"/ps-[a-zA-Z0-9-./]{16}$"
    )

    @field_validator("resources")
    @classmethod
    def _accounts(cls, resources: list[str]) -> list[str]:
        for resource in resources:
            if not re.fullmatch(r"\d{12}", resource):
                raise ValueError(f"resource {resource!r} is not an AWS account id (12 digits)")
        return resources


@dataclass(frozen=True)
class Entry:
    """One tag of the ledger, parsed."""

    grant_id: str
    account: str  # "x" for a tombstone
    state: str
    expires_at: datetime
    user_id: str
    integration: str

    @property
    def key(self) -> str:
        return f"{TAG_PREFIX}{self.grant_id}:{self.account}"

    @property
    def value(self) -> str:
        return f"{self.state} {self.expires_at.isoformat()} {self.user_id} {self.integration}"

    @classmethod
    def parse(cls, key: str, value: str) -> Entry | None:
        match = re.fullmatch(r"jitc:(g[a-z2-7]{24}):(\d{12}|x)", key)
        parts = value.split(" ")
        if match is None or len(parts) != 4:
            return None
        try:
            expires_at = datetime.fromisoformat(parts[1])
        except ValueError:
            return None
        return cls(match[1], match[2], parts[0], expires_at, parts[2], parts[3])


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class AwsIdentityCenterTemplate:
    kind: ClassVar[str] = "aws_identity_center"
    Connection: ClassVar[type[Settings]] = Connection
    Permission: ClassVar[type[PermissionSettings]] = Permission

    def needs_secret_delivery(self, permission: PermissionSettings) -> bool:
        return False

    def scope(self, connection: Settings, permissions: dict[str, PermissionSettings]) -> Settings:
        """The connection bound to the catalog's permission sets, and to those only."""
        arns = sorted(
            {p.permission_set_arn for p in permissions.values() if isinstance(p, Permission)}
        )
        return connection.model_copy(update={"permission_set_arns": tuple(arns)})

    def check(self, connection: Settings, permission: PermissionSettings, spec: GrantSpec) -> None:
        return None

    def plan(self, connection: Settings, spec: GrantSpec) -> list[str]:
        permission = spec.permission
        assert isinstance(permission, Permission)
        steps = [f"find the identity store user with email {spec.identity.email}"]
        steps += [
            f"assign {permission.permission_set_arn} to that user on account {account} "
            f"until {spec.expires_at.isoformat()}"
            for account in spec.resources
        ]
        return steps

    def open(
        self, integration: str, connection: Settings, secret: Secret | None
    ) -> AwsIdentityCenterSession:
        assert isinstance(connection, Connection)
        return AwsIdentityCenterSession(integration, connection)


class AwsIdentityCenterSession:
    def __init__(self, integration: str, connection: Connection) -> None:
        from botocore.exceptions import ClientError

        from jitc.templates import aws_session

        self.integration = integration
        self.settings = connection
        self.ClientError = ClientError
        self._deadline = time.monotonic() + STATUS_WAIT_SECONDS
        if connection.role_arn is not None:
            role, external = connection.role_arn, connection.external_id
            self.sso = aws_session.assumed_client("sso-admin", connection.region, role, external)
            self.store = aws_session.assumed_client(
                "identitystore", connection.region, role, external
            )
        else:
            self.sso = aws_session.client("sso-admin", connection.region)
            self.store = aws_session.client("identitystore", connection.region)

    def close(self) -> None:
        """The clients are shared across batches (aws_session): nothing to close."""

    # -- the ledger ------------------------------------------------------------------------

    def _entries(self, permission_set: str) -> list[Entry]:
        entries: list[Entry] = []
        params = {"InstanceArn": self.settings.instance_arn, "ResourceArn": permission_set}
        while True:
            page = self.sso.list_tags_for_resource(**params)
            for tag in page.get("Tags", []):
                entry = Entry.parse(tag["Key"], tag["Value"])
                if entry is not None and entry.integration == self.integration:
                    entries.append(entry)
            if not page.get("NextToken"):
                return entries
            params["NextToken"] = page["NextToken"]

    def _permission_sets(self) -> list[str]:
        """The catalog's permission sets: the policy covers these and nothing else."""
        return list(self.settings.permission_set_arns)

    def _ledger_set(self) -> str:
        """Where a revoke of a grant never made leaves its tombstone: one permission set, the
        first ARN in sort order (independent of the catalog's order), not every set."""
        return min(self.settings.permission_set_arns)

    def _find(self, grant_id: str) -> tuple[str, list[Entry]] | None:
        for arn in self._permission_sets():
            found = [e for e in self._entries(arn) if e.grant_id == grant_id]
            if found:
                return arn, found
        return None

    def _tag(self, permission_set: str, entries: list[Entry]) -> None:
        try:
            self.sso.tag_resource(
                InstanceArn=self.settings.instance_arn,
                ResourceArn=permission_set,
                Tags=[{"Key": e.key, "Value": e.value} for e in entries],
            )
        except self.ClientError as exc:
            if _code(exc) in ("ServiceQuotaExceededException", "ValidationException"):
                raise TargetError(
                    "the permission set has no room for more grant labels (50 tags): "
                    "too many concurrent grants of it"
                ) from None
            raise

    def _untag(self, permission_set: str, keys: list[str]) -> None:
        if keys:
            self.sso.untag_resource(
                InstanceArn=self.settings.instance_arn, ResourceArn=permission_set, TagKeys=keys
            )

    # -- AWS calls -------------------------------------------------------------------------

    def _user_id(self, email: str) -> str:
        try:
            answer = self.store.get_user_id(
                IdentityStoreId=self.settings.identity_store_id,
                AlternateIdentifier={
                    "UniqueAttribute": {"AttributePath": "emails.value", "AttributeValue": email}
                },
            )
        except self.ClientError as exc:
            if _code(exc) == "ResourceNotFoundException":
                raise Refused(
                    "identity.email", "no user with this email in the identity store"
                ) from None
            raise
        return str(answer["UserId"])

    def _assigned(self, account: str, permission_set: str, user_id: str) -> bool:
        paginator = self.sso.get_paginator("list_account_assignments")
        for page in paginator.paginate(
            InstanceArn=self.settings.instance_arn,
            AccountId=account,
            PermissionSetArn=permission_set,
        ):
            for item in page.get("AccountAssignments", []):
                if item.get("PrincipalType") == "USER" and item.get("PrincipalId") == user_id:
                    return True
        return False

    def _wait(self, status: dict[str, Any], describe: str, key: str) -> None:
        """Assignments are made asynchronously; wait for the final status, within the one
        budget of the whole grant or revoke (however many accounts it names)."""
        deadline = self._deadline
        while status.get("Status") == "IN_PROGRESS" and time.monotonic() < deadline:
            time.sleep(1.0)
            status = getattr(self.sso, describe)(
                InstanceArn=self.settings.instance_arn, **{key: status["RequestId"]}
            )[key.replace("RequestId", "Status")]
        if status.get("Status") == "FAILED":
            raise TargetError(
                f"Identity Center: {status.get('FailureReason', 'assignment failed')}"
            )
        if status.get("Status") == "IN_PROGRESS":
            raise TargetError("Identity Center: assignment still in progress; will retry")

    def _assignment(self, account: str, permission_set: str, user_id: str) -> dict[str, Any]:
        return {
            "InstanceArn": self.settings.instance_arn,
            "TargetId": account,
            "TargetType": "AWS_ACCOUNT",
            "PermissionSetArn": permission_set,
            "PrincipalType": "USER",
            "PrincipalId": user_id,
        }

    # -- grant -----------------------------------------------------------------------------

    def grant(self, spec: GrantSpec) -> GrantResult:
        self._deadline = time.monotonic() + STATUS_WAIT_SECONDS
        permission = spec.permission
        assert isinstance(permission, Permission)
        arn = permission.permission_set_arn
        entries = self._entries(arn)
        ledger = self._ledger_set()
        stones = entries if arn == ledger else entries + self._entries(ledger)
        if any(e.grant_id == spec.grant_id and e.state == "tombstone" for e in stones):
            raise Refused("request_id", "this grant was already revoked; it will not be made again")
        user_id = self._user_id(spec.identity.email)
        mine = {e.account for e in entries if e.grant_id == spec.grant_id}
        covered = {e.account for e in entries if e.user_id == user_id and e.state == "active"}
        for index, account in enumerate(spec.resources):
            if account not in covered and self._assigned(account, arn, user_id):
                raise Refused(
                    f"resources[{index}]",
                    f"the user already holds this permission set on {account} outside the "
                    "connector; it will not manage (or remove) that assignment",
                )
        self._tag(
            arn,
            [
                Entry(spec.grant_id, a, "active", spec.expires_at, user_id, self.integration)
                for a in spec.resources
                if a not in mine
            ],
        )
        for account in spec.resources:
            if self._assigned(account, arn, user_id):
                continue  # made by an earlier delivery, or by an overlapping grant of ours
            self._assign(account, arn, user_id)
        return GrantResult(principal=f"user/{user_id}", reissued=bool(mine))

    # -- revoke ----------------------------------------------------------------------------

    def revoke(self, grant_id: str, tombstone_until: datetime) -> RevokeResult:
        self._deadline = time.monotonic() + STATUS_WAIT_SECONDS
        found = self._find(grant_id)
        if found is None:
            # Revoke before grant: the permission set a late grant would name is unknown, so
            # its tombstone goes on the ledger set, which every grant reads as well. One tag,
            # not one per permission set of the catalog.
            if tombstone_until > utcnow():
                stone = Entry(grant_id, "x", "tombstone", tombstone_until, "-", self.integration)
                self._tag(self._ledger_set(), [stone])
            return RevokeResult(found=False)
        arn, entries = found
        live = [e for e in entries if e.state == "active"]
        if not live:
            return RevokeResult(found=False)
        expires_at = live[0].expires_at
        user_id = live[0].user_id
        # Access first: nothing below depends on room for a tag, so a full ledger cannot keep
        # an assignment alive.
        for entry in live:
            if entry.account not in self._needed_by_others(arn, grant_id, user_id):
                self._unassign(entry.account, arn, user_id)
        # A grant of the same user and account labelled while we removed it relies on the
        # assignment: put it back (its tag was written before it looked, so we see it now).
        needed = self._needed_by_others(arn, grant_id, user_id)
        residual: list[str] = []
        for entry in live:
            assigned = self._assigned(entry.account, arn, user_id)
            if entry.account in needed and not assigned:
                self._assign(entry.account, arn, user_id)
            elif entry.account not in needed and assigned:
                residual.append(f"assignment on {entry.account} still exists")
        if not residual:
            self._bury(arn, live, max(tombstone_until, expires_at))
        return RevokeResult(
            found=True,
            principal=f"user/{user_id}",
            expires_at=expires_at,
            residual=residual,
            verified=not residual,
        )

    def _needed_by_others(self, permission_set: str, grant_id: str, user_id: str) -> set[str]:
        return {
            e.account
            for e in self._entries(permission_set)
            if e.grant_id != grant_id and e.user_id == user_id and e.state == "active"
        }

    def _unassign(self, account: str, permission_set: str, user_id: str) -> None:
        try:
            answer = self.sso.delete_account_assignment(
                **self._assignment(account, permission_set, user_id)
            )
        except self.ClientError as exc:
            if _code(exc) != "ResourceNotFoundException":
                raise
            return
        self._wait(
            answer["AccountAssignmentDeletionStatus"],
            "describe_account_assignment_deletion_status",
            "AccountAssignmentDeletionRequestId",
        )

    def _assign(self, account: str, permission_set: str, user_id: str) -> None:
        try:
            answer = self.sso.create_account_assignment(
                **self._assignment(account, permission_set, user_id)
            )
        except self.ClientError as exc:
            if _code(exc) != "ConflictException":
                raise
            return
        self._wait(
            answer["AccountAssignmentCreationStatus"],
            "describe_account_assignment_creation_status",
            "AccountAssignmentCreationRequestId",
        )

    def _bury(self, permission_set: str, live: list[Entry], until: datetime) -> None:
        """The grant's own tags become its tombstone: rewritten in place, no new tag needed.
        Then, where there is room, they fold into one `:x` tag to give the others back."""
        stones = [
            Entry(e.grant_id, e.account, "tombstone", until, e.user_id, e.integration) for e in live
        ]
        self._tag(permission_set, stones)
        if len(stones) < 2:
            return
        first = stones[0]
        folded = Entry(first.grant_id, "x", "tombstone", until, first.user_id, first.integration)
        try:
            self._tag(permission_set, [folded])
        except TargetError:
            return  # no room: the per-account tombstones stand
        self._untag(permission_set, [e.key for e in stones])

    def forget(self, grant_id: str) -> None:
        for arn in self._permission_sets():
            keys = [
                e.key
                for e in self._entries(arn)
                if e.grant_id == grant_id and e.state == "tombstone"
            ]
            self._untag(arn, keys)

    # -- sweep and inventory ---------------------------------------------------------------

    def active_grants(self) -> list[Grant]:
        grants: dict[str, Grant] = {}
        for arn in self._permission_sets():
            for entry in self._entries(arn):
                if entry.grant_id in grants and entry.state == "tombstone":
                    continue
                grants[entry.grant_id] = Grant(
                    grant_id=entry.grant_id,
                    request_id=entry.grant_id,
                    integration=self.integration,
                    permission=arn,
                    kind=AwsIdentityCenterTemplate.kind,
                    principal=f"user/{entry.user_id}",
                    identity=entry.user_id,
                    expires_at=entry.expires_at,
                    state="tombstone" if entry.state == "tombstone" else "active",
                    detail={"account": entry.account},
                )
        return list(grants.values())

    def inventory_records(self) -> Iterator[InventoryRecord]:
        """In scope: the catalog's permission sets and the accounts they are provisioned to,
        and the identity store's users and groups (who can be granted). Names, ids and ARNs."""
        instance = self.settings.instance_arn
        for arn in sorted(self.settings.permission_set_arns):
            described = self.sso.describe_permission_set(InstanceArn=instance, PermissionSetArn=arn)
            yield InventoryRecord("permission_set", described["PermissionSet"]["Name"], None, arn)
        accounts: set[str] = set()
        for arn in self.settings.permission_set_arns:
            paginator = self.sso.get_paginator("list_accounts_for_provisioned_permission_set")
            for page in paginator.paginate(InstanceArn=instance, PermissionSetArn=arn):
                accounts.update(page.get("AccountIds", []))
        for account in sorted(accounts):
            yield InventoryRecord("account", account)
        store = self.settings.identity_store_id
        for page in self.store.get_paginator("list_users").paginate(IdentityStoreId=store):
            for user in page.get("Users", []):
                yield InventoryRecord(
                    "user", user.get("UserName", user["UserId"]), id=user["UserId"]
                )
        for page in self.store.get_paginator("list_groups").paginate(IdentityStoreId=store):
            for group in page.get("Groups", []):
                yield InventoryRecord(
                    "group", group.get("DisplayName", group["GroupId"]), id=group["GroupId"]
                )

    def inventory(self) -> dict[str, list[str]]:
        # Run by the operator's CLI with its own credentials: the whole instance, not only the
        # catalog's permission sets.
        instance = self.settings.instance_arn
        sets: list[str] = []
        for page in self.sso.get_paginator("list_permission_sets").paginate(InstanceArn=instance):
            sets += page.get("PermissionSets", [])
        names = [
            self.sso.describe_permission_set(InstanceArn=instance, PermissionSetArn=arn)[
                "PermissionSet"
            ]["Name"]
            for arn in sets
        ]
        accounts: set[str] = set()
        for arn in sets:
            paginator = self.sso.get_paginator("list_accounts_for_provisioned_permission_set")
            for page in paginator.paginate(InstanceArn=instance, PermissionSetArn=arn):
                accounts.update(page.get("AccountIds", []))
        users = [
            user.get("UserName", user["UserId"])
            for page in self.store.get_paginator("list_users").paginate(
                IdentityStoreId=self.settings.identity_store_id
            )
            for user in page.get("Users", [])
        ]
        return {
            "permission_sets": sorted(names),
            "accounts": sorted(accounts),
            "users": sorted(users),
        }
