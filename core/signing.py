"""Signed envelopes: Ed25519 over `timestamp.body`, checked for key, signature, age and replay.

The control plane signs requests; the connector signs the events it sends back. The same
envelope travels over HTTP (as headers) and through the queue (as JSON), so a company that
accepts no inbound HTTP can let the control plane put envelopes on the queue directly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, NamedTuple

from jitc.errors import Refused

if TYPE_CHECKING:
    from nacl.signing import SigningKey, VerifyKey

HEADER_TIMESTAMP = "X-Jitc-Timestamp"
HEADER_KEY_ID = "X-Jitc-Key-Id"
HEADER_SIGNATURE = "X-Jitc-Signature"
MAX_TIMESTAMP = 10**12 - 1  # twelve digits, as the header allows


# PyNaCl (~6 ms to import: libsodium and every binding) is loaded when a signature is first made
# or checked, not with this module: the GCP worker and sweep import it for the envelope's shape
# and never verify one in an expiry's or a sweep's cold start.
def _signing_key(seed: bytes | None = None) -> SigningKey:
    from nacl.signing import SigningKey

    return SigningKey.generate() if seed is None else SigningKey(seed)


def _verify_key(public: bytes) -> VerifyKey:
    from nacl.signing import VerifyKey

    return VerifyKey(public)


@cache
def _decoy_key() -> str:
    """Verified against when the key id is unknown, so that an unknown key costs what a bad
    signature costs and gets the same answer: the refusal must not tell which key ids exist."""
    return base64.b64encode(bytes(_signing_key().verify_key)).decode()


class Envelope(NamedTuple):  # not a frozen dataclass: see jitc.gcp.handlers.HttpRequest
    """A body and its signature, as sent by the control plane."""

    key_id: str
    timestamp: int
    signature: str
    body: bytes

    def to_json(self) -> dict[str, str | int]:
        return {
            "key_id": self.key_id,
            "timestamp": self.timestamp,
            "signature": self.signature,
            "body": self.body.decode("utf-8"),
        }

    @classmethod
    def from_json(cls, doc: object) -> Envelope:
        if not isinstance(doc, dict):
            raise Refused("envelope", "expected a JSON object")
        try:
            key_id, timestamp, signature, body = (
                doc["key_id"],
                doc["timestamp"],
                doc["signature"],
                doc["body"],
            )
        except KeyError as exc:
            raise Refused(f"envelope.{exc.args[0]}", "missing") from None
        if not (isinstance(key_id, str) and isinstance(signature, str) and isinstance(body, str)):
            raise Refused("envelope", "key_id, signature and body must be strings")
        if not isinstance(timestamp, int) or isinstance(timestamp, bool):
            raise Refused("envelope.timestamp", "must be an integer (Unix seconds)")
        if not 0 <= timestamp <= MAX_TIMESTAMP:
            # Out of the calendar's range, it would fail later as an OverflowError instead.
            raise Refused("envelope.timestamp", "must be Unix seconds")
        return cls(key_id, timestamp, signature, body.encode("utf-8"))

    def headers(self) -> dict[str, str]:
        """The HTTP headers that carry this envelope beside its body."""
        return {
            HEADER_KEY_ID: self.key_id,
            HEADER_TIMESTAMP: str(self.timestamp),
            HEADER_SIGNATURE: self.signature,
        }

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], body: bytes) -> Envelope:
        lowered = {k.lower(): v for k, v in headers.items()}
        values = []
        for name in (HEADER_KEY_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE):
            value = lowered.get(name.lower())
            if not value:
                raise Refused(f"header {name}", "missing: requests must be signed")
            values.append(value)
        key_id, timestamp, signature = values
        # isdigit() alone accepts Unicode digits such as '²', which int() then refuses.
        if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
            raise Refused(f"header {HEADER_TIMESTAMP}", "must be Unix seconds")
        return cls(key_id, int(timestamp), signature, body)


def _message(timestamp: int, body: bytes) -> bytes:
    return str(timestamp).encode() + b"." + body


def sign(body: bytes, signing_key_b64: str, key_id: str, timestamp: int | None = None) -> Envelope:
    ts = int(time.time()) if timestamp is None else timestamp
    key = _signing_key(base64.b64decode(signing_key_b64))
    signature = key.sign(_message(ts, body)).signature
    return Envelope(key_id, ts, base64.b64encode(signature).decode(), body)


def signing_keypair() -> tuple[str, str]:
    """(private seed, public key), base64."""
    key = _signing_key()
    return base64.b64encode(bytes(key)).decode(), base64.b64encode(bytes(key.verify_key)).decode()


def verify(
    envelope: Envelope, keys: Mapping[str, str], now: float, max_age: float, max_ahead: float
) -> None:
    """Refuse unless signed by a known key, with a timestamp inside the window."""
    from nacl.exceptions import BadSignatureError

    decoy = _decoy_key()  # made before the lookup: the first unknown key costs no more either
    public = keys.get(envelope.key_id)
    try:
        signature = base64.b64decode(envelope.signature, validate=True)
        _verify_key(base64.b64decode(public or decoy)).verify(
            _message(envelope.timestamp, envelope.body), signature
        )
        if public is None:
            raise BadSignatureError
    except (BadSignatureError, binascii.Error, ValueError):
        raise Refused("signature", "signature does not verify with a known key") from None
    if envelope.timestamp < now - max_age:
        raise Refused("timestamp", "request is too old")
    if envelope.timestamp > now + max_ahead:
        raise Refused("timestamp", "request is from the future")


def replay_key(envelope: Envelope) -> str:
    """What identifies one signed request: keyed on what was signed, not on the signature's
    text, because base64 has more than one spelling of the same bytes and a replay must not pass
    by re-spelling them."""
    return hashlib.sha256(
        f"{envelope.key_id}\0{envelope.timestamp}\0".encode() + envelope.body
    ).hexdigest()


class ReplayGuard:
    """Remembers signatures seen inside the freshness window; a second sighting is a replay.

    Entries older than the window can go: a replay of them fails the freshness check anyway.
    """

    def __init__(self, window_seconds: float, capacity: int = 100_000) -> None:
        self.window = window_seconds
        self.capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def check_and_remember(self, envelope: Envelope, now: float) -> None:
        with self._lock:
            while self._seen:
                oldest, ts = next(iter(self._seen.items()))
                if ts >= now - self.window and len(self._seen) < self.capacity:
                    break
                del self._seen[oldest]
            key = replay_key(envelope)
            if key in self._seen:
                raise Refused("signature", "replayed request")
            self._seen[key] = float(envelope.timestamp)

    def forget(self, envelope: Envelope) -> None:
        """A request that was not accepted after all (it could not be queued) may come again."""
        with self._lock:
            self._seen.pop(replay_key(envelope), None)
