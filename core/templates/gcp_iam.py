"""GCP IAM: a conditional role binding per grant on a project, folder, bucket, secret or
BigQuery dataset.

The binding is the ledger and the lock at once. Its condition is
`request.time < timestamp("<expiry>")`, so Google ends the access on time even when the
connector is down; its title names the grant and its description carries the grant's label,
MACed with the connector's label key over the label *and* the resource, role, member, title and
expression of the binding it sits on. A label copied onto another binding, or a binding whose
condition or title someone edited, no longer verifies and is never acted on: a revoke removes
only a binding the connector wrote, and from it only the connector's member.

Every change is a read-modify-write of the resource's policy (version 3, with its etag),
retried when another writer got there first, and after a pause when a rate limit refused the
write (BigQuery allows five updates per dataset every ten seconds). IAM changes take about two
minutes to apply (seven at worst); a grant's outcome is not proof of usable access until then,
and a revoke is verified by reading the policy back.

Tombstones are not in the policies. A revoke first creates the grant's tombstone object in the
connector's bucket (JITC_GCP_TOMBSTONE_BUCKET; `ifGenerationMatch=0`, so create-if-absent and
atomic), named by a keyed hash of the grant and MACed, then removes the binding. A grant looks for
it before and after writing its binding, and takes the binding out again if it appeared: with
the revoke's order, a grant and its revoke running at once end revoked. In the policy, a tombstone
took one of Google's 100 conditional bindings per policy and of its 20 bindings per role and
member for the whole tombstone window (the 21st revoked grant of one role to one person failed
forever); one merged tombstone binding per role and member would still grow with every revoke
against the limits on a condition and a policy. The bucket's retention policy and lifecycle rule
(infra/terraform/gcp/tombstones.tf) keep each object for the tombstone window and then delete it.

Google's limits still bound live grants: a grant that would exceed them is refused, not failed
(every delivery would fail alike), and none of its bindings is left behind.

The legacy basic roles (owner, editor, viewer) are refused outright: Google accepts no condition
on them. Browser, IAM roles, admin roles (which hold setIamPolicy on what
they administer) and custom roles (whose permissions this template cannot see) are refused
unless the catalog marks the permission `privileged: true`.

A BigQuery dataset keeps its access in the dataset's `access[]` entries, not in an IAM policy of
its own: `gcp_bigquery` reads and writes them (with the dataset's etag in `If-Match`) as the
same policy shape, so every rule above holds for datasets unchanged.
"""

from __future__ import annotations

import fnmatch
import hmac
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, NamedTuple

from pydantic import Field, field_validator

from jitc.endpoints import https_or_loopback
from jitc.errors import Refused, TargetError
from jitc.google_credentials import service_account
from jitc.google_storage import let_go, storage_client
from jitc.labels import LabelKey, required
from jitc.models import Grant
from jitc.secrets import Secret
from jitc.templates import discovery, gcp_bigquery
from jitc.templates.base import (
    GrantResult,
    GrantSpec,
    InventoryRecord,
    PermissionSettings,
    RevokeResult,
    Settings,
    grant_from_label,
)

log = logging.getLogger(__name__)
KIND = "gcp_iam"
PREFIX = "jitc:"
TITLE_PREFIX = "jitc "
TOMBSTONE_BUCKET_ENV = "JITC_GCP_TOMBSTONE_BUCKET"
TOMBSTONE_OBJECTS = "gcp_iam/"
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
# Google's limits on an allow policy (https://cloud.google.com/iam/docs/allow-policies):
# conditional role bindings per policy, and bindings of one role for one member.
MAX_CONDITIONAL = 100
MAX_SAME_ROLE_MEMBER = 20
MAX_DESCRIPTION = 256  # Google's limit for a condition's description
POLICY_VERSION = 3
# Google's published figure for IAM changes to take effect.
PROPAGATION = "GCP IAM applies this in about 2 minutes (up to 7); the policy already holds it"
ATTEMPTS = 5
# A write refused for a rate limit: BigQuery allows five metadata updates per dataset every 10 s
# (https://cloud.google.com/bigquery/quotas#dataset_limits) and answers the next datasets.patch
# with HTTP 403 and errors[].reason rateLimitExceeded, or quotaExceeded with a message about rate
# limits (https://cloud.google.com/bigquery/docs/troubleshoot-quotas); other APIs answer 429.
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
DATASET_UPDATE_LIMIT = "BigQuery's rate limit of 5 updates per dataset every 10 s"

RESOURCE = re.compile(
    r"^(projects/[a-z][a-z0-9-]{4,28}[a-z0-9]"
    r"|folders/[0-9]{1,20}"
    r"|buckets/[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]"
    r"|projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/secrets/[A-Za-z0-9_-]{1,255}"
    r"|projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/datasets/[A-Za-z0-9_]{1,1024})$"
)
ROLE = re.compile(
    r"^(roles/[A-Za-z0-9_.]{1,128}"
    r"|(projects/[a-z][a-z0-9-]{4,28}[a-z0-9]|organizations/[0-9]{1,20})/roles/[A-Za-z0-9_.]{3,64})$"
)
BASIC_ROLES = frozenset({"roles/owner", "roles/editor", "roles/viewer", "roles/browser"})
# Google refuses an IAM condition on these, so a grant of one can never be made: refused even
# when privileged (https://cloud.google.com/iam/docs/conditions-overview).
UNCONDITIONAL_ROLES = frozenset({"roles/owner", "roles/editor", "roles/viewer"})


def role_escalates(role: str) -> str | None:
    """Why a role could hand out more access (None: it cannot, as far as its name shows)."""
    if role in BASIC_ROLES:
        return "a basic role"
    if not role.startswith("roles/"):
        return "a custom role, whose permissions this template cannot see"
    name = role.removeprefix("roles/")
    service, _, short = name.partition(".")
    lowered = short.lower()
    if service in ("iam", "resourcemanager", "orgpolicy", "accesscontextmanager"):
        return "an IAM or resource-manager role"
    if "admin" in lowered or "owner" in lowered or lowered.endswith("tokencreator"):
        return "an admin role (admin roles can set IAM policy on what they administer)"
    if lowered in ("serviceaccountuser", "workloadidentityuser"):
        return "a role that acts as a service account"
    return None


def expression(expires_at: datetime) -> str:
    moment = expires_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f'request.time < timestamp("{moment}")'


class Backoff(NamedTuple):  # not a frozen dataclass: see jitc.gcp.handlers.HttpRequest
    """The pauses before writing again after a rate-limit answer.

    Doubling from one second, they add up to 15 s: the last write comes after the 10-second
    window of the first refusal has passed, so a dataset that other writers keep busy still gets
    a write in. Each pause is stretched by up to `jitter` of itself so that workers refused
    together do not come back together. `budget` bounds all the pauses of one grant, revoke or
    forget, whatever the number of its resources, far below the worker's 540 s timeout: past it
    the message fails and the queue delivers it again later."""

    delays: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    jitter: float = 0.5
    budget: float = 60.0
    sleep: Callable[[float], None] = time.sleep
    draw: Callable[[], float] = random.random  # in [0, 1)


BACKOFF = Backoff()


class Connection(Settings):
    resources: list[str] = Field(
        min_length=1,
        description="every resource whose policy the connector manages (and the sweep reads): "
        "projects/P, folders/F, buckets/B, projects/P/secrets/S, projects/P/datasets/D; "
        "Terraform grants the rights to change access on exactly these",
    )
    allowed_members: list[str] = Field(
        min_length=1,
        description="glob patterns of the members a grant may go to (e.g. 'user:*@example.com')",
    )

    @field_validator("resources")
    @classmethod
    def _resources(cls, resources: list[str]) -> list[str]:
        for resource in resources:
            if not RESOURCE.fullmatch(resource):
                raise ValueError(
                    f"{resource!r}: expected projects/P, folders/F, buckets/B, "
                    "projects/P/secrets/S or projects/P/datasets/D (a dataset id is letters, "
                    "digits and underscores)"
                )
        return resources


class Permission(PermissionSettings):
    role: str = Field(pattern=ROLE.pattern, description="the role the binding grants")
    member_type: Literal["user", "group", "serviceAccount"] = "user"
    privileged: bool = Field(
        default=False,
        description="this permission may hand out a basic, IAM, admin or custom role: "
        "reviewed as such",
    )

    @field_validator("resources")
    @classmethod
    def _resources(cls, resources: list[str]) -> list[str]:
        for resource in resources:
            if not RESOURCE.fullmatch(resource):
                raise ValueError(f"{resource!r} is not a resource this template can bind on")
        return resources

    def model_post_init(self, context: Any) -> None:
        if self.role in UNCONDITIONAL_ROLES:
            raise ValueError(
                f"{self.role} is a legacy basic role: Google refuses an IAM condition on it, so "
                "no grant of it could expire; offer a predefined role instead"
            )
        reason = role_escalates(self.role)
        if reason is not None and not self.privileged:
            raise ValueError(f"{self.role} is {reason}: set privileged: true to offer it")


def member_of(permission: Permission, email: str) -> str:
    return f"{permission.member_type}:{email.lower()}"


def _mac(key: LabelKey, resource: str, binding: dict[str, Any], member: str, body: str) -> str:
    condition = binding.get("condition") or {}
    return key.mac(
        KIND,
        resource,
        str(binding.get("role", "")),
        member,
        str(condition.get("title", "")),
        str(condition.get("expression", "")),
        body,
    )


def _body(spec_or_label: dict[str, Any]) -> str:
    return json.dumps(spec_or_label, sort_keys=True, separators=(",", ":"))


def make_binding(
    key: LabelKey, resource: str, role: str, member: str, grant_id: str, label: dict[str, Any],
    condition: str,
) -> dict[str, Any]:  # fmt: skip
    binding: dict[str, Any] = {
        "role": role,
        "members": [member],
        "condition": {"title": f"{TITLE_PREFIX}{grant_id}", "expression": condition},
    }
    body = _body(label)
    description = f"{PREFIX}{_mac(key, resource, binding, member, body)}.{body}"
    if len(description) > MAX_DESCRIPTION:
        raise Refused("integration", "integration and permission names are too long to label")
    binding["condition"]["description"] = description
    return binding


def read_label(
    key: LabelKey, resource: str, binding: dict[str, Any], member: str
) -> dict[str, Any] | None:
    """Our label for this member of this binding, or None for anything we did not write."""
    condition = binding.get("condition")
    if not isinstance(condition, dict) or member not in (binding.get("members") or []):
        return None
    text = condition.get("description")
    if not isinstance(text, str) or not text.startswith(PREFIX):
        return None
    mac, sep, body = text[len(PREFIX) :].partition(".")
    if not sep or not hmac.compare_digest(mac, _mac(key, resource, binding, member, body)):
        return None
    try:
        label = json.loads(body)
    except ValueError:
        return None
    if not isinstance(label, dict) or label.get("v") != 1:
        return None
    if condition.get("title") != f"{TITLE_PREFIX}{label.get('g')}":
        return None
    return label


def _make_room(
    resource: str, bindings: list[dict[str, Any]], binding: dict[str, Any], member: str
) -> None:
    """Refuse a binding Google would refuse for a limit: every delivery of the grant would
    fail the same way until other grants on the resource end, long after it was asked for."""
    if sum(1 for b in bindings if b.get("condition") is not None) >= MAX_CONDITIONAL:
        raise Refused(
            "resources",
            f"{resource} already holds {MAX_CONDITIONAL} conditional role bindings, Google's "
            "limit per policy: no time-bound grant fits there until others end",
        )
    role = binding.get("role")
    same = sum(1 for b in bindings if b.get("role") == role and member in (b.get("members") or []))
    if same >= MAX_SAME_ROLE_MEMBER:
        raise Refused(
            "resources",
            f"{member} already holds {role} on {resource} in {MAX_SAME_ROLE_MEMBER} bindings, "
            "Google's limit for one role and member",
        )


class _Api:
    """getIamPolicy / setIamPolicy of one resource kind (a dataset's access entries as a
    policy), through Google's discovery clients."""

    def __init__(self) -> None:
        self._services: dict[str, Any] = {}
        self._collections: dict[tuple[str, ...], Any] = {}
        self._credentials: Any = None
        self._storage: Any = None

    def close(self) -> None:
        """httplib2 keeps its sockets open until told (and the discovery clients sit in
        reference cycles, so only the cycle collector would free them): a process that runs
        batch after batch, a warm function, would pile up a connection or two per batch."""
        services, self._services, self._collections = self._services, {}, {}
        storage, self._storage = self._storage, None
        for client in [*services.values(), *([storage] if storage is not None else [])]:
            try:
                client.close()
            except Exception:  # the others are closed all the same
                log.warning("a Google client could not be closed", exc_info=True)

    def credentials(self) -> Any:
        if self._credentials is None:
            # The process's one set (`jitc.google_credentials`): the functions' own clients use
            # it too, so one access token serves them all.
            self._credentials = service_account()
        return self._credentials

    def tombstone_bucket(self) -> str:
        bucket = os.environ.get(TOMBSTONE_BUCKET_ENV, "")
        if not BUCKET_NAME.fullmatch(bucket):
            # Without its tombstones a revoke could be undone by a late grant: no revoke (and
            # no grant) is done rather than one without that guarantee.
            raise TargetError(
                f"{TOMBSTONE_BUCKET_ENV} names no bucket: the gcp_iam target keeps its "
                "tombstones there (the Terraform module creates it)"
            )
        return bucket

    def _bucket(self, bucket: str) -> Any:
        if self._storage is None:
            # The objects API through google-cloud-storage (the discovery client sends media
            # uploads to https whatever the endpoint's scheme): its endpoint is the API's root.
            endpoint = os.environ.get("JITC_STORAGE_ENDPOINT") or None
            if endpoint is not None and not https_or_loopback(endpoint):
                raise TargetError("JITC_STORAGE_ENDPOINT: https only")
            # Object calls name their bucket: no project is needed or guessed.
            self._storage = storage_client(None, endpoint)
        return self._storage.bucket(bucket)

    def create_object(self, bucket: str, name: str, data: bytes) -> bool:
        """Create the object if none exists (True), or leave the one there (False)."""
        from google.api_core.exceptions import Forbidden, GoogleAPICallError, PreconditionFailed

        blob = self._bucket(bucket).blob(name)
        try:
            # Create-if-absent: a retry or a second revoke can never overwrite it.
            blob.upload_from_string(data, content_type="text/plain", if_generation_match=0)
        except GoogleAPICallError as exc:
            let_go(exc)
            if isinstance(exc, PreconditionFailed):
                return False
            # Creating over an existing object is an overwrite, which needs delete: Cloud
            # Storage may answer that with 403 before it looks at the precondition.
            if isinstance(exc, Forbidden) and self.read_object(bucket, name) is not None:
                return False
            raise TargetError(
                f"tombstone bucket: objects.insert answered HTTP {exc.code}"
            ) from None
        return True

    def read_object(self, bucket: str, name: str) -> bytes | None:
        from google.api_core.exceptions import GoogleAPICallError, NotFound

        try:
            data: bytes = self._bucket(bucket).blob(name).download_as_bytes()
        except GoogleAPICallError as exc:
            let_go(exc)
            if isinstance(exc, NotFound):
                return None
            raise TargetError(f"tombstone bucket: objects.get answered HTTP {exc.code}") from None
        return data

    def _service(self, name: str, version: str) -> Any:
        if name not in self._services:
            options = {}
            endpoint = os.environ.get(f"JITC_GCP_ENDPOINT_{name.upper()}")
            if endpoint:
                # A Private Service Connect endpoint, or a local server in tests: the bearer
                # token goes there, so never in clear text off this machine.
                if not https_or_loopback(endpoint):
                    raise TargetError(f"JITC_GCP_ENDPOINT_{name.upper()}: https only")
                options["api_endpoint"] = endpoint
            credentials = self.credentials()
            self._services[name] = discovery.build(name, version, credentials, options or None)
        return self._services[name]

    def get(self, resource: str) -> dict[str, Any]:
        if gcp_bigquery.is_dataset(resource):
            return gcp_bigquery.Datasets(self._service("bigquery", "v2")).get(resource)
        if resource.startswith("buckets/"):
            call = self._collection("storage", "v1", "buckets").getIamPolicy(
                bucket=resource.removeprefix("buckets/"),
                optionsRequestedPolicyVersion=POLICY_VERSION,
            )
        elif "/secrets/" in resource:
            call = self._collection("secretmanager", "v1", "projects", "secrets").getIamPolicy(
                resource=resource, options_requestedPolicyVersion=POLICY_VERSION
            )
        else:
            call = self._manager(resource).getIamPolicy(
                resource=resource, body={"options": {"requestedPolicyVersion": POLICY_VERSION}}
            )
        policy: dict[str, Any] = call.execute(num_retries=2)
        return policy

    def set(self, resource: str, policy: dict[str, Any]) -> dict[str, Any]:
        if gcp_bigquery.is_dataset(resource):
            return gcp_bigquery.Datasets(self._service("bigquery", "v2")).set(resource, policy)
        if resource.startswith("buckets/"):
            call = self._collection("storage", "v1", "buckets").setIamPolicy(
                bucket=resource.removeprefix("buckets/"), body=policy
            )
        elif "/secrets/" in resource:
            call = self._collection("secretmanager", "v1", "projects", "secrets").setIamPolicy(
                resource=resource, body={"policy": policy}
            )
        else:
            call = self._manager(resource).setIamPolicy(resource=resource, body={"policy": policy})
        # Not retried blindly: a lost answer is read back by the next attempt.
        result: dict[str, Any] = call.execute(num_retries=0)
        return result

    def _collection(self, name: str, version: str, *path: str) -> Any:
        """A collection of a discovery client (`projects().secrets()`: "projects", "secrets"),
        made once: the client builds every method of a collection each time it is asked for
        one, and a revoke reads and writes the same policy four times or more."""
        key = (name, *path)
        if key not in self._collections:
            found = self._service(name, version)
            for step in path:
                found = getattr(found, step)()
            self._collections[key] = found
        return self._collections[key]

    def _manager(self, resource: str) -> Any:
        kind = "folders" if resource.startswith("folders/") else "projects"
        return self._collection("cloudresourcemanager", "v3", kind)


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "resp", None)
    status = getattr(response, "status", None)
    return int(status) if status is not None else None


def _rate_limited(exc: Exception) -> str | None:
    """The reason a write was refused for a rate limit (None: it was refused for something else,
    a denied permission among them, which no pause would change)."""
    status = _status(exc)
    if status == 429:
        return "HTTP 429"
    if status != 403:
        return None
    try:
        error = json.loads(getattr(exc, "content", b"") or b"{}").get("error") or {}
        items = [item for item in error.get("errors") or [] if isinstance(item, dict)]
    except (ValueError, TypeError, AttributeError):
        return None
    for item in items:
        reason = item.get("reason")
        if reason in RATE_LIMIT_REASONS:
            return f"HTTP 403 {reason}"
        # quotaExceeded is also the answer to a long-term quota (a daily one): only a message
        # about a rate limit says a pause will do.
        text = f"{item.get('message', '')} {error.get('message', '')}".lower()
        if reason == "quotaExceeded" and "rate limit" in text:
            return "HTTP 403 quotaExceeded (rate limits)"
    return None


def _left_alone(resource: str, role: str, grant_id: str) -> str:
    title = f"{TITLE_PREFIX}{grant_id}"
    return (
        f"{resource}: {role} titled {title!r} does not verify as the connector's (edited or "
        "forged): left alone"
    )


class GcpIamSession:
    def __init__(
        self, integration: str, connection: Connection, key: LabelKey, api: _Api | None = None,
        backoff: Backoff | None = None,
    ) -> None:  # fmt: skip
        self.integration = integration
        self.connection = connection
        self._key = key
        self._api = api or _Api()
        self._backoff = backoff or BACKOFF
        # Seconds paused for rate limits in the current grant, revoke or forget.
        self._paused = 0.0

    # -- policy read-modify-write --------------------------------------------------------

    def _read(self, resource: str) -> dict[str, Any]:
        from googleapiclient.errors import HttpError

        try:
            policy = self._api.get(resource)
        except HttpError as exc:
            raise TargetError(f"{resource}: getIamPolicy answered HTTP {_status(exc)}") from None
        return policy

    def _change(
        self, resource: str, edit: Any, policy: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Apply `edit(policy) -> bool` (False: nothing to write) with the policy's etag,
        again on a concurrent change. Returns the policy as it stands afterwards. `policy`: the
        one this operation has just read and not written since (the etag refuses the write if
        it changed meanwhile), so that a grant or revoke reads each policy once before writing;
        None reads it now."""
        from googleapiclient.errors import HttpError

        conflicts = 0
        pauses = iter(self._backoff.delays)
        while True:
            # Read again before every further write: after a conflict or a pause the policy may
            # differ.
            if policy is None:
                policy = self._read(resource)
            if not edit(policy):
                return policy
            policy["version"] = POLICY_VERSION
            try:
                self._api.set(resource, policy)
            except HttpError as exc:
                status = _status(exc)
                limited = _rate_limited(exc)
                policy = None
                if limited is not None and self._pause(next(pauses, None)):
                    continue
                if limited is not None:
                    limit = "Google's rate limit"
                    if gcp_bigquery.is_dataset(resource):
                        limit = DATASET_UPDATE_LIMIT
                    raise TargetError(
                        f"{resource}: {limit} refused the write ({limited}) again after "
                        f"{self._paused:.0f} s of pauses: not a missing permission; the message "
                        "is retried"
                    ) from None
                if status in (409, 412):
                    conflicts += 1
                    if conflicts < ATTEMPTS:
                        time.sleep(0.2 * conflicts)
                        continue
                    raise TargetError(
                        f"{resource}: policy kept changing under the connector (HTTP {status})"
                    ) from None
                raise TargetError(f"{resource}: setIamPolicy answered HTTP {status}") from None
            # Read back: what the target holds is what the outcome reports.
            return self._read(resource)

    def _pause(self, delay: float | None) -> bool:
        """Wait `delay` (stretched by the jitter) before the next write; False, without waiting,
        when a write's pauses (None) or the message's budget have run out."""
        if delay is None:
            return False
        delay *= 1 + self._backoff.jitter * self._backoff.draw()
        if self._paused + delay > self._backoff.budget:
            return False
        self._paused += delay
        self._backoff.sleep(delay)
        return True

    def _ours(
        self, resource: str, policy: dict[str, Any]
    ) -> list[tuple[dict[str, Any], str, dict[str, Any]]]:
        found = []
        for binding in policy.get("bindings", []) or []:
            for member in binding.get("members", []) or []:
                label = read_label(self._key, resource, binding, member)
                if label is not None and label.get("i") == self.integration:
                    found.append((binding, member, label))
        return found

    def _policies(self) -> dict[str, dict[str, Any]]:
        """Every managed resource's policy, read once for the operation under way."""
        return {resource: self._read(resource) for resource in self.connection.resources}

    def _scan(
        self, grant_id: str, policies: dict[str, dict[str, Any]]
    ) -> tuple[list[tuple[str, dict[str, Any], str, dict[str, Any]]], list[tuple[str, str]]]:
        """The grant's bindings that verify as ours, as (resource, binding, member, label); and
        the bindings under its title that do not (edited or forged), as (resource, role)."""
        title = f"{TITLE_PREFIX}{grant_id}"
        found = []
        squatters = []
        for resource, policy in policies.items():
            ours = self._ours(resource, policy)
            found += [(resource, b, m, label) for b, m, label in ours if label.get("g") == grant_id]
            mine = {id(binding) for binding, _, _ in ours}
            for binding in policy.get("bindings", []) or []:
                condition = binding.get("condition") or {}
                if condition.get("title") == title and id(binding) not in mine:
                    squatters.append((resource, str(binding.get("role"))))
        return found, squatters

    # -- tombstones: objects of the connector's bucket, never bindings ----------------------

    def _tomb_name(self, grant_id: str) -> str:
        # Keyed: the name says nothing about the grant, and nobody without the label key can
        # plant an object where a grant's tombstone will be looked for.
        return TOMBSTONE_OBJECTS + self._key.keyed_hash(
            "gcp_iam tombstone", f"{self.integration}\0{grant_id}"
        )

    def _tomb_mac(self, bucket: str, name: str, body: str) -> str:
        return self._key.mac(KIND, "tombstone", bucket, name, body)

    def _buried(self, grant_id: str) -> bool | None:
        """True: the grant's tombstone is there; False: nothing is; None: an object is there
        that does not verify as the connector's."""
        bucket, name = self._api.tombstone_bucket(), self._tomb_name(grant_id)
        data = self._api.read_object(bucket, name)
        if data is None:
            return False
        text = data.decode("utf-8", "replace")
        mac, sep, body = text.removeprefix(PREFIX).partition(".")
        if (
            not text.startswith(PREFIX)
            or not sep
            or not hmac.compare_digest(mac, self._tomb_mac(bucket, name, body))
        ):
            return None
        try:
            label = json.loads(body)
        except ValueError:
            return None
        if not isinstance(label, dict) or (label.get("g"), label.get("i")) != (
            grant_id,
            self.integration,
        ):
            return None
        return True

    def _bury(self, grant_id: str, until: datetime) -> list[str]:
        """Write the grant's tombstone unless one is there (residual notes if that one is not
        the connector's)."""
        bucket, name = self._api.tombstone_bucket(), self._tomb_name(grant_id)
        body = _body(
            {"v": 1, "g": grant_id, "i": self.integration, "s": "t", "x": int(until.timestamp())}
        )
        data = f"{PREFIX}{self._tomb_mac(bucket, name, body)}.{body}".encode()
        if self._api.create_object(bucket, name, data):
            return []
        state = self._buried(grant_id)
        if state is False:
            raise TargetError("the tombstone object was deleted while it was being written")
        if state is None:
            # Still a tombstone (a grant finding it is refused), but not one this connector
            # wrote: someone who can write to the bucket put it under this keyed name.
            return [f"tombstone {bucket}/{name} does not verify as the connector's: left alone"]
        return []

    def _refuse_if_buried(
        self, grant_id: str, existing: list[tuple[str, dict[str, Any], str, dict[str, Any]]]
    ) -> None:
        state = self._buried(grant_id)
        if state is False:
            return
        # A binding of this grant beside its tombstone is one a concurrent revoke missed and
        # whose grant could not take it out again (it failed, and this is its retry): it goes.
        for resource, who in sorted({(r, w) for r, _, w, lab in existing if lab.get("s") == "a"}):
            self._strip_all(grant_id, [resource], who)
        if state is True:
            raise Refused("request_id", "this grant was already revoked; it will not be made again")
        if state is None:
            raise Refused(
                "request_id",
                "an object that does not verify as the connector's sits where this grant's "
                "tombstone belongs: the grant is not made",
            )

    # -- the session surface -------------------------------------------------------------

    def grant(self, spec: GrantSpec) -> GrantResult:
        self._paused = 0.0
        permission = spec.permission
        assert isinstance(permission, Permission)
        member = member_of(permission, spec.identity.email)
        digest = spec.request_digest[:16]
        title = f"{TITLE_PREFIX}{spec.grant_id}"
        policies = self._policies()
        existing, squatters = self._scan(spec.grant_id, policies)

        def refuse_if_squatted(resource: str, squatters: list[tuple[str, str]]) -> None:
            # Someone wrote a binding under this grant's title: never adopted, never edited, and
            # no grant is made beside it that a revoke could confuse.
            if any(where == resource for where, _ in squatters):
                raise Refused(
                    "grant_id",
                    f"{resource} has a binding titled {title!r} not created by this connector",
                )

        for resource in spec.resources:
            refuse_if_squatted(resource, squatters)
        for _, _, _, label in existing:
            if label.get("s") == "t":  # a tombstone binding, as earlier versions wrote them
                raise Refused(
                    "request_id", "this grant was already revoked; it will not be made again"
                )
            if digest and label.get("d") and label.get("d") != digest:
                raise Refused("request_id", "reused for a different request")
        self._refuse_if_buried(spec.grant_id, existing)
        label = {
            "v": 1, "g": spec.grant_id, "i": spec.integration, "p": spec.permission_name,
            "x": int(spec.expires_at.timestamp()), "s": "a", "d": digest,
        }  # fmt: skip
        done = {resource for resource, _, _, old in existing if old.get("s") == "a"}
        expires_at = spec.expires_at
        if existing:
            expires_at = datetime.fromtimestamp(int(existing[0][3]["x"]), UTC)
            label["x"] = int(expires_at.timestamp())
        try:
            for resource in spec.resources:
                if resource in done:
                    continue
                binding = make_binding(
                    self._key, resource, permission.role, member, spec.grant_id, label,
                    expression(expires_at),
                )  # fmt: skip

                def add(
                    policy: dict[str, Any],
                    resource: str = resource,
                    binding: dict[str, Any] = binding,
                ) -> bool:
                    bindings = policy.setdefault("bindings", [])
                    if binding in bindings:
                        return False
                    # Written since the grant's first read (its write was refused for the etag,
                    # and this is the policy read again): refused as that read would.
                    refuse_if_squatted(resource, self._scan(spec.grant_id, {resource: policy})[1])
                    _make_room(resource, bindings, binding, member)
                    bindings.append(binding)
                    return True

                after = self._change(resource, add, policies.pop(resource, None))
                if binding not in after.get("bindings", []):
                    raise TargetError(f"{resource}: the binding is not in the policy read back")
        except Refused:
            # No half-made grant stays behind a refusal: it would never be revoked by anyone.
            self._strip_all(spec.grant_id, spec.resources, member)
            raise
        # A revoke of this grant may have run meanwhile. It writes its tombstone before it reads
        # any policy, so either it read the bindings above and removed them, or its tombstone
        # is visible now and these bindings go again here.
        if self._buried(spec.grant_id) is not False:
            self._strip_all(spec.grant_id, spec.resources, member)
            raise Refused("request_id", "this grant was revoked while it was being made")
        return GrantResult(
            principal=member, reissued=bool(existing), expires_at=expires_at, note=PROPAGATION
        )

    def _strip(
        self,
        resource: str,
        grant_id: str,
        who: str,
        policy: dict[str, Any] | None = None,
        alone: list[str] | None = None,
    ) -> list[str]:
        """Remove `who` from the grant's active bindings on `resource`; what is left of them.
        `policy` as for `_change`. `alone` gathers the bindings under the grant's title that do
        not verify in the policy read back: one edited since the first read (whose write the
        etag refused) is no longer the connector's, and is named as one edited before it is."""

        def remove(policy: dict[str, Any]) -> bool:
            changed = False
            kept = []
            for item in policy.get("bindings", []) or []:
                label = read_label(self._key, resource, item, who)
                if label is not None and label.get("g") == grant_id and label.get("s") == "a":
                    # Only our member leaves; anyone else on the binding stays.
                    others = [m for m in item.get("members", []) if m != who]
                    changed = True
                    if others:
                        kept.append({**item, "members": others})
                    continue
                kept.append(item)
            policy["bindings"] = kept
            return changed

        after = self._change(resource, remove, policy)
        remaining = []
        for item in after.get("bindings", []) or []:
            left = read_label(self._key, resource, item, who)
            if left is not None and left.get("g") == grant_id and left.get("s") == "a":
                remaining.append(f"{resource}: {item.get('role')} {who}")
        if alone is not None:
            for _, role in self._scan(grant_id, {resource: after})[1]:
                alone.append(_left_alone(resource, role, grant_id))
        return remaining

    def _strip_all(self, grant_id: str, resources: Iterable[str], who: str) -> None:
        remaining = [line for r in resources for line in self._strip(r, grant_id, who)]
        if remaining:
            raise TargetError(f"could not remove a binding of a refused grant: {remaining}")

    def revoke(self, grant_id: str, tombstone_until: datetime) -> RevokeResult:
        self._paused = 0.0
        # The tombstone first, then the policies: a grant of this id running now either sees the
        # tombstone after its own write, or wrote before the reads below, which then remove it.
        try:
            residual = self._bury(grant_id, tombstone_until)
        except TargetError:
            # No tombstone (yet): the access still goes now, and the revoke fails, so the queue
            # retries it until its tombstone is written and a grant racing this one is undone.
            policies = self._policies()
            for resource, _, who, label in self._scan(grant_id, policies)[0]:
                if label.get("s") == "a":
                    self._strip(resource, grant_id, who, policies.pop(resource, None))
            raise
        policies = self._policies()
        existing, squatters = self._scan(grant_id, policies)
        active = [item for item in existing if item[3].get("s") == "a"]
        # Never touched, named in the outcome so that someone looks.
        alone = [_left_alone(resource, role, grant_id) for resource, role in squatters]
        if not active:
            # Nothing granted (yet: Cloud Tasks reorders): the tombstone refuses it when it comes.
            return RevokeResult(found=False, residual=residual + alone)
        member = active[0][2]
        expires_at = datetime.fromtimestamp(int(active[0][3]["x"]), UTC)
        remaining: list[str] = []
        for resource, who in sorted({(resource, who) for resource, _, who, _ in active}):
            remaining += self._strip(resource, grant_id, who, policies.pop(resource, None), alone)
        return RevokeResult(
            found=True, principal=member, expires_at=expires_at,
            residual=residual + list(dict.fromkeys(alone)) + remaining, verified=not remaining,
            note=PROPAGATION,
        )  # fmt: skip

    def forget(self, grant_id: str, principal: str | None = None) -> None:
        """Tombstone objects are deleted by the bucket's lifecycle rule; this removes tombstone
        *bindings*, which earlier versions of this template wrote into the policies."""
        self._paused = 0.0
        for resource in self.connection.resources:

            def drop(policy: dict[str, Any], resource: str = resource) -> bool:
                before = policy.get("bindings", []) or []
                kept = [
                    item
                    for item in before
                    if not any(
                        (label := read_label(self._key, resource, item, m)) is not None
                        and label.get("g") == grant_id
                        and label.get("s") == "t"
                        for m in item.get("members", []) or []
                    )
                ]
                policy["bindings"] = kept
                return len(kept) != len(before)

            self._change(resource, drop)

    def active_grants(self) -> list[Grant]:
        grants: dict[str, Grant] = {}
        for resource in self.connection.resources:
            for binding, member, label in self._ours(resource, self._read(resource)):
                state = "tombstone" if label.get("s") == "t" else "active"
                grant = grant_from_label(
                    KIND,
                    member,
                    {
                        "grant_id": label.get("g"),
                        "integration": label.get("i"),
                        "permission": label.get("p", ""),
                        "identity": member.partition(":")[2],
                        "expires_at": datetime.fromtimestamp(
                            int(label.get("x", 0)), UTC
                        ).isoformat(),
                        "state": state,
                        "resource": resource,
                        "role": binding.get("role"),
                    },
                )
                if grant is not None:
                    grants.setdefault(f"{grant.grant_id}:{state}", grant)
        return list(grants.values())

    def inventory_records(self) -> Iterator[InventoryRecord]:
        """Per managed resource: the roles bound there and the members holding them (names as
        IAM writes them); never a condition's expression or description."""
        for resource in self.connection.resources:
            yield InventoryRecord("resource", resource)
            roles: set[str] = set()
            members: set[str] = set()
            for binding in self._read(resource).get("bindings", []) or []:
                roles.add(str(binding.get("role")))
                members.update(str(m) for m in binding.get("members", []) or [])
            for role in sorted(roles):
                yield InventoryRecord("role", role, resource)
            for member in sorted(members):
                yield InventoryRecord("member", member, resource)

    def inventory(self) -> dict[str, list[str]]:
        members: set[str] = set()
        roles: set[str] = set()
        for resource in self.connection.resources:
            for binding in self._read(resource).get("bindings", []) or []:
                roles.add(str(binding.get("role")))
                members.update(str(m) for m in binding.get("members", []) or [])
        return {
            "resources": list(self.connection.resources),
            "roles": sorted(roles),
            "members": sorted(members),
        }

    def close(self) -> None:
        api, self._api = self._api, _Api()
        api.close()


class GcpIamTemplate:
    kind: ClassVar[str] = KIND
    Connection: ClassVar[type[Settings]] = Connection
    Permission: ClassVar[type[PermissionSettings]] = Permission
    uses_label_key: ClassVar[bool] = True

    def needs_secret_delivery(self, permission: PermissionSettings) -> bool:
        return False

    def check(self, connection: Settings, permission: PermissionSettings, spec: GrantSpec) -> None:
        assert isinstance(connection, Connection) and isinstance(permission, Permission)
        member = member_of(permission, spec.identity.email)
        if not any(fnmatch.fnmatchcase(member, p) for p in connection.allowed_members):
            raise Refused("identity", f"{member} is not among the connection's allowed members")
        if member.startswith("user:") and member.endswith(gcp_bigquery.SERVICE_ACCOUNT_DOMAIN):
            # A service account's address as a user: a dataset answers it as serviceAccount:,
            # another member than the label's, so the connector could never revoke it there.
            raise Refused("identity", f"{member} is a service account's address, not a user's")
        for index, resource in enumerate(spec.resources):
            if resource not in connection.resources:
                raise Refused(
                    f"resources[{index}]", f"{resource} is not managed by this connection"
                )

    def plan(self, connection: Settings, spec: GrantSpec) -> list[str]:
        permission = spec.permission
        assert isinstance(permission, Permission)
        member = member_of(permission, spec.identity.email)
        return [
            f"setIamPolicy {resource}: add {permission.role} for {member} "
            f"if {expression(spec.expires_at)} (title {TITLE_PREFIX}{spec.grant_id})"
            for resource in spec.resources
        ]

    def open(
        self,
        integration: str,
        connection: Settings,
        secret: Secret | None,
        label_key: LabelKey | None = None,
    ) -> GcpIamSession:
        assert isinstance(connection, Connection)
        # The connector's own service account reaches IAM (no stored credential); a secret
        # configured anyway is not used.
        del secret
        return GcpIamSession(integration, connection, required(label_key))
