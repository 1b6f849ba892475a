"""Lambda entry point `jitc.aws.sync.handler`, run on a schedule: sends every integration's
inventory (names only) and the connector's own view to the control plane's webhook, only the
pages changed since the version it acknowledged (kept in DynamoDB). An integration that cannot
be read fails its own part; a complete sync beats the heartbeat the alarm watches."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from jitc.aws import runtime
from jitc.aws.observability import MetricUnit, logger, metrics, tracer
from jitc.aws.sync_state import DynamoSyncState
from jitc.engine import Engine
from jitc.errors import required_env
from jitc.inventory import webhook_transport
from jitc.local import NullScheduler
from jitc.sinks import LogSink

RESERVE_MS = 20_000  # no page starts with less left: a page and a manifest fit in it
STALL_SECONDS = 60.0


def engine() -> Engine:
    """No queue, no scheduler: the sync only reads. Built per invocation from the runtime's
    cached pieces (catalog, clients), so it follows them when they are rebuilt."""
    from jitc.templates import aws_session

    aws_session.use(runtime.regional_client)
    return Engine(runtime.catalog(), runtime.secret_stores(), NullScheduler(), LogSink(logger))


def state() -> DynamoSyncState:
    return DynamoSyncState(runtime.client("dynamodb"), required_env("JITC_SYNC_TABLE"))


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=EventBridgeEvent)
def handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    def proceed() -> bool:
        return int(context.get_remaining_time_in_millis()) > RESERVE_MS

    store = state()
    holder = str(context.aws_request_id)
    # The lease lasts as long as this invocation can: a run killed at its timeout holds it no
    # longer than it could have run.
    until = time.time() + int(context.get_remaining_time_in_millis()) / 1000
    try:
        leased = store.acquire(holder, until)
    except Exception:
        # The acknowledged versions are a cache, and so is their lease: a table that fails
        # costs a full sync (whose state saves fail and are reported), not the inventory.
        logger.warning("inventory sync: the run lease could not be taken; syncing without it")
        leased = None
    if leased is False:
        logger.info("inventory sync: another run holds the lease; this one stands down")
        return {"ok": True, "skipped": "another inventory sync is running"}
    try:
        return _sync(store, proceed)
    finally:
        if leased:
            try:
                store.release(holder)
            except Exception:  # it lapses at `until` anyway
                logger.warning("inventory sync: the run lease could not be given back")


def _sync(store: DynamoSyncState, proceed: Callable[[], bool]) -> dict[str, Any]:
    eng = engine()
    transport = webhook_transport(eng.catalog, eng.secrets)
    report = eng.sync(transport, store, proceed=proceed, stall_seconds=STALL_SECONDS)
    parts = report.integrations.values()
    sent = sum(p.sent for p in parts)
    # A part sent but whose acknowledgement could not be kept (the state table denied or
    # failing) counts too: the inventory flowed, but a deployment fault must still alarm.
    failed = sum(1 for p in parts if p.status != "complete" or p.error)
    metrics.add_metric(name="InventoryPagesSent", unit=MetricUnit.Count, value=sent)
    if failed:
        metrics.add_metric(name="InventoryFailures", unit=MetricUnit.Count, value=failed)
    else:
        # The heartbeat: its absence for a few intervals is alarmed (a sync never invoked,
        # or failing every time, would otherwise raise nothing).
        metrics.add_metric(name="InventoryCompleted", unit=MetricUnit.Count, value=1)
    summary = report.as_dict()
    (logger.warning if failed else logger.info)("inventory sync done", extra={"sync": summary})
    return summary
