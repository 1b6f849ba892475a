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

from jitc.errors import TargetError

PREFIX = "jitc:"
VERSION = 2


@dataclass(frozen=True)
class LabelKey:
    """The connector's label secret, with one derived key per use so no two uses share a key."""

    secret: bytes

    @classmethod
    def from_secret(cls, value: str) -> LabelKey:
        # A public or empty key would let anyone who can write a comment forge a label; the
        # catalog requires the key for every template that labels.
        if len(value) < 16:
            raise ValueError("a label key needs 16 characters or more")
        return cls(value.encode())

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

    def password(self, *parts: str) -> str:
        """A password that every delivery of one grant computes alike, so a redelivery can hand
        out the credentials again without changing them."""
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


def required(key: LabelKey | None) -> LabelKey:
    """The label key a labelling template cannot work without (the catalog requires it, so
    only a caller bypassing the catalog can get here)."""
    if key is None:
        raise TargetError("connector.label_key is required for a template that labels its grants")
    return key
