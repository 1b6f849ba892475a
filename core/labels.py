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
from dataclasses import dataclass
from functools import cached_property
from typing import Any

PREFIX = "jitc:"
VERSION = 2
# Without a configured key labels still carry a MAC, under this public key: they then guard
# against damage, not against forgery, and `jitc catalog check` says so.
UNKEYED = b"jitc unkeyed label key: set connector.label_key"


@dataclass(frozen=True)
class LabelKey:
    """The connector's label secret, with one derived key per use so no two uses share a key."""

    secret: bytes
    keyed: bool

    @classmethod
    def from_secret(cls, value: str | None) -> LabelKey:
        if not value:
            return cls(UNKEYED, keyed=False)
        return cls(value.encode(), keyed=True)

    def _derive(self, purpose: str) -> bytes:
        return hmac.new(self.secret, f"jitc {purpose}".encode(), hashlib.sha256).digest()

    @cached_property
    def _label_key(self) -> bytes:
        return self._derive("label")

    def mac(self, *parts: str) -> str:
        message = "\0".join(parts).encode()
        digest = hmac.new(self._label_key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def keyed_hash(self, purpose: str, value: str) -> str:
        """A value others may see without learning it (an email): unlike a plain hash, it cannot
        be reversed by hashing guesses without the key."""
        digest = hmac.new(self._derive(purpose), value.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")

    def password(self, *parts: str) -> str | None:
        """A password that every delivery of one grant computes alike, so a redelivery can hand
        out the credentials again without changing them; None without a configured key."""
        if not self.keyed:
            return None
        message = "\0".join(parts).encode()
        digest = hmac.new(self._derive("password"), message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign_label(key: LabelKey, kind: str, principal: str, label: dict[str, Any]) -> str:
    """`jitc:<mac>.<json>`, the MAC binding the content to the target kind and principal."""
    body = json.dumps({**label, "v": VERSION}, sort_keys=True, separators=(",", ":"))
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
