"""Audit events and outcomes: always to the log (Application Insights), and to the control
plane's webhook when the catalog names one. The webhook is buffered and sent at the end of the
invocation, before the message is completed: a failed send fails the invocation, so the message
is delivered again (events at least once, with ids for the receiver to deduplicate)."""

from __future__ import annotations

from typing import Any

from jitc.azure import observability
from jitc.models import AuditEvent, Outcome
from jitc.sinks import outcome_record


class LogSink:
    def audit(self, event: AuditEvent) -> None:
        observability.info(
            "audit",
            request_id=event.request_id,
            grant_id=event.grant_id,
            audit=event.model_dump(mode="json", exclude_none=True),
        )

    def outcome(self, outcome: Outcome) -> None:
        observability.info(
            "outcome",
            request_id=outcome.request_id,
            grant_id=outcome.grant_id,
            outcome=outcome_record(outcome),
        )


class Sinks:
    """The log at once; the webhook (if any) held until `flush`."""

    def __init__(self, webhook: Any | None = None) -> None:
        self.log = LogSink()
        self.webhook = webhook
        self._pending: list[tuple[str, Any]] = []

    def audit(self, event: AuditEvent) -> None:
        self.log.audit(event)
        if self.webhook is not None:
            self._pending.append(("audit", event))

    def outcome(self, outcome: Outcome) -> None:
        self.log.outcome(outcome)
        if self.webhook is not None:
            self._pending.append(("outcome", outcome))

    def discard(self) -> None:
        """Drop what a failed invocation left unsent: its redelivery makes its events anew."""
        self._pending.clear()

    def flush(self) -> None:
        while self._pending:
            kind, item = self._pending[0]
            getattr(self.webhook, kind)(item)
            self._pending.pop(0)
