"""The HTTP intake, cloud-agnostic: authenticate, validate, enqueue, answer 202.

Cloud handlers adapt their event shape to `Intake.handle(headers, body)` and back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from jitc.catalog import Catalog
from jitc.errors import Refused
from jitc.messages import envelope_message, parse_request
from jitc.models import parse_duration
from jitc.ports import RequestQueue
from jitc.signing import Envelope, ReplayGuard, verify

MAX_BODY_BYTES = 64 * 1024
log = logging.getLogger("jitc.intake")


class Response(NamedTuple):  # not a frozen dataclass: see jitc.templates.base.GrantSpec
    status: int
    body: dict[str, Any]


def _error(status: int, exc: Refused) -> Response:
    return Response(status, {"error": "refused", "field": exc.field, "message": exc.message})


class Intake:
    def __init__(
        self,
        catalog: Catalog,
        queue: RequestQueue,
        replay: ReplayGuard | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.catalog = catalog
        self.queue = queue
        self.skew = parse_duration(catalog.control_plane.max_skew).total_seconds()
        self.replay = replay or ReplayGuard(window_seconds=2 * self.skew)
        self.clock = clock

    def handle(self, headers: Mapping[str, str], body: bytes) -> Response:
        if len(body) > MAX_BODY_BYTES:
            return Response(
                413,
                {
                    "error": "refused",
                    "field": "body",
                    "message": f"larger than {MAX_BODY_BYTES} bytes",
                },
            )
        now = self.clock()
        try:
            envelope = Envelope.from_headers(headers, body)
            verify(envelope, self.catalog.control_plane.keys, now, self.skew, self.skew)
        except Refused as exc:
            return _error(401, exc)
        try:
            request = parse_request(body)
        except Refused as exc:
            return _error(400, exc)
        try:
            if request.action == "grant":
                issued = datetime.fromtimestamp(envelope.timestamp, UTC)
                self.catalog.check_grant(request, issued, datetime.fromtimestamp(now, UTC))
            else:
                self.catalog.integration(request.integration)
        except Refused as exc:
            return _error(403, exc)
        try:
            self.replay.check_and_remember(envelope, now)
        except Refused as exc:
            return _error(409, exc)
        try:
            self.queue.enqueue(envelope_message(envelope), request.target_grant_id)
        except Refused as exc:
            # A durable queue that remembers what it was given: a replay (409); or a queue that
            # cannot take this message at all, which says so (413 for one too large).
            self.replay.forget(envelope)
            return _error(getattr(exc, "status", 409), exc)
        except Exception:
            # Not queued, so not accepted: the control plane must send it again, the same
            # signed request, which must then not look like a replay.
            self.replay.forget(envelope)
            log.exception("request %s could not be queued", request.request_id)
            return Response(
                503,
                {"error": "unavailable", "field": "queue", "message": "not queued; send again"},
            )
        return Response(
            202,
            {
                "status": "accepted",
                "request_id": request.request_id,
                "grant_id": request.target_grant_id,
            },
        )
