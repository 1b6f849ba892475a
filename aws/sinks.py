"""Audit events and outcomes: always to the function's JSON log, optionally to an EventBridge bus
(from where a rule or an API destination can forward them, e.g. to the control plane's webhook).
"""

from __future__ import annotations

import json
from typing import Any

from jitc.models import AuditEvent, Outcome

SOURCE = "jit-connector"
_MAX_ENTRIES = 10  # PutEvents takes at most ten entries per call


class EventBridgeSink:
    """Buffers events and sends them with `flush()` at the end of a batch, ten per call.

    A failed send raises, so the batch is retried: events are delivered at least once, like
    every message here, and carry ids (event_id, request_id) for the receiver to deduplicate.
    """

    def __init__(self, client: Any, bus_name: str) -> None:
        self._client = client
        self.bus_name = bus_name
        self._entries: list[dict[str, str]] = []

    def _add(self, detail_type: str, detail: dict[str, Any]) -> None:
        self._entries.append(
            {
                "Source": SOURCE,
                "DetailType": detail_type,
                "Detail": json.dumps(detail, separators=(",", ":")),
                "EventBusName": self.bus_name,
            }
        )

    def audit(self, event: AuditEvent) -> None:
        self._add("jitc.audit", event.model_dump(mode="json", exclude_none=True))

    def outcome(self, outcome: Outcome) -> None:
        doc = outcome.model_dump(mode="json", exclude_none=True, exclude={"credentials"})
        self._add("jitc.outcome", doc)

    def discard(self) -> None:
        self._entries.clear()

    def flush(self) -> None:
        while self._entries:
            chunk = self._entries[:_MAX_ENTRIES]
            response = self._client.put_events(Entries=chunk)
            results = response.get("Entries", [])
            codes = sorted({str(r["ErrorCode"]) for r in results if r.get("ErrorCode")})
            failed = [entry for entry, r in zip(chunk, results, strict=False) if r.get("ErrorCode")]
            del self._entries[:_MAX_ENTRIES]
            if failed:
                self._entries[:0] = failed
                raise RuntimeError(
                    f"EventBridge refused {len(failed)} of {len(chunk)} events ({', '.join(codes)})"
                )
