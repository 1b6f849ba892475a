"""The AWS adapters on their own, against moto's server: Secrets Manager references, the SQS
queue's FIFO fields, the expiry scheduler's rounding and idempotency, the EventBridge sink."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from awsharness import client
from botocore.exceptions import ClientError

from jitc.aws.scheduler import EventBridgeExpiryScheduler, fire_time
from jitc.aws.secrets_manager import SecretsManagerStore
from jitc.aws.sinks import EventBridgeSink
from jitc.aws.sqs import SqsQueue
from jitc.errors import SecretError
from jitc.models import AuditEvent
from jitc.secrets import SecretRef


def test_fire_time_rounds_up_to_the_whole_minute_never_down() -> None:
    exact = datetime(2030, 1, 1, 12, 30, tzinfo=UTC)
    assert fire_time(exact) == exact
    assert fire_time(exact + timedelta(microseconds=1)) == exact + timedelta(minutes=1)
    assert fire_time(exact + timedelta(seconds=59)) == exact + timedelta(minutes=1)
    later = datetime(2030, 1, 1, 14, 0, 1, tzinfo=UTC).astimezone(UTC)
    assert fire_time(later) == datetime(2030, 1, 1, 14, 1, tzinfo=UTC)


def test_secrets_manager_by_name_and_arn_with_fields(aws: str) -> None:
    sm = client("secretsmanager")
    arn = sm.create_secret(Name="db/admin", SecretString=json.dumps({"password": "s3cr3t!"}))["ARN"]
    sm.create_secret(Name="plain", SecretString="just-a-token")
    sm.create_secret(Name="binary", SecretBinary=b"bin-token")
    store = SecretsManagerStore(client("secretsmanager"))
    assert store.resolve(SecretRef("aws-sm:db/admin#password")).reveal() == "s3cr3t!"
    assert store.resolve(SecretRef(f"aws-sm:{arn}#password")).reveal() == "s3cr3t!"
    assert store.resolve(SecretRef("aws-sm:plain")).reveal() == "just-a-token"
    assert store.resolve(SecretRef("aws-sm:binary")).reveal() == "bin-token"
    with pytest.raises(SecretError) as missing_field:
        store.resolve(SecretRef("aws-sm:db/admin#user"))
    with pytest.raises(SecretError) as missing:
        store.resolve(SecretRef("aws-sm:nope#password"))
    assert "ResourceNotFoundException" in str(missing.value)
    for error in (missing_field.value, missing.value):
        assert "s3cr3t!" not in str(error)
    assert "s3cr3t!" not in repr(store.resolve(SecretRef("aws-sm:db/admin#password")))


def test_fifo_queue_groups_and_deduplicates(aws: str) -> None:
    sqs = client("sqs")
    url = sqs.create_queue(QueueName="q.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    queue = SqsQueue(client("sqs"), url)
    queue.enqueue('{"a": 1}', "g1")
    queue.enqueue('{"a": 1}', "g1")  # the same message again: SQS keeps one
    queue.enqueue('{"a": 2}', "g2")
    got = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
    )
    groups = sorted(m["Attributes"]["MessageGroupId"] for m in got["Messages"])
    assert groups == ["g1", "g2"]


def scheduler_for(queue_url: str, now: datetime) -> tuple[EventBridgeExpiryScheduler, Any]:
    sqs = client("sqs")
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    client("scheduler").create_schedule_group(Name="grp")
    return EventBridgeExpiryScheduler(
        client("scheduler"),
        "grp",
        arn,
        "arn:aws:iam::123456789012:role/s",
        SqsQueue(sqs, queue_url),
        clock=lambda: now,
    ), sqs


def test_scheduler_is_idempotent_and_cancel_tolerates_absence(aws: str) -> None:
    url = client("sqs").create_queue(QueueName="r.fifo", Attributes={"FifoQueue": "true"})[
        "QueueUrl"
    ]
    now = datetime.now(UTC)
    scheduler, _ = scheduler_for(url, now)
    at = now + timedelta(minutes=10, seconds=7)
    scheduler.schedule("gaaaaaaaaaaaaaaaaaaaaaaaa", "pg", at)
    scheduler.schedule("gaaaaaaaaaaaaaaaaaaaaaaaa", "pg", at)  # redelivered grant
    schedules = client("scheduler").list_schedules(GroupName="grp")["Schedules"]
    assert [s["Name"] for s in schedules] == ["gaaaaaaaaaaaaaaaaaaaaaaaa"]
    got = client("scheduler").get_schedule(Name="gaaaaaaaaaaaaaaaaaaaaaaaa", GroupName="grp")
    assert got["ScheduleExpression"] == f"at({fire_time(at):%Y-%m-%dT%H:%M:%S})"
    assert json.loads(got["Target"]["Input"]) == {
        "kind": "expire",
        "grant_id": "gaaaaaaaaaaaaaaaaaaaaaaaa",
        "integration": "pg",
    }
    scheduler.cancel("gaaaaaaaaaaaaaaaaaaaaaaaa")
    scheduler.cancel("gaaaaaaaaaaaaaaaaaaaaaaaa")
    assert client("scheduler").list_schedules(GroupName="grp")["Schedules"] == []


def test_an_expiry_too_close_to_schedule_is_queued_at_once(aws: str) -> None:
    url = client("sqs").create_queue(QueueName="s.fifo", Attributes={"FifoQueue": "true"})[
        "QueueUrl"
    ]
    now = datetime(2030, 1, 1, 12, 0, 58, tzinfo=UTC)
    scheduler, sqs = scheduler_for(url, now)
    scheduler.schedule("gbbbbbbbbbbbbbbbbbbbbbbbb", "pg", now + timedelta(seconds=1))
    assert client("scheduler").list_schedules(GroupName="grp")["Schedules"] == []
    (message,) = sqs.receive_message(QueueUrl=url, MessageSystemAttributeNames=["All"])["Messages"]
    assert json.loads(message["Body"])["grant_id"] == "gbbbbbbbbbbbbbbbbbbbbbbbb"
    assert message["Attributes"]["MessageGroupId"] == "gbbbbbbbbbbbbbbbbbbbbbbbb"


def test_eventbridge_sink_sends_in_tens_and_keeps_what_failed(aws: str) -> None:
    events = client("events")
    events.create_event_bus(Name="bus")
    sink = EventBridgeSink(client("events"), "bus")
    for index in range(23):
        sink.audit(AuditEvent(type="grant", status="granted", request_id=f"r{index}"))
    sink.flush()
    assert sink._entries == []
    missing = EventBridgeSink(client("events"), "no-such-bus")
    missing.audit(AuditEvent(type="grant", status="granted", request_id="r"))
    with pytest.raises((RuntimeError, ClientError)):
        missing.flush()
    assert len(missing._entries) == 1


def test_a_fifo_dead_letter_queue_for_schedules_is_refused_at_once(aws: str) -> None:
    # CreateSchedule refuses a FIFO DLQ: with one configured every grant would fail after
    # it was made, so the scheduler refuses it when built, naming the setting.
    url = client("sqs").create_queue(QueueName="t.fifo", Attributes={"FifoQueue": "true"})[
        "QueueUrl"
    ]
    queue = SqsQueue(client("sqs"), url)
    fifo_dlq = "arn:aws:sqs:us-east-1:123456789012:dlq.fifo"
    with pytest.raises(ValueError, match="standard queue"):
        EventBridgeExpiryScheduler(
            client("scheduler"), "grp", "arn:aws:sqs:us-east-1:123456789012:t.fifo",
            "arn:aws:iam::123456789012:role/s", queue, dead_letter_arn=fifo_dlq,
        )  # fmt: skip


def test_no_function_logs_a_secret_read_even_with_logging_at_debug(
    aws: str, caplog: pytest.LogCaptureFixture
) -> None:
    """botocore's DEBUG log quotes every response body, GetSecretValue's SecretString
    included: every handler (they all import observability) holds it above DEBUG."""
    import jitc.aws.observability  # noqa: F401  (what every handler imports first)

    sm = client("secretsmanager")
    sm.create_secret(Name="db/debug", SecretString=json.dumps({"password": "n0t-in-l0gs"}))
    with caplog.at_level(logging.DEBUG):
        store = SecretsManagerStore(client("secretsmanager"))
        assert store.resolve(SecretRef("aws-sm:db/debug#password")).reveal() == "n0t-in-l0gs"
    assert caplog.records  # the capture itself works: the call logged something
    assert "n0t-in-l0gs" not in caplog.text
