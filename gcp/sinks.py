"""Audit events and outcomes: always to the function's JSON log, and to the control plane's
webhook when the catalog names one, sent once the message's work is done and before the worker
answers Cloud Tasks: a failed send fails the task, which is delivered again (events at least
once, like every message; they carry ids for the receiver to deduplicate). The Pub/Sub topic,
when configured, is sent to the same way."""

from __future__ import annotations

from typing import Any

from jitc.models import AuditEvent, Outcome
from jitc.ports import EventSink
from jitc.sinks import BufferedSink, LogSink


class Sinks:
    def __init__(
        self, log: LogSink, webhook: BufferedSink | None = None, topic: Any | None = None
    ) -> None:
        self.log = log
        self.webhook = webhook
        self.topic = topic
        self.sinks: tuple[EventSink, ...] = tuple(
            s for s in (log, topic, webhook) if s is not None
        )

    def audit(self, event: AuditEvent) -> None:
        for sink in self.sinks:
            sink.audit(event)

    def outcome(self, outcome: Outcome) -> None:
        for sink in self.sinks:
            sink.outcome(outcome)

    def discard(self) -> None:
        """Drop what a failed message left unsent: its redelivery makes its events anew."""
        for buffered in (self.topic, self.webhook):
            if buffered is not None:
                buffered.discard()

    def flush(self) -> None:
        if self.topic is not None:
            self.topic.flush()
        if self.webhook is not None:
            self.webhook.flush()
