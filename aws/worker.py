"""Lambda entry point `jitc.aws.worker.handler`: an SQS batch in, partial batch response out.

Powertools' BatchProcessor reports each message on its own: a message whose operation failed
(or that waits behind a failed message of the same grant) is returned as a batch item failure
and comes back after the queue's visibility timeout; a refused one is deleted and audited.
"""

from __future__ import annotations

from typing import Any

# Imported before anything imports pydantic: Powertools' batch module then skips loading its
# pydantic models of every event type (unused here; ~100 ms and ~8 MB of cold start).
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes import SQSEvent
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from jitc.aws import runtime
from jitc.aws.batch import Message, Verdict, run_batch
from jitc.aws.observability import MetricUnit, logger, metrics, tracer
from jitc.models import Outcome

# Every record is judged by run_batch first, so an all-failed batch is an ordinary answer
# (every item reported), not an error that would hide which items succeeded.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


# Time a message may need once started (an Identity Center assignment is waited for up to 20 s,
# then retried), and to send the batch's events: no message starts with less left. A worker
# that hit its timeout would lose every outcome and have the whole batch delivered again.
RESERVE_MS = 30_000


class RetryLater(Exception):
    """Raised for a record that SQS must deliver again."""


def _count(outcome: Outcome) -> None:
    if outcome.status == "granted":
        metrics.add_metric(name="Grants", unit=MetricUnit.Count, value=1)
    elif outcome.status == "revoked":
        metrics.add_metric(name="Revokes", unit=MetricUnit.Count, value=1)
        lag = outcome.revocation_lag_seconds
        if lag is not None and outcome.request_id.startswith("expire-"):
            metrics.add_metric(name="ExpiryLagSeconds", unit=MetricUnit.Seconds, value=lag)
    elif outcome.status == "refused":
        metrics.add_metric(name="Refusals", unit=MetricUnit.Count, value=1)
    elif outcome.status == "failed":
        metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=1)
        if outcome.action == "revoke":
            # Alarmed on: a revoke that keeps failing is access that outlives its grant.
            metrics.add_metric(name="RevokeFailures", unit=MetricUnit.Count, value=1)


# The verdicts hold outcomes with sealed credentials: kept out of the trace's metadata.
@tracer.capture_method(capture_response=False)
def judge(event: dict[str, Any], context: LambdaContext) -> dict[str, Verdict]:
    records = list(SQSEvent(event).records)
    messages = [Message(r.message_id, r.body, r.attributes.message_group_id) for r in records]
    runtime.sinks().discard()

    def proceed() -> bool:
        return int(context.get_remaining_time_in_millis()) > RESERVE_MS

    verdicts = run_batch(runtime.engine(), messages, proceed=proceed)
    # Events are sent before any message is deleted: a failed send fails the whole batch.
    runtime.sinks().flush()
    for verdict in verdicts.values():
        if verdict.outcome is not None:
            _count(verdict.outcome)
        elif not verdict.retry:
            metrics.add_metric(name="Refusals", unit=MetricUnit.Count, value=1)
    return verdicts


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    verdicts = judge(event, context)

    def record_handler(record: SQSRecord) -> str:
        verdict = verdicts[record.message_id]
        if verdict.retry:
            outcome = verdict.outcome
            raise RetryLater(outcome.message if outcome and outcome.message else verdict.reason)
        return "done"

    return dict(
        process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    )
