"""AWS IAM: a per-grant customer managed policy, attached to the identity's IAM role or user.

The policy is the ledger and the lock at once: it lives under the connector's own path
(`/jitc/` by default), is named by the grant id, carries the grant's label in its description,
and every Allow statement in it carries `aws:CurrentTime < expiry`, so AWS itself refuses the
access after the expiry even if the connector is down. Its document is the catalog's inline
document rendered with the requested resources, or a copy of a managed policy's default version
with the same condition added (so a managed policy is never attached without an expiry).

A revoke detaches and deletes it; a tombstone policy (`jitc-x-<grant>`, never attached, denying
everything if it ever were) records the revoke so a late redelivered grant is refused.

Two bounds keep a grant from becoming a way to more access. The principal must carry the
permissions boundary the module creates (`permissions_boundary_arn`), checked before anything is
made, and the module's policy lets the connector attach its policies (grants, and the one that
ends a role's older sessions) only to principals with that boundary; it writes no inline
policy. And a catalog permission whose document could hand out access or credentials (any IAM
or STS action that is not a read, `iam:` wildcards, `NotAction`, `*`, a few actions elsewhere
that hand out access or run code as another principal) or that copies `AdministratorAccess` is
refused unless the catalog marks it `privileged: true`; a copied managed policy is checked
again at each grant.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from jitc import labels
from jitc.errors import Refused, TargetError
from jitc.labels import LabelKey, sign_label, verify_label
from jitc.models import Grant, utcnow
from jitc.secrets import Secret
from jitc.templates.base import (
    GrantResult,
    GrantSpec,
    InventoryRecord,
    PermissionSettings,
    RevokeResult,
    Settings,
    grant_from_label,
    tombstone_label,
)

PLACEHOLDER = "{resource}"
# What a label's MAC binds besides its content (jitc.labels): the policy's name, and which kind of
# policy it is, so a genuine grant label copied onto another policy, or onto a session cutoff, is
# not ours.
LABEL_KIND = "aws_iam_policy"
SESSIONS_KIND = "aws_iam_sessions"
# IAM's limit on a policy description (CreatePolicy `Description`, max 1000).
DESCRIPTION_MAX = 1000
# IAM's quota on a managed policy document, white space not counted.
DOCUMENT_MAX = 6144
# Policies that end a role's older sessions: `jitc-s-<role>-<unix time of the cutoff>`.
SESSIONS_PREFIX = "jitc-s-"
_IAM_NAME = r"^[\w+=,.@-]{1,64}$"
TOMBSTONE_DOCUMENT = {
    "Version": "2012-10-17",
    "Statement": [{"Sid": "JitcTombstone", "Effect": "Deny", "Action": "*", "Resource": "*"}],
}


# IAM and STS are where access itself is written: every action there that is not a read changes
# who may do what or mints credentials, whether it puts a policy, lifts a boundary, edits a
# trust, a tag used by a condition, a key or a password, or assumes a role or the root. IAM's
# reads are judged by verb (a name beginning with one of these), so a new write action is
# covered too.
_IAM_READ_VERBS = ("get", "list", "generate", "simulate")
# STS's "Get" verbs are not reads: GetSessionToken, GetFederationToken, GetWebIdentityToken
# (a JWT an outside service accepts until its own expiry, past the revoke) and others mint
# credentials. Its reads are named one by one, so a new STS action needs the mark; "Decode"
# only decodes an authorization message.
_STS_READS = ("getcalleridentity", "getaccesskeyinfo", "decodeauthorizationmessage")
_STS_READ_VERBS = ("decode",)

# Elsewhere, the actions that hand out access or run code as another principal. Lower case: IAM
# matches action names case-insensitively.
ESCALATING_ACTIONS = (
    "sso:createaccountassignment",
    "sso:attachmanagedpolicytopermissionset",
    "sso:attachcustomermanagedpolicyreferencetopermissionset",
    "sso:putinlinepolicytopermissionset",
    "sso:putpermissionsboundarytopermissionset",
    "sso:deletepermissionsboundaryfrompermissionset",
    "sso:provisionpermissionset",
    "identitystore:creategroupmembership",
    "organizations:createaccount",
    "lambda:updatefunctioncode",
    "lambda:updatefunctionconfiguration",
    "ssm:sendcommand",
    "ssm:startsession",
    "ec2-instance-connect:sendsshpublickey",
)

_WILDCARDS = re.compile(r"[*?]")


def _iam_glob(pattern: str) -> re.Pattern[str]:
    """IAM's wildcards (`*`, `?`) and nothing else, case-insensitive."""
    escaped = re.escape(pattern.lower()).replace(r"\*", ".*").replace(r"\?", ".")
    return re.compile(escaped, re.DOTALL)


def _is_read(service: str, name: str) -> bool:
    """Whether every action of `service` (iam or sts) the lower-case name pattern could match
    is a read."""
    # Only the literal text before the first wildcard is sure; `iam:G*` could be anything.
    literal = _WILDCARDS.split(name, maxsplit=1)[0]
    if service == "iam":
        return literal.startswith(_IAM_READ_VERBS)
    return literal.startswith(_STS_READ_VERBS) or (literal == name and name in _STS_READS)


def _writes_access(action: str) -> bool:
    """Whether an action pattern could name an IAM or STS action that is not a read."""
    service, _, name = action.lower().partition(":")
    service_glob = _iam_glob(service)
    return any(
        service_glob.fullmatch(target) and not _is_read(target, name) for target in ("iam", "sts")
    )


def escalations(document: dict[str, Any]) -> list[str]:
    """Why an Allow in this document could reach beyond the grant (empty: it cannot)."""
    found: list[str] = []
    statements = document.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    for index, statement in enumerate(statements if isinstance(statements, list) else []):
        if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
            continue
        if "NotAction" in statement:
            found.append(f"Statement[{index}] allows with NotAction")
        actions = statement.get("Action", [])
        for action in [actions] if isinstance(actions, str) else actions:
            if not isinstance(action, str):
                continue
            glob = _iam_glob(action)
            if _writes_access(action) or any(glob.fullmatch(a) for a in ESCALATING_ACTIONS):
                found.append(f"Statement[{index}] allows {action}")
    return found


class Connection(Settings):
    account_id: str = Field(pattern=r"^\d{12}$", description="the account whose IAM is the target")
    permissions_boundary_arn: str = Field(
        pattern=r"^arn:aws[a-z-]*:iam::\d{12}:policy/[\w+=,.@/-]+$",
        description="the permissions boundary the module creates: a grant goes only to a role "
        "or user that carries it, so no attached policy can reach beyond it",
    )
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    partition: str | None = Field(
        default=None,
        pattern=r"^aws(-cn|-us-gov|-iso|-iso-[a-z])?$",
        description="the account's partition; by default the one of permissions_boundary_arn",
    )
    path: str = Field(default="/jitc/", pattern=r"^/([\w+=,.@-]+/)+$")
    role_arn: str | None = Field(
        default=None,
        pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$",
        description="act in another account through this role (the member-account module)",
    )
    external_id: str | None = Field(
        default=None,
        pattern=r"^[\w+=,.@:/-]+$",
        min_length=2,
        max_length=1224,
        description="the external id that role's trust policy requires",
    )
    allowed_principals: list[str] = Field(
        min_length=1,
        description="glob patterns of the IAM role or user names a grant may go to (e.g. 'dev-*')",
    )


class Permission(PermissionSettings):
    principal_type: Literal["role", "user"] = "role"
    policy: dict[str, Any] | None = Field(
        default=None,
        description="IAM policy document; '{resource}' in a string stands for each resource",
    )
    managed_policy_arn: str | None = Field(
        default=None, pattern=r"^arn:aws[a-z-]*:iam::(aws|\d{12}):policy/[\w+=,.@/-]+$"
    )
    privileged: bool = Field(
        default=False,
        description="this permission may hand out IAM or role assumption (iam: wildcards, "
        "iam:PassRole, sts:AssumeRole, NotAction, AdministratorAccess): reviewed as such",
    )
    revoke_role_sessions: bool = Field(
        default=False,
        description="at revoke, deny every session of the role issued before that moment "
        "(AWSRevokeOlderSessions): ends sessions holding the access, for all users of the role",
    )

    @field_validator("policy")
    @classmethod
    def _document(cls, policy: dict[str, Any] | None) -> dict[str, Any] | None:
        if policy is None:
            return None
        statements = policy.get("Statement")
        if not isinstance(statements, list) or not statements:
            raise ValueError("policy needs a non-empty Statement list")
        for index, statement in enumerate(statements):
            if not isinstance(statement, dict) or statement.get("Effect") not in ("Allow", "Deny"):
                raise ValueError(f"policy Statement[{index}] needs Effect Allow or Deny")
        return policy

    @model_validator(mode="after")
    def _one_source(self) -> Permission:
        if (self.policy is None) == (self.managed_policy_arn is None):
            raise ValueError("exactly one of policy or managed_policy_arn")
        if self.revoke_role_sessions and self.principal_type != "role":
            raise ValueError("revoke_role_sessions applies to roles only")
        if not self.privileged:
            reasons = escalations(self.policy) if self.policy is not None else []
            arn = self.managed_policy_arn or ""
            if arn.endswith(("/AdministratorAccess", "/IAMFullAccess", "/PowerUserAccess")):
                reasons.append(f"copies {arn}")
            if reasons:
                raise ValueError(
                    "this permission could hand out more than itself ("
                    + "; ".join(reasons)
                    + "): mark it `privileged: true` if that is intended"
                )
        return self


def policy_name(grant_id: str) -> str:
    return f"jitc-{grant_id}"


def tombstone_name(grant_id: str) -> str:
    return f"jitc-x-{grant_id}"


def _expand(value: Any, resources: tuple[str, ...]) -> Any:
    """Substitute resources structurally, inside JSON values: a string with the placeholder becomes
    one string per resource; nothing is ever parsed back out of text."""
    if isinstance(value, dict):
        return {key: _expand(item, resources) for key, item in value.items()}
    if isinstance(value, list):
        out: list[Any] = []
        for item in value:
            expanded = _expand(item, resources)
            if isinstance(item, str) and PLACEHOLDER in item:
                out.extend(expanded if isinstance(expanded, list) else [expanded])
            else:
                out.append(expanded)
        return out
    if isinstance(value, str) and PLACEHOLDER in value:
        values = [value.replace(PLACEHOLDER, resource) for resource in resources]
        return values[0] if len(values) == 1 else values
    return value


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _instant(value: Any) -> datetime:
    """An IAM date condition value (ISO 8601, or epoch seconds) as a UTC instant."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a date")
    text = value.strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text), UTC)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def with_expiry(document: dict[str, Any], expires_at: datetime) -> dict[str, Any]:
    """Every Allow statement gets `aws:CurrentTime < expiry`, or keeps an earlier cutoff it had.

    Existing cutoffs are parsed, not compared as text (offsets differ), and a list of them is
    read as IAM reads it, any value satisfying; every spelling of the key (condition keys are
    case-insensitive) folds into the one value left, the earliest of all, so nothing widens."""
    doc = copy.deepcopy(document)
    statements = doc["Statement"]
    if isinstance(statements, dict):
        statements = doc["Statement"] = [statements]
    for statement in statements:
        if statement.get("Effect") != "Allow":
            continue
        condition = statement.setdefault("Condition", {})
        before = condition.setdefault("DateLessThan", {}) if isinstance(condition, dict) else None
        if not isinstance(before, dict):
            # Not a condition block IAM would accept either; never guess around it.
            raise Refused("permission", "a statement's Condition is not a map of maps")
        cutoffs = [expires_at.astimezone(UTC)]
        for key in [k for k in before if k.lower() == "aws:currenttime"]:
            values = before.pop(key)
            for value in values if isinstance(values, list) else [values]:
                try:
                    cutoffs.append(_instant(value))
                except ValueError:
                    raise Refused(
                        "permission", f"aws:CurrentTime condition {value!r} is not a date"
                    ) from None
        before["aws:CurrentTime"] = _iso(min(cutoffs))
    doc["Version"] = "2012-10-17"
    return doc


def _partition(connection: Connection) -> str:
    """GovCloud and China are partitions of their own: an `arn:aws:` ARN names nothing there."""
    return connection.partition or connection.permissions_boundary_arn.split(":")[1]


def principal_name(connection: Connection, spec: GrantSpec) -> str:
    name = spec.identity.username
    if name is None:
        raise Refused(
            "identity.username", "an IAM grant needs the identity's IAM role or user name"
        )
    if not re.match(_IAM_NAME, name):
        raise Refused("identity.username", "not a valid IAM role or user name")
    if not any(fnmatch.fnmatchcase(name, pattern) for pattern in connection.allowed_principals):
        raise Refused(
            "identity.username", f"{name!r} is not among the catalog's allowed principals"
        )
    return name


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class AwsIamTemplate:
    kind: ClassVar[str] = "aws_iam"
    Connection: ClassVar[type[Settings]] = Connection
    Permission: ClassVar[type[PermissionSettings]] = Permission
    uses_label_key: ClassVar[bool] = True

    def needs_secret_delivery(self, permission: PermissionSettings) -> bool:
        return False

    def check(self, connection: Settings, permission: PermissionSettings, spec: GrantSpec) -> None:
        assert isinstance(connection, Connection)
        principal_name(connection, spec)

    def plan(self, connection: Settings, spec: GrantSpec) -> list[str]:
        assert isinstance(connection, Connection)
        permission = spec.permission
        assert isinstance(permission, Permission)
        name = principal_name(connection, spec)
        if permission.policy is not None:
            source = json.dumps(
                with_expiry(_expand(permission.policy, spec.resources), spec.expires_at)
            )
        else:
            source = (
                f"copy of {permission.managed_policy_arn} (default version), every Allow "
                f"conditioned on aws:CurrentTime < {_iso(spec.expires_at)}"
            )
        name_ = policy_name(spec.grant_id)
        partition = _partition(connection)
        arn = f"arn:{partition}:iam::{connection.account_id}:policy{connection.path}{name_}"
        return [
            f"create policy {arn}: {source}",
            f"attach {arn} to {permission.principal_type} {name}",
        ]

    def open(
        self,
        integration: str,
        connection: Settings,
        secret: Secret | None,
        label_key: LabelKey | None = None,
    ) -> AwsIamSession:
        assert isinstance(connection, Connection)
        return AwsIamSession(integration, connection, labels.required(label_key))


class Squatted(Exception):
    """A policy under the connector's path with one of its names, whose label is not ours."""


class AwsIamSession:
    """An IAM client for one batch; the function's own role is the credential (no secret)."""

    def __init__(self, integration: str, connection: Connection, key: LabelKey) -> None:
        from botocore.exceptions import ClientError

        from jitc.templates import aws_session

        self.integration = integration
        self.settings = connection
        self.key = key
        self.ClientError = ClientError
        if connection.role_arn is not None:
            self.iam = aws_session.assumed_client(
                "iam", connection.region, connection.role_arn, connection.external_id
            )
        else:
            self.iam = aws_session.client("iam", connection.region)

    def close(self) -> None:
        """The client is shared across batches (aws_session): nothing to close."""

    def _arn(self, name: str) -> str:
        partition = _partition(self.settings)
        return f"arn:{partition}:iam::{self.settings.account_id}:policy{self.settings.path}{name}"

    def _verified(self, name: str, description: str | None) -> dict[str, Any] | None:
        """The label if its MAC holds for this policy name and it is this integration's."""
        label = verify_label(self.key, LABEL_KIND, name, description)
        if label is None or label.get("integration") != self.integration:
            return None
        return label

    def _label(self, name: str) -> dict[str, Any] | None:
        """The label of one of our policies; None when there is no such policy. A policy of that
        name whose label does not verify (someone else's, or a forged description) raises
        Squatted: the connector never acts on it."""
        try:
            policy = self.iam.get_policy(PolicyArn=self._arn(name))["Policy"]
        except self.ClientError as exc:
            if _code(exc) == "NoSuchEntity":
                return None
            raise
        label = self._verified(name, policy.get("Description"))
        if label is None:
            raise Squatted(name)
        return label

    def _describe(self, name: str, label: dict[str, Any]) -> str:
        text = sign_label(self.key, LABEL_KIND, name, label)
        if len(text) > DESCRIPTION_MAX:
            # Only a very long principal or permission name gets here; refused before anything
            # is made rather than cut (a cut label would not verify, and so not be ours).
            raise Refused("permission", "the grant's label does not fit an IAM policy description")
        return text

    def _document(self, spec: GrantSpec) -> dict[str, Any]:
        permission = spec.permission
        assert isinstance(permission, Permission)
        if permission.policy is not None:
            return with_expiry(_expand(permission.policy, spec.resources), spec.expires_at)
        assert permission.managed_policy_arn is not None
        policy = self.iam.get_policy(PolicyArn=permission.managed_policy_arn)["Policy"]
        version = self.iam.get_policy_version(
            PolicyArn=permission.managed_policy_arn, VersionId=policy["DefaultVersionId"]
        )["PolicyVersion"]["Document"]
        if isinstance(version, str):
            from urllib.parse import unquote

            version = json.loads(unquote(version))
        reasons = escalations(version)
        if reasons and not permission.privileged:
            # The managed policy may have changed since the catalog was reviewed.
            raise Refused(
                "permission",
                f"{permission.managed_policy_arn} now allows more than a grant may hand out "
                f"({'; '.join(reasons)}); mark the permission privileged if that is intended",
            )
        return with_expiry(version, spec.expires_at)

    def _check_principal(self, kind: str, name: str) -> None:
        """Checked before anything is made, so a missing or unbounded principal leaves nothing
        behind."""
        try:
            if kind == "role":
                found = self.iam.get_role(RoleName=name)["Role"]
            else:
                found = self.iam.get_user(UserName=name)["User"]
        except self.ClientError as exc:
            if _code(exc) == "NoSuchEntity":
                raise Refused("identity.username", f"no IAM {kind} {name!r}") from None
            raise
        boundary = (found.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")
        if boundary != self.settings.permissions_boundary_arn:
            raise Refused(
                "identity.username",
                f"IAM {kind} {name!r} does not carry the connector's permissions boundary "
                f"{self.settings.permissions_boundary_arn}",
            )

    # -- grant -----------------------------------------------------------------------------

    def grant(self, spec: GrantSpec) -> GrantResult:
        permission = spec.permission
        assert isinstance(permission, Permission)
        name = principal_name(self.settings, spec)
        try:
            stone = self._label(tombstone_name(spec.grant_id))
            label = self._label(policy_name(spec.grant_id))
        except Squatted as exc:
            # A name collision is final: retrying would never make the name ours.
            raise Refused(
                "request_id",
                f"policy {exc} already exists and was not created by this connector",
            ) from None
        if stone is not None:
            raise Refused("request_id", "this grant was already revoked; it will not be made again")
        self._check_principal(permission.principal_type, name)
        if label is not None:
            self._same_request(label, spec, permission.principal_type, name)
        else:
            document = self._document(spec)
            size = len(json.dumps(document, separators=(",", ":")))
            if size > DOCUMENT_MAX:
                # CreatePolicy would answer LimitExceeded on every delivery: never retried.
                # A copied managed policy too big for a customer managed one is the catalog's.
                field = "resources" if permission.policy is not None else "permission"
                raise Refused(
                    field,
                    f"the grant's policy would be {size} characters, over IAM's {DOCUMENT_MAX}",
                )
            label = {
                **spec.label(
                    principal_type=permission.principal_type,
                    principal=name,
                    revoke_role_sessions=permission.revoke_role_sessions,
                    digest=spec.request_digest,
                ),
                # A keyed hash: whoever can read policy descriptions learns no email.
                "identity": self.key.keyed_hash("identity", spec.identity.email),
            }
            try:
                self.iam.create_policy(
                    PolicyName=policy_name(spec.grant_id),
                    Path=self.settings.path,
                    PolicyDocument=json.dumps(document),
                    Description=self._describe(policy_name(spec.grant_id), label),
                    Tags=[
                        {"Key": "jitc:grant_id", "Value": spec.grant_id},
                        {"Key": "jitc:expires_at", "Value": spec.expires_at.isoformat()},
                    ],
                )
                label = None
            except self.ClientError as exc:
                # A concurrent delivery of the same grant made it first: then it must be ours and
                # for this same request; anything else is refused below.
                if _code(exc) != "EntityAlreadyExists":
                    raise
                try:
                    label = self._label(policy_name(spec.grant_id))
                except Squatted as squatted:
                    raise Refused(
                        "request_id",
                        f"policy {squatted} already exists and was not created by this connector",
                    ) from None
                if label is not None:
                    self._same_request(label, spec, permission.principal_type, name)
        reissued = label is not None
        arn = self._arn(policy_name(spec.grant_id))
        try:
            if permission.principal_type == "role":
                self.iam.attach_role_policy(RoleName=name, PolicyArn=arn)
            else:
                self.iam.attach_user_policy(UserName=name, PolicyArn=arn)
        except self.ClientError as exc:
            if _code(exc) == "NoSuchEntity":
                raise Refused(
                    "identity.username", f"no IAM {permission.principal_type} {name!r}"
                ) from None
            raise
        return GrantResult(principal=f"{permission.principal_type}/{name}", reissued=reissued)

    def _same_request(
        self, label: dict[str, Any], spec: GrantSpec, principal_type: str, name: str
    ) -> None:
        """A redelivery reissues the grant; a different request under a used id is refused."""
        if label.get("state") != "active":
            raise Refused("request_id", "this grant was already revoked; it will not be made again")
        same = (
            label.get("digest") == spec.request_digest
            and label.get("principal_type") == principal_type
            and label.get("principal") == name
        )
        if not same:
            raise Refused(
                "request_id",
                "this request id was already used for a different request; refused, not merged",
            )

    # -- revoke ----------------------------------------------------------------------------

    def _detach_everywhere(self, arn: str) -> None:
        """Take one of our policies off every role, user and group it hangs on: whoever may
        attach policies can hang it anywhere (a group's members then hold it), and IAM deletes
        no policy that is still attached."""
        roles: list[str] = []
        users: list[str] = []
        groups: list[str] = []
        for page in self.iam.get_paginator("list_entities_for_policy").paginate(PolicyArn=arn):
            roles += [r["RoleName"] for r in page.get("PolicyRoles", [])]
            users += [u["UserName"] for u in page.get("PolicyUsers", [])]
            groups += [g["GroupName"] for g in page.get("PolicyGroups", [])]
        for role in roles:
            self.iam.detach_role_policy(RoleName=role, PolicyArn=arn)
        for user in users:
            self.iam.detach_user_policy(UserName=user, PolicyArn=arn)
        for group in groups:
            self.iam.detach_group_policy(GroupName=group, PolicyArn=arn)

    def _tombstone(self, grant_id: str, label: dict[str, Any], until: datetime) -> None:
        if until <= utcnow():
            return
        try:
            if self._label(tombstone_name(grant_id)) is not None:
                return
        except Squatted:
            # Someone else's policy holds the tombstone's name: a late grant is refused on that
            # name anyway (grant refuses a squatted tombstone), and theirs is left alone.
            return
        stone = tombstone_label(grant_id, self.integration, label, until)
        try:
            self.iam.create_policy(
                PolicyName=tombstone_name(grant_id),
                Path=self.settings.path,
                PolicyDocument=json.dumps(TOMBSTONE_DOCUMENT),
                Description=self._describe(tombstone_name(grant_id), stone),
            )
        except self.ClientError as exc:
            if _code(exc) != "EntityAlreadyExists":
                raise

    def revoke(self, grant_id: str, tombstone_until: datetime) -> RevokeResult:
        try:
            label = self._label(policy_name(grant_id))
        except Squatted:
            # Not ours, whatever its description says: nothing of ours to revoke, and theirs is
            # neither detached nor deleted. The tombstone still stops a late grant.
            self._tombstone(grant_id, {}, tombstone_until)
            return RevokeResult(found=False)
        if label is None:
            # Revoke before grant: the tombstone makes the late grant a refusal.
            self._tombstone(grant_id, {}, tombstone_until)
            return RevokeResult(found=False)
        expires_at = datetime.fromisoformat(label["expires_at"])
        # The tombstone first: should anything below fail, the retried revoke still finds the
        # policy, and no redelivered grant can slip in between.
        self._tombstone(grant_id, label, max(tombstone_until, expires_at))
        arn = self._arn(policy_name(grant_id))
        self._detach_everywhere(arn)
        if label.get("principal_type") == "role" and self._revokes_sessions(label):
            self._revoke_sessions(str(label["principal"]))
        for version in self.iam.list_policy_versions(PolicyArn=arn)["Versions"]:
            if not version["IsDefaultVersion"]:
                self.iam.delete_policy_version(PolicyArn=arn, VersionId=version["VersionId"])
        try:
            self.iam.delete_policy(PolicyArn=arn)
        except self.ClientError as exc:
            if _code(exc) != "NoSuchEntity":
                raise
        try:
            gone = self._label(policy_name(grant_id)) is None
        except Squatted:
            gone = False
        principal = f"{label.get('principal_type', 'role')}/{label.get('principal', '')}"
        return RevokeResult(
            found=True,
            principal=principal,
            expires_at=expires_at,
            residual=[] if gone else [f"policy {arn} still exists"],
            verified=gone,
        )

    def _revokes_sessions(self, label: dict[str, Any]) -> bool:
        return bool(label.get("revoke_role_sessions"))

    def _revoke_sessions(self, role: str) -> None:
        """AWS's own mechanism (deny every session of the role issued before now), as a managed
        policy under the connector's path attached like a grant: the worker needs no right to
        write inline policies, which nothing would label, list or sweep."""
        now = utcnow().replace(microsecond=0)
        prefix = f"{SESSIONS_PREFIX}{role}-"
        cutoff = int(now.timestamp())
        name = f"{prefix}{cutoff}"
        document = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Deny",
                    "Action": "*",
                    "Resource": "*",
                    "Condition": {"DateLessThan": {"aws:TokenIssueTime": _iso(now)}},
                }
            ],
        }
        try:
            self.iam.create_policy(
                PolicyName=name,
                Path=self.settings.path,
                PolicyDocument=json.dumps(document),
                Description=self._sessions_label(name, role),
            )
        except self.ClientError as exc:
            if _code(exc) != "EntityAlreadyExists":
                raise
            # Only our own cutoff is attached: a policy planted under this name could allow
            # anything. The retried revoke picks a later second, so a new name.
            if not self._is_cutoff(name, role):
                raise TargetError(
                    f"policy {name} already exists and was not created by this connector"
                ) from None
        self.iam.attach_role_policy(RoleName=role, PolicyArn=self._arn(name))
        # A later cutoff denies everything an earlier one did: drop the earlier ones, so a role
        # holds one of these whatever the number of revokes (10 managed policies per role).
        pages = self.iam.get_paginator("list_attached_role_policies").paginate(
            RoleName=role, PathPrefix=self.settings.path
        )
        for page in pages:
            for attached in page["AttachedPolicies"]:
                older = attached["PolicyName"]
                stamp = older[len(prefix) :]
                if not older.startswith(prefix) or not stamp.isdigit() or int(stamp) >= cutoff:
                    continue
                if not self._is_cutoff(older, role):
                    continue  # not ours: neither detached nor deleted
                self._detach_everywhere(attached["PolicyArn"])
                try:
                    self.iam.delete_policy(PolicyArn=attached["PolicyArn"])
                except self.ClientError as exc:
                    if _code(exc) != "NoSuchEntity":
                        raise

    def _sessions_label(self, name: str, role: str) -> str:
        body = {"integration": self.integration, "role": role}
        return sign_label(self.key, SESSIONS_KIND, name, body)

    def _is_cutoff(self, name: str, role: str) -> bool:
        try:
            policy = self.iam.get_policy(PolicyArn=self._arn(name))["Policy"]
        except self.ClientError as exc:
            if _code(exc) == "NoSuchEntity":
                return False
            raise
        label = verify_label(self.key, SESSIONS_KIND, name, policy.get("Description"))
        return label is not None and label.get("role") == role

    def forget(self, grant_id: str, principal: str | None = None) -> None:
        try:
            label = self._label(tombstone_name(grant_id))
        except Squatted:
            return
        if label is not None and label.get("state") == "tombstone":
            self._detach_everywhere(self._arn(tombstone_name(grant_id)))
            self.iam.delete_policy(PolicyArn=self._arn(tombstone_name(grant_id)))

    # -- sweep and inventory ---------------------------------------------------------------

    def active_grants(self) -> list[Grant]:
        grants: list[Grant] = []
        paginator = self.iam.get_paginator("list_policies")
        for page in paginator.paginate(Scope="Local", PathPrefix=self.settings.path):
            for item in page["Policies"]:
                if not item["PolicyName"].startswith("jitc-"):
                    continue
                policy = self.iam.get_policy(PolicyArn=item["Arn"])["Policy"]
                label = self._verified(item["PolicyName"], policy.get("Description"))
                if label is None:
                    continue  # someone else's, or forged: never swept
                grant = grant_from_label(
                    AwsIamTemplate.kind, str(label.get("principal", "")), label
                )
                if grant is not None:
                    grants.append(grant)
        return grants

    def inventory_records(self) -> Iterator[InventoryRecord]:
        """The roles and users a grant may go to (allowed_principals), and the policies under the
        connector's path: names and ARNs, page by page; never a policy document."""
        patterns = self.settings.allowed_principals

        def allowed(name: str) -> bool:
            return any(fnmatch.fnmatchcase(name, p) for p in patterns)

        for page in self.iam.get_paginator("list_roles").paginate():
            for role in page["Roles"]:
                if allowed(role["RoleName"]):
                    yield InventoryRecord("role", role["RoleName"], None, role["Arn"])
        for page in self.iam.get_paginator("list_users").paginate():
            for user in page["Users"]:
                if allowed(user["UserName"]):
                    yield InventoryRecord("user", user["UserName"], None, user["Arn"])
        paginator = self.iam.get_paginator("list_policies")
        for page in paginator.paginate(Scope="Local", PathPrefix=self.settings.path):
            for policy in page["Policies"]:
                yield InventoryRecord("policy", policy["PolicyName"], None, policy["Arn"])

    def inventory(self) -> dict[str, list[str]]:
        def allowed(name: str) -> bool:
            return any(fnmatch.fnmatchcase(name, p) for p in self.settings.allowed_principals)

        roles = [
            r["RoleName"]
            for page in self.iam.get_paginator("list_roles").paginate()
            for r in page["Roles"]
            if allowed(r["RoleName"])
        ]
        users = [
            u["UserName"]
            for page in self.iam.get_paginator("list_users").paginate()
            for u in page["Users"]
            if allowed(u["UserName"])
        ]
        policies = [
            p["PolicyName"]
            for page in self.iam.get_paginator("list_policies").paginate(
                Scope="Local", PathPrefix=self.settings.path
            )
            for p in page["Policies"]
        ]
        return {"roles": sorted(roles), "users": sorted(users), "policies": sorted(policies)}
