"""Event sinks every cloud's functions share: the structured log line of each audit event and
outcome, and a buffer that holds another sink's events until the message's work is done."""

from __future__ import annotations

import logging
from typing import Any

from jitc.models import AuditEvent, Outcome


def outcome_record(outcome: Outcome) -> dict[str, Any]:
    """An outcome as it may be logged: the sealed box is for the control plane only, so the log
    keeps only that one was delivered."""
    doc = outcome.model_dump(
        mode="json", exclude_none=True, exclude={"credentials", "sealed_credentials"}
    )
    doc["sealed"] = outcome.sealed_credentials is not None
    return doc


class LogSink:
    """Writes through a logger that takes `extra` (the standard library's, or Powertools'), so
    each line carries the request and grant ids as fields of its own."""

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def _on(self) -> bool:
        """False only when the logger says it drops INFO: then no record is built for it."""
        enabled = getattr(self._logger, "isEnabledFor", None)
        return enabled is None or bool(enabled(logging.INFO))

    def audit(self, event: AuditEvent) -> None:
        if not self._on():
            return
        self._logger.info(
            "audit",
            extra={
                "request_id": event.request_id,
                "grant_id": event.grant_id,
                "audit": event.model_dump(mode="json", exclude_none=True),
            },
        )

    def outcome(self, outcome: Outcome) -> None:
        if not self._on():
            return
        self._logger.info(
            "outcome",
            extra={
                "request_id": outcome.request_id,
                "grant_id": outcome.grant_id,
                "outcome": outcome_record(outcome),
            },
        )


class BufferedSink:
    """Holds another sink's events until `flush()` at the end of the message or batch (the
    webhook): a send that fails fails the message, which is delivered again."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._pending: list[tuple[str, Any]] = []

    def audit(self, event: AuditEvent) -> None:
        self._pending.append(("audit", event))

    def outcome(self, outcome: Outcome) -> None:
        self._pending.append(("outcome", outcome))

    def discard(self) -> None:
        self._pending.clear()

    def flush(self) -> None:
        while self._pending:
            kind, item = self._pending[0]
            getattr(self._inner, kind)(item)
            self._pending.pop(0)
