"""The log sink: a record for every event while INFO is logged, none built when it is not."""

from __future__ import annotations

import logging

import pytest

from jitc.models import AuditEvent, Outcome
from jitc.sinks import LogSink


def test_the_log_sink_writes_at_info_and_builds_nothing_when_info_is_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("jitc.test.sinks")
    sink = LogSink(logger)
    event = AuditEvent(type="sweep", status="revoked", message="m")
    outcome = Outcome(request_id="r-1", action="grant", status="refused", message="no")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        sink.audit(event)
        sink.outcome(outcome)
    assert caplog.records == []
    with caplog.at_level(logging.INFO, logger=logger.name):
        sink.audit(event)
        sink.outcome(outcome)
    audit, told = caplog.records
    assert audit.getMessage() == "audit" and audit.__dict__["audit"]["event_id"] == event.event_id
    assert told.getMessage() == "outcome" and told.__dict__["outcome"]["sealed"] is False


def test_a_logger_without_levels_gets_every_record() -> None:
    class Plain:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def info(self, message: str, extra: dict[str, object]) -> None:
            self.lines.append(message)

    plain = Plain()
    LogSink(plain).audit(AuditEvent(type="sweep", status="revoked"))
    assert plain.lines == ["audit"]
