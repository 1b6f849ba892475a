"""Lambda entry point `jitc.aws.worker.handler`: an SQS batch in, partial batch response out.

Each message is judged on its own by `run_batch`: a message whose operation failed (or that
waits behind a failed message of the same grant, or was not started for lack of time) is
returned as a batch item failure and comes back after the queue's visibility timeout; a refused
one is deleted and audited. `run_batch` does all of Powertools' BatchProcessor's work here, so
the response is built directly (the batch utilities cost ~150 ms of every cold start).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jitc.aws import runtime
from jitc.aws.batch import Message, Verdict, run_batch
from jitc.aws.observability import MetricUnit, logger, metrics, tracer
from jitc.models import Outcome

if TYPE_CHECKING:
    # Types only: importing Powertools' typing module costs ~30 ms of every cold start.
    from aws_lambda_powertools.utilities.typing import LambdaContext

# Time a message may need once started (an Identity Center assignment is waited for up to 20 s,
# then retried), and to send the batch's events: no message starts with less left. A worker
# that hit its timeout would lose every outcome and have the whole batch delivered again.
RESERVE_MS = 30_000


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
    messages = [
        Message(r["messageId"], r["body"], (r.get("attributes") or {}).get("MessageGroupId"))
        for r in event.get("Records", [])
    ]
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
    # Every record is judged first, so an all-failed batch is an ordinary answer (every item
    # reported), not an error that would hide which items succeeded.
    failures = [
        {"itemIdentifier": record["messageId"]}
        for record in event.get("Records", [])
        if verdicts[record["messageId"]].retry
    ]
    for message_id, verdict in verdicts.items():
        if verdict.retry:
            outcome = verdict.outcome
            reason = outcome.message if outcome and outcome.message else verdict.reason
            logger.info(
                "returned for redelivery", extra={"message_id": message_id, "reason": reason}
            )
    return {"batchItemFailures": failures}
