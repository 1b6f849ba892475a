"""What travels through the queue: a signed envelope from the control plane, or an expiry.

An expiry message is produced by the connector's own scheduler and is accepted unsigned
because it can only ever revoke; anything that grants must carry the control plane's signature.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import NamedTuple

from pydantic import ValidationError

from jitc.catalog import Catalog
from jitc.errors import Refused
from jitc.models import AccessRequest, parse_duration
from jitc.signing import Envelope, verify


class Work(NamedTuple):  # not a frozen dataclass: see jitc.gcp.handlers.HttpRequest
    """A request ready for the engine, with the moment it was signed."""

    request: AccessRequest
    issued_at: datetime


def _seconds(duration: str) -> float:
    return parse_duration(duration).total_seconds()


def expiry_message(grant_id: str, integration: str) -> str:
    return json.dumps({"kind": "expire", "grant_id": grant_id, "integration": integration})


def envelope_message(envelope: Envelope) -> str:
    return json.dumps({"kind": "request", "envelope": envelope.to_json()})


def parse_request(body: bytes | str) -> AccessRequest:
    """Validate a request body; Refused names the first offending field."""
    try:
        return AccessRequest.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        message = err["msg"]
        if err["type"] == "json_invalid":
            field, message = "body", "malformed JSON"
        raise Refused(field, message) from None


def decode_message(text: str, catalog: Catalog, now: float, *, verified: bool = False) -> Work:
    """Turn one queue message into work, verifying the control plane's signature on requests.

    `verified` is for a message whose signature was checked before it was written to storage
    only the connector can write (the local journal): checking it again against the catalog of
    a later start would drop a revoke accepted before a key rotation.
    """
    try:
        doc = json.loads(text)
    except ValueError:
        raise Refused("message", "malformed JSON") from None
    if not isinstance(doc, dict):
        raise Refused("message", "expected a JSON object")
    kind = doc.get("kind")
    if kind == "expire":
        grant_id, integration = doc.get("grant_id"), doc.get("integration")
        request = parse_request(
            json.dumps(
                {
                    "request_id": f"expire-{grant_id}",
                    "action": "revoke",
                    "integration": integration,
                    "grant_id": grant_id,
                }
            )
        )
        return Work(request, datetime.fromtimestamp(now, UTC))
    if kind == "request":
        envelope = Envelope.from_json(doc.get("envelope"))
        cp = catalog.control_plane
        # Age is checked below, for grants only: a revoke can only take access away, so one that
        # waited out an outage still runs rather than being dropped.
        if not verified:
            verify(envelope, cp.keys, now, max_age=math.inf, max_ahead=_seconds(cp.max_skew))
        request = parse_request(envelope.body)
        if request.action == "grant" and envelope.timestamp < now - _seconds(cp.max_message_age):
            raise Refused("timestamp", "request is too old")
        return Work(request, datetime.fromtimestamp(envelope.timestamp, UTC))
    raise Refused("kind", "expected 'request' or 'expire'")


def request_of(text: str) -> AccessRequest | None:
    """The request a message carries, unverified: only to name it in a refusal."""
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and doc.get("kind") == "request":
            return parse_request(Envelope.from_json(doc.get("envelope")).body)
    except (Refused, ValueError, TypeError, KeyError):
        pass
    return None
