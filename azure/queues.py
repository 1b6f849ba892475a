"""The request queue and the expiry scheduler on Azure Storage Queues (identity-based: the app's
managed identity, no account key).

Messages are base64 text, the Functions host's default `messageEncoding`, so what this client
writes is what the queue trigger reads (host.json says so explicitly).

Expiry is a revoke message sent with a visibility delay equal to the time left. Storage Queues
cap that delay at 7 days, so a longer grant's message carries the expiry (`at`) and *hops*: the
worker that receives it early sends it again with the remainder (see `hop_delay`). Every message
is sent with an infinite time-to-live: the default (7 days) would delete a message delayed by the
full cap at the moment it became visible.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from jitc.errors import Refused
from jitc.messages import expiry_message

MAX_DELAY = timedelta(days=7)  # the Queue service's limit on visibilitytimeout
NEVER_EXPIRES = -1
MAX_MESSAGE_BYTES = 64 * 1024  # the Queue service's limit, after base64 encoding


class TooLarge(Refused):
    """The message would exceed the queue's limit: refused (413), never retried."""

    status = 413


def encoded_size(message: str) -> int:
    raw = len(message.encode("utf-8"))
    return 4 * ((raw + 2) // 3)


def client_options() -> dict[str, Any]:
    from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy

    return {
        "message_encode_policy": TextBase64EncodePolicy(),
        "message_decode_policy": TextBase64DecodePolicy(),
    }


class StorageQueue:
    """`RequestQueue` over one queue. Storage Queues have no groups and no ordering: the engine is
    idempotent by grant id and refuses a grant revoked before it arrives (tombstones)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @property
    def name(self) -> str:
        return str(self._client.queue_name)

    def enqueue(self, message: str, group: str, delay: timedelta | None = None) -> None:
        if encoded_size(message) > MAX_MESSAGE_BYTES:
            # Checked here, not by the service: its 413 would reach the caller as a failure to
            # queue (503, "send again"), which the control plane would retry for ever.
            raise TooLarge("body", f"too large for the queue ({MAX_MESSAGE_BYTES} bytes encoded)")
        # Rounded up: a message is never visible before its time (the worker hops one that is).
        seconds = 0 if delay is None else max(0, math.ceil(delay.total_seconds()))
        self._client.send_message(
            message, visibility_timeout=seconds or None, time_to_live=NEVER_EXPIRES
        )


def decoded(content: str) -> str | None:
    """A stored message's text (base64 of UTF-8, as the trigger reads it); None if it is not."""
    try:
        return base64.b64decode(content, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


def expiry_body(grant_id: str, integration: str, at: datetime) -> str:
    doc = json.loads(expiry_message(grant_id, integration))
    doc["at"] = at.astimezone(UTC).isoformat()
    return json.dumps(doc)


def due_at(text: str) -> datetime | None:
    """The `at` of an expiry message; None when it has none or it cannot be read (the revoke
    then runs at once: a damaged expiry errs towards taking access away)."""
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and doc.get("kind") == "expire" and isinstance(doc.get("at"), str):
            at = datetime.fromisoformat(doc["at"])
            return at if at.tzinfo is not None else None
    except ValueError:
        return None
    return None


class StorageQueueExpiry:
    """`ExpiryScheduler`: one delayed expiry message per grant on the worker's queue."""

    def __init__(
        self,
        queue: StorageQueue,
        max_delay: timedelta = MAX_DELAY,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not timedelta(seconds=1) <= max_delay <= MAX_DELAY:
            raise ValueError("max_delay must be between 1 second and 7 days")
        self.queue = queue
        self.max_delay = max_delay
        self._clock = clock or (lambda: datetime.now(UTC))

    def hop_delay(self, at: datetime) -> timedelta:
        """How long the message for `at` waits now: the time left, at most the cap."""
        return min(max(at - self._clock(), timedelta(0)), self.max_delay)

    def schedule(self, grant_id: str, integration: str, at: datetime) -> None:
        # A redelivered grant schedules again: the second message finds the grant revoked, and
        # a revoke of what is gone is a success. Nothing cancels the first either way.
        self.queue.enqueue(expiry_body(grant_id, integration, at), grant_id, self.hop_delay(at))

    def cancel(self, grant_id: str) -> None:
        """A queued message cannot be withdrawn without its receipt; an expiry that arrives after
        an earlier revoke finds nothing to revoke, which is a success."""

    def hop(self, text: str, at: datetime) -> None:
        self.queue.enqueue(text, "", self.hop_delay(at))
