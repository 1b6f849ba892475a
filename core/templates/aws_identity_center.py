"""AWS IAM Identity Center: an account assignment of a permission set to the identity's user.

The user is found in the identity store by email. The ledger is a DynamoDB table the module
creates (`ledger_table`; aws_identity_center_ledger): a MACed record per grant, written before
anything is assigned, and a hold per (permission set, account, user) the grant relies on. A
revoke removes the assignment unless another live grant holds it and then its hold, turns the
record into a tombstone (the table's TTL deletes it once the grant could no longer be valid),
and only then looks again: an assignment no live grant holds is removed, and one a concurrent
grant of the same user and account took a hold on meanwhile is put back. A grant reads its
record again after assigning: if a revoke (the sweep is not held back by the queue's group)
buried it meanwhile, the grant takes its assignment back out unless a live grant holds it, and
is refused. Whichever of the two looks last sees the other's work. A revoke or a redelivered
grant that finds a tombstone listing accounts looks at those accounts again, so a delivery that
failed between assigning and reading its record leaves nothing behind. Nothing is written on
the permission set, so the company's 50 tags per permission set are theirs, and any number of
grants and revokes fit.

The connector reads and assigns only the permission sets the catalog names (the policy covers
exactly those); it never removes an assignment it did not make: a grant is refused where the
user already holds the permission set on an account outside the connector.

Identity Center cannot make an assignment expire by itself: the expiry is the scheduled revoke
and the sweep. Role credentials already issued through the portal last until the permission
set's `SessionDuration` (docs/aws.md).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any, ClassVar

from pydantic import Field, field_validator

from jitc import labels
from jitc.errors import Refused, TargetError
from jitc.labels import LabelKey
from jitc.models import Grant, utcnow
from jitc.secrets import Secret
from jitc.templates.aws_identity_center_ledger import Forged, GrantRecord, Ledger
from jitc.templates.base import (
    GrantResult,
    GrantSpec,
    InventoryRecord,
    PermissionSettings,
    RevokeResult,
    Settings,
)

# Well inside the worker's timeout: an assignment still in progress then is retried, not waited
# out (a timed-out worker would lose the whole batch's outcomes).
STATUS_WAIT_SECONDS = 20.0


class Connection(Settings):
    instance_arn: str = Field(
        pattern=r"^arn:aws[a-z-]*:sso:::instance/(sso)?ins-[a-zA-Z0-9-.]{16}$"
    )
    identity_store_id: str = Field(pattern=r"^d-[0-9a-f]{10}$|^[0-9a-f-]{36}$")
    ledger_table: str = Field(
        pattern=r"^[a-zA-Z0-9_.-]{3,255}$",
        description="the DynamoDB table the module creates as this template's ledger "
        "(output identity_center_ledger_table), in the connector's own account",
    )
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


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class AwsIdentityCenterTemplate:
    kind: ClassVar[str] = "aws_identity_center"
    Connection: ClassVar[type[Settings]] = Connection
    Permission: ClassVar[type[PermissionSettings]] = Permission
    uses_label_key: ClassVar[bool] = True

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
        self,
        integration: str,
        connection: Settings,
        secret: Secret | None,
        label_key: LabelKey | None = None,
    ) -> AwsIdentityCenterSession:
        assert isinstance(connection, Connection)
        return AwsIdentityCenterSession(integration, connection, labels.required(label_key))


class AwsIdentityCenterSession:
    def __init__(self, integration: str, connection: Connection, key: LabelKey) -> None:
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
        # The table is the connector's own, in its own account: reached with the function's
        # role even when Identity Center is reached through a member-account role.
        self.ledger = Ledger(
            aws_session.client("dynamodb", None),
            connection.ledger_table,
            key,
            integration,
            ClientError,
        )

    def close(self) -> None:
        """The clients are shared across batches (aws_session): nothing to close."""

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
            # AWS's "a previous write has not propagated yet; retry", not "it exists": only an
            # assignment seen in place counts, anything else is retried.
            if self._assigned(account, permission_set, user_id):
                return
            raise TargetError(
                "Identity Center: a concurrent change of this assignment; will retry"
            ) from None
        self._wait(
            answer["AccountAssignmentCreationStatus"],
            "describe_account_assignment_creation_status",
            "AccountAssignmentCreationRequestId",
        )

    def _held(
        self,
        permission_set: str,
        account: str,
        user_id: str,
        live_only: bool = True,
        but: str | None = None,
    ) -> bool:
        """Whether a grant of ours (other than `but`) holds this assignment."""
        found = self.ledger.holders(permission_set, account, user_id, live_only=live_only)
        return any(grant_id != but for grant_id in found)

    # -- grant -----------------------------------------------------------------------------

    def _record(self, grant_id: str) -> GrantRecord | None:
        try:
            return self.ledger.grant(grant_id)
        except Forged:
            raise Refused(
                "request_id",
                "the ledger holds an entry for this grant that was not created by this connector",
            ) from None

    @staticmethod
    def _same_request(record: GrantRecord, spec: GrantSpec) -> None:
        if record.state != "active":
            raise Refused("request_id", "this grant was already revoked; it will not be made again")
        if record.digest != spec.request_digest:
            raise Refused(
                "request_id",
                "this request id was already used for a different request; refused, not merged",
            )

    def grant(self, spec: GrantSpec) -> GrantResult:
        self._deadline = time.monotonic() + STATUS_WAIT_SECONDS
        permission = spec.permission
        assert isinstance(permission, Permission)
        arn = permission.permission_set_arn
        record = self._record(spec.grant_id)
        reissued = record is not None
        if record is not None:
            if record.state != "active":
                # An earlier delivery may have assigned after the revoke's last look, then
                # failed before it could see the tombstone: take that assignment back out.
                self._settle(record)
            self._same_request(record, spec)
        else:
            user_id = self._user_id(spec.identity.email)
            for index, account in enumerate(spec.resources):
                ours = self._held(arn, account, user_id, live_only=False)
                if not ours and self._assigned(account, arn, user_id):
                    raise Refused(
                        f"resources[{index}]",
                        f"the user already holds this permission set on {account} outside the "
                        "connector; it will not manage (or remove) that assignment",
                    )
            record = GrantRecord(
                spec.grant_id,
                "active",
                spec.expires_at,
                user_id,
                arn,
                tuple(spec.resources),
                spec.request_digest,
                self.integration,
            )
            if not self.ledger.create(record):
                # A concurrent delivery, or a revoke that arrived first, wrote there meanwhile.
                found = self._record(spec.grant_id)
                if found is None:
                    raise TargetError(
                        "the ledger entry for this grant changed meanwhile; will retry"
                    )
                if found.state != "active":
                    self._settle(found)
                self._same_request(found, spec)
                record, reissued = found, True
        for account in record.accounts:
            # The hold before the assignment: a concurrent revoke of another grant of this user
            # and account sees it and leaves (or puts back) the assignment.
            self.ledger.hold(record, account)
            if not self._assigned(account, record.permission_set, record.user_id):
                self._assign(account, record.permission_set, record.user_id)
        # A revoke (the sweep is not held back by the queue's group) may have buried the record
        # between our read and our hold, and looked at the assignment before we made it. Either
        # it sees our assignment (it buries before its last look) or we see its tombstone here.
        if not self._still_active(record):
            self._settle(record)
            raise Refused(
                "request_id",
                "this grant was revoked while it was being made; its assignment was taken back",
            )
        return GrantResult(
            principal=f"user/{record.user_id}", reissued=reissued, expires_at=record.expires_at
        )

    def _still_active(self, record: GrantRecord) -> bool:
        try:
            current = self.ledger.grant(record.grant_id)
        except Forged:
            # Overwritten by somebody else: nothing vouches for this grant any more.
            return False
        return current == record

    # -- revoke ----------------------------------------------------------------------------

    def _own(self, grant_id: str) -> GrantRecord | None:
        try:
            return self.ledger.grant(grant_id)
        except Forged:
            # Failed, so retried and alarmed: the grant's own record was overwritten, and
            # nothing is removed on the word of an entry the connector did not write.
            raise TargetError(
                f"the ledger entry of grant {grant_id} was not written by this connector: "
                "left alone"
            ) from None

    def _settle(self, record: GrantRecord) -> tuple[int, list[str]]:
        """The record no longer stands (a tombstone, or gone): each of its accounts keeps the
        assignment only if a live grant holds it. Returns how many assignments were removed,
        and those still in place that nothing holds."""
        arn, user_id = record.permission_set, record.user_id
        removed, residual = 0, []
        for account in record.accounts:
            # The record's own holds count for nothing now (holders reads each grant's record).
            if not self._held(arn, account, user_id) and self._assigned(account, arn, user_id):
                self._unassign(account, arn, user_id)
                removed += 1
            self.ledger.release(record, account)
            # A grant of the same user and account that took its hold while the assignment
            # went relies on it: put it back (its hold was written before it looked).
            needed = self._held(arn, account, user_id)
            assigned = self._assigned(account, arn, user_id)
            if needed and not assigned:
                self._assign(account, arn, user_id)
            elif not needed and assigned:
                residual.append(f"assignment on {account} still exists")
        return removed, residual

    def revoke(self, grant_id: str, tombstone_until: datetime) -> RevokeResult:
        self._deadline = time.monotonic() + STATUS_WAIT_SECONDS
        record = self._own(grant_id)
        if record is None:
            if tombstone_until <= utcnow():
                return RevokeResult(found=False)
            # Revoke before grant: the tombstone makes the late grant a refusal.
            stone = GrantRecord(
                grant_id, "tombstone", tombstone_until, "-", "-", (), "", self.integration
            )
            if self.ledger.create(stone):
                return RevokeResult(found=False)
            record = self._own(grant_id)  # the grant landed meanwhile: revoke it
            if record is None:
                raise TargetError("the ledger entry for this grant changed meanwhile; will retry")
        arn, user_id = record.permission_set, record.user_id
        if record.state != "active":
            # Already revoked; but a delivery of the grant may have assigned after that revoke
            # looked, or this revoke failed after burying: look again at what it listed.
            removed, residual = self._settle(record)
            if not removed and not residual:
                return RevokeResult(found=False)
            return RevokeResult(
                found=True,
                principal=f"user/{user_id}",
                expires_at=record.expires_at,
                residual=residual,
                verified=not residual,
                note="an assignment left after the earlier revoke was removed" if removed else None,
            )
        # Access first: the assignment goes unless another live grant holds it; the grant's own
        # hold goes after, so a grant landing meanwhile still sees the assignment as ours.
        for account in record.accounts:
            if not self._held(arn, account, user_id, but=grant_id):
                self._unassign(account, arn, user_id)
            self.ledger.release(record, account)
        # The tombstone before the last look: a delivery of this grant that assigns after that
        # look sees the tombstone when it reads its record again, and takes the assignment back.
        if not self.ledger.bury(record, max(tombstone_until, record.expires_at)):
            raise TargetError("the ledger entry for this grant changed meanwhile; will retry")
        _, residual = self._settle(record)
        # A residual fails the revoke, so it is retried: the retry finds the tombstone and
        # looks again at the accounts it lists.
        return RevokeResult(
            found=True,
            principal=f"user/{user_id}",
            expires_at=record.expires_at,
            residual=residual,
            verified=not residual,
        )

    def forget(self, grant_id: str, principal: str | None = None) -> None:
        try:
            record = self.ledger.grant(grant_id)
        except Forged:
            return
        if record is not None and record.state == "tombstone":
            self.ledger.forget(record)

    # -- sweep and inventory ---------------------------------------------------------------

    def active_grants(self) -> list[Grant]:
        return [
            Grant(
                grant_id=record.grant_id,
                request_id=record.grant_id,
                integration=self.integration,
                permission=record.permission_set,
                kind=AwsIdentityCenterTemplate.kind,
                principal=f"user/{record.user_id}",
                identity=record.user_id,
                expires_at=record.expires_at,
                state="tombstone" if record.state == "tombstone" else "active",
                detail={"accounts": list(record.accounts)},
            )
            for record in self.ledger.records()
        ]

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
