"""The control plane's contract: access requests, grants, outcomes and audit events.

Every model is strict and refuses unknown fields; `schemas/` holds their JSON Schemas.
"""

import base64
import binascii
import functools
import hashlib
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
GrantId = Annotated[str, StringConstraints(pattern=r"^g[a-z2-7]{24}$")]
Resource = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:/*@+=,-]{0,254}$")]
Email = Annotated[
    str,
    StringConstraints(
        max_length=254,
        pattern=r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$",
    ),
]
Username = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$")]
_GUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
ObjectId = Annotated[str, StringConstraints(pattern=_GUID)]

_DURATION_SHORT = re.compile(r"^(?:(\d{1,4})d)?(?:(\d{1,5})h)?(?:(\d{1,6})m)?(?:(\d{1,7})s)?$")
_DURATION_ISO = re.compile(r"^P(?:(\d{1,4})D)?(?:T(?:(\d{1,5})H)?(?:(\d{1,6})M)?(?:(\d{1,7})S)?)?$")


def parse_duration(text: str) -> timedelta:
    """Parse `15m`, `2h`, `1h30m`, `1d` or ISO 8601 `PT15M`, `P1DT2H`; refuse zero and garbage."""
    match = _DURATION_SHORT.match(text) or _DURATION_ISO.match(text)
    if not text or match is None or not any(match.groups()):
        raise ValueError("expected a duration such as '15m', '2h', '1h30m' or 'PT15M'")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    value = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if value <= timedelta(0):
        raise ValueError("duration must be positive")
    return value


def _check_duration(text: str) -> str:
    parsed_duration(text)  # a refusal raises, and is not cached
    return text


def _check_public_key(text: str) -> str:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("public_key must be base64") from None
    if len(raw) != 32:
        raise ValueError("public_key must be a base64 X25519 public key (32 bytes)")
    if not _sealable(raw):
        raise ValueError("public_key is a point of small order: nothing can be sealed to it")
    return text


@functools.lru_cache(maxsize=1024)
def _sealable(raw: bytes) -> bool:
    """Whether a sealed box can be made for this key. With a point of small order the shared
    secret is all zeros, which libsodium refuses: such a key would fail a grant only once the
    target has made it, leaving access no one receives, made again by every redelivery. A
    requester's key repeats across requests, so each is checked (one X25519 operation) once."""
    from nacl.bindings import crypto_scalarmult  # PyNaCl, imported on the first key checked
    from nacl.exceptions import CryptoError

    try:
        # libsodium clamps the scalar to a multiple of the cofactor, as it does a box's
        # ephemeral one: the product is zero exactly for the keys a box cannot be sealed to.
        crypto_scalarmult(bytes([1]) * 32, raw)
    except CryptoError:
        return False
    return True


Duration = Annotated[str, StringConstraints(max_length=32), AfterValidator(_check_duration)]
PublicKey = Annotated[str, StringConstraints(max_length=64), AfterValidator(_check_public_key)]


def derive_grant_id(integration: str, request_id: str) -> str:
    """A pure function of the request, so every redelivery lands on the same grant: "g" and
    the lower-case base32 of the first 15 bytes of a sha256 (120 bits, 24 characters)."""
    digest = hashlib.sha256(f"{integration}\0{request_id}".encode()).digest()
    # `base64.b32encode` is pure Python (~10 us); 10 bits at a time from one integer is ~2 us.
    bits = int.from_bytes(digest[:15], "big")
    return "g" + "".join([_B32_PAIRS[(bits >> shift) & 0x3FF] for shift in _B32_SHIFTS])


_B32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_B32_PAIRS = [a + b for a in _B32_ALPHABET for b in _B32_ALPHABET]
_B32_SHIFTS = range(110, -1, -10)


def request_digest(request: BaseModel) -> str:
    """What a request asked for, as a short hash: a redelivery carries the same, and another
    request reusing the request id does not."""
    return hashlib.sha256(request.model_dump_json().encode()).hexdigest()[:32]


def utcnow() -> datetime:
    return datetime.now(UTC)


# A duration parsed once per text: every grant asks for its expiry, every batch for the skew.
parsed_duration = functools.lru_cache(maxsize=256)(parse_duration)


def empty_list() -> list[Any]:
    """`default_factory=list` without its cost at class creation: pydantic reads each factory's
    signature, and a builtin's is parsed from its text signature (the first one compiles the
    tokenize module's regexes, ~5 ms of every cold start that builds such a model)."""
    return []


def _event_id() -> str:
    """What `uuid.uuid4().hex` gives (random, version 4, RFC 4122 variant) without building a
    UUID object: two for every request."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    return raw.hex()


class _Strict(BaseModel):
    # Every model here is built when first used, not at import: this base is never used alone,
    # and the sweep never parses a request (Identity, AccessRequest), so neither pays for what
    # it does not use in its cold start.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, defer_build=True)


class Identity(_Strict):
    """Who receives the access."""

    email: Email
    username: Username | None = None
    object_id: ObjectId | None = Field(
        default=None, description="Entra ID object id of the user, group or service principal"
    )
    public_key: PublicKey | None = Field(
        default=None,
        description="X25519 public key (base64); generated credentials are sealed to it",
    )


class AccessRequest(_Strict):
    """A grant or revoke asked for by the control plane."""

    request_id: RequestId
    action: Literal["grant", "revoke"]
    integration: Name
    permission: Name | None = None
    resources: list[Resource] = Field(default_factory=empty_list, max_length=32)
    identity: Identity | None = None
    duration: Duration | None = None
    expires_at: AwareDatetime | None = None
    justification: str | None = Field(default=None, max_length=2000)
    grant_id: GrantId | None = Field(
        default=None, description="revoke only: the grant to end (default: the grant of request_id)"
    )

    @field_validator("expires_at")
    @classmethod
    def _in_calendar(cls, value: datetime | None) -> datetime | None:
        # A date at the edge of the calendar with an offset has no UTC form: refuse it here, as
        # invalid input, rather than fail later with an OverflowError.
        if value is None:
            return None
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("expires_at is outside the representable range") from None

    @model_validator(mode="after")
    def _shape(self) -> Self:
        if self.action == "grant":
            missing = [
                name
                for name, value in (
                    ("permission", self.permission),
                    ("identity", self.identity),
                )
                if value is None
            ]
            if not self.resources:
                missing.append("resources")
            if missing:
                raise ValueError(f"a grant needs {', '.join(missing)}")
            if (self.duration is None) == (self.expires_at is None):
                raise ValueError("a grant needs exactly one of duration or expires_at")
            if self.grant_id is not None:
                raise ValueError("grant_id is chosen by the connector, not by a grant request")
        elif self.duration is not None or self.expires_at is not None:
            raise ValueError("a revoke takes no duration or expires_at")
        return self

    # Derived once per request and kept in the instance's __dict__ (the model is frozen, so
    # they cannot go stale): the engine asks for the grant id many times per request, and a
    # sha256 with its base32 is ~5 us each time. Neither is a field: they are in no dump,
    # comparison or hash of the model (tests/test_models.py).
    @functools.cached_property
    def target_grant_id(self) -> str:
        return self.grant_id or derive_grant_id(self.integration, self.request_id)

    @functools.cached_property
    def digest(self) -> str:
        """`request_digest` of this request."""
        return request_digest(self)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        # A copy with other field values must derive its own grant id and digest.
        copied = super().model_copy(update=update, deep=deep)
        for name in _DERIVED:
            copied.__dict__.pop(name, None)
        return copied

    def expiry(self, issued_at: datetime) -> datetime:
        """Absolute expiry: a duration counts from when the control plane signed the request,
        so every redelivery computes the same expiry; a late delivery gets less time, not more.
        Whole seconds, rounded down: that is what every target's label records, so the first
        outcome and a redelivery's (read back from the label) name the same instant."""
        if self.expires_at is not None:
            exact = self.expires_at.astimezone(UTC)
        else:
            assert self.duration is not None
            exact = issued_at.astimezone(UTC) + parsed_duration(self.duration)
        return exact.replace(microsecond=0)


_DERIVED = ("target_grant_id", "digest")

Status = Literal["planned", "granted", "revoked", "refused", "failed"]


class Grant(_Strict):
    """What a grant created in a target, as recorded in the target's own label."""

    # Grant, Outcome and AuditEvent are built when first used (by the worker and the sweep):
    # the intake never makes one, and skips building them in its cold start.
    model_config = ConfigDict(defer_build=True)

    grant_id: GrantId
    request_id: str
    integration: Name
    permission: str
    kind: str
    principal: str
    identity: str
    expires_at: AwareDatetime
    state: Literal["active", "revoking", "tombstone"] = "active"
    detail: dict[str, Any] = Field(default_factory=dict)


class Outcome(_Strict):
    """The answer to one request, sent back to the control plane as a signed event."""

    model_config = ConfigDict(defer_build=True)

    request_id: RequestId
    action: Literal["grant", "revoke", "sweep"]
    status: Status
    integration: Name | None = None
    grant_id: GrantId | None = None
    principal: str | None = None
    expires_at: AwareDatetime | None = None
    field: str | None = Field(default=None, description="the request field a refusal is about")
    message: str | None = None
    statements: list[str] = Field(
        default_factory=empty_list, description="plan only; secrets masked"
    )
    sealed_credentials: str | None = Field(
        default=None, description="credentials sealed to identity.public_key (base64 sealed box)"
    )
    credentials: dict[str, str] | None = Field(
        default=None, description="plain credentials: local CLI only, and only when asked"
    )
    reissued: bool = False
    residual: list[str] = Field(
        default_factory=empty_list, description="what a revoke could not remove yet"
    )
    verified: bool | None = Field(default=None, description="revoke checked that access is gone")
    revocation_lag_seconds: float | None = None


class AuditEvent(_Strict):
    """One structured record of what the connector did. Never carries a secret."""

    model_config = ConfigDict(defer_build=True)

    event_id: str = Field(default_factory=_event_id)
    time: AwareDatetime = Field(default_factory=utcnow)
    type: Literal["grant", "revoke", "refusal", "failure", "sweep"]
    status: Status
    request_id: str | None = None
    grant_id: str | None = None
    integration: str | None = None
    permission: str | None = None
    identity: str | None = None
    principal: str | None = None
    expires_at: AwareDatetime | None = None
    justification: str | None = Field(default=None, description="as the request gave it")
    field: str | None = None
    message: str | None = None
    residual: list[str] = Field(default_factory=empty_list)
    verified: bool | None = None
    revocation_lag_seconds: float | None = None


INVENTORY_SCHEMA_VERSION = 1
INVENTORY_NAME_MAX = 512  # characters of a name sent; longer ones are cut and marked


# The inventory's models (what `jitc sync` sends) and SCHEMA_MODELS are in
# `jitc.inventory_models`: defining them costs ~12M instructions (pydantic collecting their
# fields, even unbuilt) in every function's cold start, and no function's first request uses them.
