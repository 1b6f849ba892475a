"""The surface every template offers, and the label that makes the target the ledger."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from datetime import datetime
from types import ModuleType
from typing import Any, ClassVar, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field

from jitc.models import Duration, Grant, Identity, Resource
from jitc.secrets import Secret

LABEL_PREFIX = "jitc:"


class Settings(BaseModel):
    """Base of a template's catalog settings: strict, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def keep_connection_field(kept: str = "connection") -> Any:
    """The `keep_connection_seconds` setting of a template whose admin sessions are kept across
    batches (`jitc.templates.kept`)."""
    return Field(
        default=300,
        ge=0,
        le=3600,
        description=f"keep the admin {kept} this long after a batch for the next one with the "
        f"same secret; 0: a new one per batch",
    )


class PermissionSettings(Settings):
    """What every permission has; templates add their own fields."""

    description: str = ""
    resources: list[Resource] = Field(min_length=1, description="resources a request may name")
    max_duration: Duration | None = Field(
        default=None, description="tighter limit than the integration's max_duration"
    )


@functools.cache
def _sealing() -> ModuleType:
    """`jitc.sealing`, imported (with PyNaCl) when a grant first seals credentials; then an
    import statement no more at every grant."""
    from jitc import sealing

    return sealing


# The records below are plain classes, not dataclasses: a dataclass compiles its generated
# methods when its module is imported (~2-6M instructions each), in every cold start of every
# function, and nothing here needs more than an __init__ and a repr.


def fields_repr(record: object, names: tuple[str, ...]) -> str:
    fields = ", ".join(f"{name}={getattr(record, name)!r}" for name in names)
    return f"{type(record).__name__}({fields})"


class GrantSpec:
    """A validated grant, ready for a template: everything comes from the catalog or was checked.
    Immutable once made."""

    _FIELDS: ClassVar[tuple[str, ...]] = (
        "grant_id", "request_id", "integration", "permission_name", "permission", "resources",
        "identity", "expires_at", "request_digest",
    )  # fmt: skip
    __slots__ = (*_FIELDS, "_sealed")
    grant_id: str
    request_id: str
    integration: str
    permission_name: str
    permission: PermissionSettings
    resources: tuple[str, ...]
    identity: Identity
    expires_at: datetime
    request_digest: str
    # Credentials sealed ahead (`seal_ahead`), with the box made for them: it lives and dies
    # with this grant's spec.
    _sealed: list[tuple[dict[str, str], str]]

    def __init__(
        self,
        grant_id: str,
        request_id: str,
        integration: str,
        permission_name: str,
        permission: PermissionSettings,
        resources: tuple[str, ...],
        identity: Identity,
        expires_at: datetime,
        request_digest: str = "",
    ) -> None:
        init = object.__setattr__
        init(self, "grant_id", grant_id)
        init(self, "request_id", request_id)
        init(self, "integration", integration)
        init(self, "permission_name", permission_name)
        init(self, "permission", permission)
        init(self, "resources", resources)
        init(self, "identity", identity)
        init(self, "expires_at", expires_at)
        init(self, "request_digest", request_digest)
        init(self, "_sealed", [])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"GrantSpec is immutable: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"GrantSpec is immutable: cannot delete {name}")

    def __repr__(self) -> str:
        return fields_repr(self, self._FIELDS)

    def __reduce__(self) -> Any:
        # copy, deepcopy and pickle make it again from its fields (nothing sealed ahead).
        return (GrantSpec, tuple(getattr(self, name) for name in self._FIELDS))

    def replace(self, **changes: Any) -> GrantSpec:
        """A copy with these fields changed (nothing sealed ahead is carried over)."""
        return GrantSpec(**{name: getattr(self, name) for name in self._FIELDS} | changes)

    def seal_ahead(self, credentials: dict[str, str]) -> None:
        """Seal credentials for the requester now: a template that knows them before its last
        round trip calls this while the target works, so sealing (two X25519 operations, the
        largest piece of a grant's own client work) takes no time of its own. The engine uses
        the box only for exactly these credentials; any other outcome is sealed afresh.
        Never raises: it runs between a template's write and the reads that check it, which a
        failure here would skip; the engine's own seal reports any error, after them."""
        key = self.identity.public_key
        if key is not None and not self._sealed:
            try:
                box = _sealing().seal(credentials, key)
            except Exception:
                return
            self._sealed.append((credentials, box))

    def sealed_for(self, credentials: dict[str, str]) -> str | None:
        for sealed, box in self._sealed:
            if sealed == credentials:
                return box
        return None

    def label(self, **extra: Any) -> dict[str, Any]:
        """The label a template writes into the target: all a revoke or sweep will ever need."""
        return {
            "v": 1,
            "grant_id": self.grant_id,
            "request_id": self.request_id,
            "integration": self.integration,
            "permission": self.permission_name,
            "identity": self.identity.email,
            "expires_at": self.expires_at.isoformat(),
            "state": "active",
            **extra,
        }


class InventoryRecord(NamedTuple):
    """One name a target holds: what kind of thing, its name, and what it belongs to (a table's
    schema, a user's host). Names only: never a row, a secret, or a policy's text."""

    kind: str
    name: str
    parent: str | None = None
    arn: str | None = None
    id: str | None = None  # the target's own id where names are not unique (a user's id)


class GrantResult:
    __slots__ = ("credentials", "expires_at", "note", "principal", "reissued")

    def __init__(
        self,
        principal: str,
        credentials: dict[str, str] | None = None,
        reissued: bool = False,
        expires_at: datetime | None = None,
        note: str | None = None,
    ) -> None:
        self.principal = principal
        self.credentials = credentials
        self.reissued = reissued
        # The expiry the target recorded for this grant (on a redelivery: the first delivery's).
        self.expires_at = expires_at
        # What the requester should know about this grant (e.g. how long the target takes to
        # apply it everywhere); becomes the outcome's message.
        self.note = note

    def __repr__(self) -> str:
        # Credentials are never shown, only whether there are any.
        shown = "<withheld>" if self.credentials is not None else "None"
        return (
            f"GrantResult(principal={self.principal!r}, credentials={shown}, "
            f"reissued={self.reissued!r}, expires_at={self.expires_at!r}, note={self.note!r})"
        )


class RevokeResult:
    __slots__ = ("expires_at", "found", "note", "principal", "residual", "verified")

    def __init__(
        self,
        found: bool,
        principal: str | None = None,
        expires_at: datetime | None = None,
        residual: list[str] | None = None,
        verified: bool = True,
        note: str | None = None,
    ) -> None:
        self.found = found
        self.principal = principal
        self.expires_at = expires_at
        self.residual = [] if residual is None else residual
        self.verified = verified
        self.note = note

    def __repr__(self) -> str:
        return fields_repr(self, self.__slots__)


def tombstone_label(
    grant_id: str, integration: str, label: dict[str, Any], until: datetime
) -> dict[str, Any]:
    """The label of a tombstone: a revoked grant remembered until `until`, so that a late or
    repeated delivery of that grant is refused until it could no longer be valid anyway."""
    return {
        "v": 1,
        "grant_id": grant_id,
        "request_id": label.get("request_id", ""),
        "integration": integration,
        "permission": label.get("permission", ""),
        "identity": label.get("identity", ""),
        "expires_at": until.isoformat(),
        "state": "tombstone",
    }


def encode_label(label: dict[str, Any]) -> str:
    return LABEL_PREFIX + json.dumps(label, sort_keys=True, separators=(",", ":"))


def decode_label(text: str | None) -> dict[str, Any] | None:
    """Our label, or None for anything that is not ours (never act on what we did not create)."""
    if not text or not text.startswith(LABEL_PREFIX):
        return None
    try:
        label = json.loads(text[len(LABEL_PREFIX) :])
    except ValueError:
        return None
    if not isinstance(label, dict) or label.get("v") != 1 or "grant_id" not in label:
        return None
    return label


def grant_from_label(kind: str, principal: str, label: dict[str, Any]) -> Grant | None:
    """The grant a label describes; None for a damaged label, which is then not ours to act on."""
    known = {
        "grant_id",
        "request_id",
        "integration",
        "permission",
        "identity",
        "expires_at",
        "state",
    }
    try:
        return Grant.model_validate(
            {
                "grant_id": label["grant_id"],
                "request_id": label.get("request_id", ""),
                "integration": label["integration"],
                "permission": label.get("permission", ""),
                "kind": kind,
                "principal": principal,
                "identity": label.get("identity", ""),
                "expires_at": datetime.fromisoformat(label["expires_at"]),
                "state": label.get("state", "active"),
                "detail": {k: v for k, v in label.items() if k not in known and k != "v"},
            },
            strict=False,
        )
    except (KeyError, TypeError, ValueError):
        return None


class TargetSession(Protocol):
    """One open connection to a target, used for a batch and then closed."""

    def grant(self, spec: GrantSpec) -> GrantResult: ...

    def revoke(self, grant_id: str, tombstone_until: datetime) -> RevokeResult: ...

    def forget(self, grant_id: str, principal: str | None = None) -> None:
        """Remove a grant's tombstone once no delivery of it can still succeed. `principal`:
        the name `active_grants` listed it under (one made under an earlier prefix keeps that
        one), else the one today's settings give."""
        ...

    def active_grants(self) -> list[Grant]: ...

    def inventory(self) -> dict[str, list[str]]: ...

    def inventory_records(self) -> Iterator[InventoryRecord]:
        """The target's names, streamed in a stable order (for `jitc sync`)."""
        ...

    def close(self) -> None: ...


class Template(Protocol):
    """A target kind. `plan` needs no connection and has no side effects."""

    kind: ClassVar[str]
    Connection: ClassVar[type[Settings]]
    Permission: ClassVar[type[PermissionSettings]]

    def needs_secret_delivery(self, permission: PermissionSettings) -> bool:
        """True when the grant generates credentials, which need the identity's public key."""
        ...

    def check(self, connection: Settings, permission: PermissionSettings, spec: GrantSpec) -> None:
        """Refuse (jitc.errors.Refused) what the template cannot do for this request."""
        ...

    def plan(self, connection: Settings, spec: GrantSpec) -> list[str]: ...

    def open(
        self, integration: str, connection: Settings, secret: Secret | None
    ) -> TargetSession: ...
