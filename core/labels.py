"""Labels that make a target the ledger, authenticated with a connector secret.

Anyone who can write a comment, a tag or a description in a target can write text that looks
like our label. A label is therefore only acted on when it carries a MAC over its content and the
name of the thing it is attached to, keyed by a secret the connector reads from its secret store:
a forged label, or a genuine one copied onto another role, is ignored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from jitc.errors import TargetError

if TYPE_CHECKING:
    from jitc.templates.base import GrantSpec

PREFIX = "jitc:"
VERSION = 2


class LabelKey:
    """The connector's label secret, with one derived key per use so no two uses share a key.

    Immutable, compared and hashed by its secret. A plain class, not a frozen dataclass: a
    dataclass compiles its generated methods when its module is imported (~3M instructions
    each, in every cold start of every function)."""

    __slots__ = ("_keyed", "secret")
    secret: bytes
    # Per purpose: its derived key and how often it was used, then, from its third use on, a
    # keyed HMAC state to copy. A batch of one message uses each purpose once or twice, and a
    # one-shot `hmac.digest` under the derived key (~24k instructions) costs less than keying
    # a state (~14k) and copying it (~21k); a sweep MACs many labels, each from a copy.
    _keyed: dict[str, tuple[bytes, int] | hmac.HMAC]

    def __init__(self, secret: bytes) -> None:
        object.__setattr__(self, "secret", secret)
        object.__setattr__(self, "_keyed", {})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"LabelKey is immutable: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"LabelKey is immutable: cannot delete {name}")

    # Out of its repr: a traceback printed with its locals, a log line formatting a session,
    # or an assertion's report would otherwise show the key that MACs every label and derives
    # every grant's password.
    def __repr__(self) -> str:
        return "LabelKey()"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelKey):
            return NotImplemented
        return hmac.compare_digest(self.secret, other.secret)

    def __hash__(self) -> int:
        return hash(self.secret)

    def __reduce__(self) -> Any:
        # Like a Secret: the key that MACs every label never goes into a pickle or a copy.
        raise TypeError("a LabelKey cannot be pickled or copied")

    @classmethod
    def from_secret(cls, value: str) -> LabelKey:
        # A public or empty key would let anyone who can write a comment forge a label; the
        # catalog requires the key for every template that labels.
        if len(value) < 16:
            raise ValueError("a label key needs 16 characters or more")
        return cls(value.encode())

    def _hmac(self, purpose: str, message: bytes) -> bytes:
        keyed = self._keyed.get(purpose)
        if isinstance(keyed, hmac.HMAC):
            state = keyed.copy()
            state.update(message)
            return state.digest()
        if keyed is None:
            keyed = (hmac.digest(self.secret, f"jitc {purpose}".encode(), "sha256"), 0)
        derived, uses = keyed
        if uses < 2:
            self._keyed[purpose] = (derived, uses + 1)
            return hmac.digest(derived, message, "sha256")
        state = hmac.new(derived, digestmod=hashlib.sha256)
        self._keyed[purpose] = state
        state = state.copy()
        state.update(message)
        return state.digest()

    def mac(self, *parts: str) -> str:
        digest = self._hmac("label", "\0".join(parts).encode())
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def keyed_hash(self, purpose: str, value: str) -> str:
        """A value others may see without learning it (an email): unlike a plain hash, it cannot
        be reversed by hashing guesses without the key."""
        digest = self._hmac(purpose, value.encode())
        return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")

    def salt(self, *parts: str) -> bytes:
        """Four bytes only this key gives these parts: a password hash's salt that marks the
        user it was written for as the connector's, whatever its password."""
        return self._hmac("salt", "\0".join(parts).encode())[:4]

    def password(self, *parts: str) -> str:
        """A password that every delivery of one grant computes alike, so a redelivery can hand
        out the credentials again without changing them."""
        digest = self._hmac("password", "\0".join(parts).encode())
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


# json.dumps with these options builds a new encoder at every call: one, made once.
_LABEL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def sign_label(key: LabelKey, kind: str, principal: str, label: dict[str, Any]) -> str:
    """`jitc:<mac>.<json>`, the MAC binding the content to the target kind and principal."""
    body = _LABEL_JSON.encode({**label, "v": VERSION})
    return f"{PREFIX}{key.mac(kind, principal, body)}.{body}"


def verify_label(
    key: LabelKey, kind: str, principal: str, text: str | None
) -> dict[str, Any] | None:
    """The label, if it is ours and was written for this principal; None for anything else."""
    if not text or not text.startswith(PREFIX):
        return None
    mac, sep, body = text[len(PREFIX) :].partition(".")
    if not sep or not hmac.compare_digest(mac, key.mac(kind, principal, body)):
        return None
    try:
        label = json.loads(body)
    except ValueError:
        return None
    if not isinstance(label, dict) or label.get("v") != VERSION:
        return None
    return label


def required(key: LabelKey | None) -> LabelKey:
    """The label key a labelling template cannot work without (the catalog requires it, so
    only a caller bypassing the catalog can get here)."""
    if key is None:
        raise TargetError("connector.label_key is required for a template that labels its grants")
    return key


# -- compact labels ---------------------------------------------------------------------------
# The ledger entry of a grant small enough to be an ACL user's channel pattern (Redis) or a user
# tag (RabbitMQ). Those targets have no free-text comment, and a RabbitMQ tag cannot hold a
# comma, so the label is colon-separated fields rather than JSON:
#
#     jitc1:<integration>:<grant id>:<state>:<expiry, unix seconds>:<permission>:<digest>:<mac>
#
# Only what a revoke or the sweep needs is kept (no e-mail address: anyone who may list users
# would read it). The MAC (`LabelKey.mac`) binds the fields to the target kind and the principal
# the label is attached to, so a label copied onto another user, or written by someone without
# the key, is never acted on. Every encode and verify of these templates goes through
# `encode_compact_label` / `decode_compact_label`.

COMPACT_PREFIX = "jitc1"
CompactState = Literal["active", "tombstone"]
_STATE_CODE: dict[str, CompactState] = {"a": "active", "t": "tombstone"}
_CODE = {state: code for code, state in _STATE_CODE.items()}
_FIELD = re.compile(r"^[a-z0-9_.-]{1,63}$")
_DIGEST = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class CompactLabel(NamedTuple):  # not a frozen dataclass: see jitc.gcp.handlers.HttpRequest
    integration: str
    grant_id: str
    state: CompactState
    expires_at: datetime
    permission: str
    digest: str

    def body(self) -> str:
        # A field that could hold a separator would write a label nothing can read back: a
        # grant no revoke or sweep would find. Refuse it rather than write it.
        if not (
            _FIELD.match(self.integration)
            and _FIELD.match(self.permission)
            and re.match(r"^g[a-z2-7]{24}$", self.grant_id)
            and _DIGEST.match(self.digest)
        ):
            raise ValueError("a label field holds a character labels cannot carry")
        epoch = int(self.expires_at.timestamp())
        code = _CODE[self.state]
        return (
            f"{COMPACT_PREFIX}:{self.integration}:{self.grant_id}:{code}:{epoch}:"
            f"{self.permission}:{self.digest}"
        )


def spec_digest(spec: GrantSpec) -> str:
    """What the grant asked for: a redelivery has the same digest; another request reusing the
    request id (and so the grant id) does not, and is refused."""
    given = getattr(spec, "request_digest", "")
    if isinstance(given, str) and _DIGEST.match(given):
        return given
    identity = spec.identity
    text = "\0".join(
        [
            spec.request_id,
            spec.permission_name,
            ",".join(spec.resources),
            identity.email,
            identity.username or "",
            identity.public_key or "",
            spec.expires_at.isoformat(),
        ]
    )
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()[:16]).decode()[:22]


def encode_compact_label(
    key: LabelKey, kind: str, principal: str | None, label: CompactLabel
) -> str:
    """The label text. `principal` is the user the label is attached to (None when the label is
    itself the user name, as in Redis)."""
    body = label.body()
    return f"{body}:{key.mac(kind, principal or '', body)}"


def decode_compact_label(
    key: LabelKey, kind: str, principal: str | None, text: str
) -> CompactLabel | None:
    """The label, if it is ours, intact and written for this principal; None for anything else."""
    if not text.startswith(COMPACT_PREFIX + ":"):
        return None
    body, sep, mac = text.rpartition(":")
    if not sep or not hmac.compare_digest(mac, key.mac(kind, principal or "", body)):
        return None
    parts = body.split(":")
    if len(parts) != 7:
        return None
    _, integration, grant_id, code, epoch, permission, digest = parts
    if (
        code not in _STATE_CODE
        or not _FIELD.match(integration)
        or not _FIELD.match(permission)
        or not re.match(r"^g[a-z2-7]{24}$", grant_id)
        or not epoch.isascii()
        or not epoch.isdigit()
        or len(epoch) > 12
    ):
        return None
    return CompactLabel(
        integration=integration,
        grant_id=grant_id,
        state=_STATE_CODE[code],
        expires_at=datetime.fromtimestamp(int(epoch), UTC),
        permission=permission,
        digest=digest,
    )


def label_prefix(integration: str, grant_id: str | None = None) -> str:
    """The start every label of an integration (or of one grant) shares: a cheap filter before
    the MAC is checked."""
    return f"{COMPACT_PREFIX}:{integration}:" + (f"{grant_id}:" if grant_id else "")
