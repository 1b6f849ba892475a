"""Compact labels: the ledger entry of a grant, small enough to be an ACL user name (Redis) or a
user tag (RabbitMQ), authenticated with a MAC.

Those targets have no free-text comment, and a RabbitMQ tag cannot hold a comma, so the label is
colon-separated fields rather than JSON:

    jitc1:<integration>:<grant id>:<state>:<expiry, unix seconds>:<permission>:<digest>:<mac>

Only what a revoke or the sweep needs is kept (no e-mail address: anyone who may list users would
read it). The MAC binds the fields to the target kind and the principal the label is attached to,
so a label copied onto another user, or written by someone without the key, is never acted on.
The MAC is `jitc.labels.LabelKey.mac`, keyed by the connector's label key like every other
template's labels. Every encode and verify of these templates goes through `encode_label` /
`decode_label`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from jitc.labels import LabelKey
from jitc.templates.base import GrantSpec

PREFIX = "jitc1"
State = Literal["active", "tombstone"]
_STATE_CODE: dict[str, State] = {"a": "active", "t": "tombstone"}
_CODE = {state: code for code, state in _STATE_CODE.items()}
_FIELD = re.compile(r"^[a-z0-9_.-]{1,63}$")
_DIGEST = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


@dataclass(frozen=True)
class Label:
    integration: str
    grant_id: str
    state: State
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
            f"{PREFIX}:{self.integration}:{self.grant_id}:{code}:{epoch}:"
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


def encode_label(key: LabelKey, kind: str, principal: str | None, label: Label) -> str:
    """The label text. `principal` is the user the label is attached to (None when the label is
    itself the user name, as in Redis)."""
    body = label.body()
    return f"{body}:{key.mac(kind, principal or '', body)}"


def decode_label(key: LabelKey, kind: str, principal: str | None, text: str) -> Label | None:
    """The label, if it is ours, intact and written for this principal; None for anything else."""
    if not text.startswith(PREFIX + ":"):
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
    return Label(
        integration=integration,
        grant_id=grant_id,
        state=_STATE_CODE[code],
        expires_at=datetime.fromtimestamp(int(epoch), UTC),
        permission=permission,
        digest=digest,
    )


def is_loopback(host: str) -> bool:
    """This machine's loopback address: no network carries the admin password."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def label_prefix(integration: str, grant_id: str | None = None) -> str:
    """The start every label of an integration (or of one grant) shares: a cheap filter before
    the MAC is checked."""
    return f"{PREFIX}:{integration}:" + (f"{grant_id}:" if grant_id else "")
