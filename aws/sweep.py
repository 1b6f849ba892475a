"""Lambda entry point `jitc.aws.sweep.handler`, run on a schedule: asks every target in the catalog
for the grants this connector made, and revokes those past their expiry (the scheduled revoke
may have been lost, or failed until now)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jitc.aws import runtime
from jitc.aws.observability import MetricUnit, logger, metrics, tracer

if TYPE_CHECKING:
    # Types only: importing Powertools' typing module costs ~30 ms of every cold start.
    from aws_lambda_powertools.utilities.typing import LambdaContext

RESERVE_MS = 30_000


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # The scheduled event carries nothing the sweep reads (no Powertools event class: its
    # package imports every event type, ~20 ms of CPU in the cold start).
    runtime.sinks().discard()

    def proceed() -> bool:
        # An Identity Center revoke may wait 20 s for AWS: none starts with less than that left.
        return int(context.get_remaining_time_in_millis()) > RESERVE_MS

    report = runtime.engine().sweep(proceed=proceed)
    runtime.sinks().flush()
    metrics.add_metric(name="SweepRevoked", unit=MetricUnit.Count, value=len(report.revoked))
    metrics.add_metric(name="SweepRemaining", unit=MetricUnit.Count, value=report.remaining)
    if report.failed:
        metrics.add_metric(name="RevokeFailures", unit=MetricUnit.Count, value=len(report.failed))
    if report.unfinished:
        # Out of time: the next sweep goes on. A backlog no sweep finishes misses the heartbeat.
        metrics.add_metric(name="SweepUnfinished", unit=MetricUnit.Count, value=report.unfinished)
    if not report.failed and not report.unfinished:
        # The heartbeat: its absence for a few intervals is alarmed (a sweep never invoked, or
        # failing every time, would otherwise raise nothing).
        metrics.add_metric(name="SweepCompleted", unit=MetricUnit.Count, value=1)
    summary = {
        "revoked": report.revoked,
        "forgotten": report.forgotten,
        "failed": report.failed,
        "remaining": report.remaining,
        "unfinished": report.unfinished,
    }
    log = logger.warning if report.failed or report.unfinished else logger.info
    log("sweep done", extra={"sweep": summary})
    return summary
