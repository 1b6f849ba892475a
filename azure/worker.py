"""The queue-triggered worker: one Storage Queue message per invocation.

- an expiry message that arrives before its time (the 7-day cap on a message's delay) is sent
  again with the remainder, and completed;
- a message that can never become valid (bad signature, too old, malformed) is refused, audited
  and completed;
- an operation that failed raises, so the host makes the message visible again and, after
  `MAX_DEQUEUE_COUNT` deliveries, moves it to the poison queue (alarmed; the sweep still revokes
  any grant it left past its expiry).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import azure.functions as func

from jitc.azure import observability, runtime
from jitc.azure.queues import due_at
from jitc.catalog import Catalog
from jitc.engine import TOMBSTONE_MARGIN
from jitc.errors import JitcError, Refused
from jitc.messages import decode_message
from jitc.models import AuditEvent, Outcome, parse_duration

# host.json's extensions.queues.maxDequeueCount (a test keeps the two equal).
MAX_DEQUEUE_COUNT = 5
# An expiry is never run before its time: one visible early (a hop's remainder, a clock a
# little ahead) is sent again with what is left, rounded up to the next second.
EARLY_TOLERANCE = timedelta(0)


def latest_expiry(catalog: Catalog, now: datetime) -> datetime:
    """The latest `at` a genuine expiry message can carry: no grant outlives the catalog's
    longest `max_duration` from a signature at most `max_skew` ahead. Expiry messages are not
    signed, so an `at` beyond this (a message that would hop for ever, one every 7 days) is
    damaged, and a damaged `at` runs the revoke at once."""
    longest = max((i.max_duration for i in catalog.integrations.values()), default=timedelta(0))
    return now + longest + parse_duration(catalog.control_plane.max_skew) + TOMBSTONE_MARGIN


class RetryLater(JitcError):
    """The operation failed and will be retried: raised so the host redelivers the message."""


def handle(message: func.QueueMessage) -> Outcome | None:
    """The outcome of the message's operation; None for a hop or a refused message."""
    sinks = runtime.sinks()
    sinks.discard()
    try:
        text = message.get_body().decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    now = time.time()
    engine = runtime.engine()
    at = due_at(text)
    moment = datetime.fromtimestamp(now, UTC)
    if at is not None and at > latest_expiry(engine.catalog, moment):
        observability.warning("expiry beyond any grant; revoking now", message_id=message.id)
        at = None
    if at is not None and at - EARLY_TOLERANCE > moment:
        runtime.expiry().hop(text, at)
        observability.info("expiry hopped", message_id=message.id, due=at.isoformat())
        return None
    try:
        work = decode_message(text, engine.catalog, now)
    except Refused as exc:
        engine.sink.audit(
            AuditEvent(type="refusal", status="refused", field=exc.field, message=exc.message)
        )
        sinks.flush()
        observability.warning("message refused", message_id=message.id, field=exc.field)
        return None
    outcome = engine.execute_batch([work])[0]
    # Events are sent before the message is completed: a failed send fails the invocation.
    sinks.flush()
    if outcome.status == "failed":
        count = message.dequeue_count or 0
        last = count >= MAX_DEQUEUE_COUNT
        (observability.error if last else observability.warning)(
            "operation failed; moving to the poison queue" if last else "operation failed",
            message_id=message.id,
            request_id=outcome.request_id,
            grant_id=outcome.grant_id,
            action=outcome.action,
            dequeue_count=count,
            reason=outcome.message,
        )
        raise RetryLater(f"{outcome.action} {outcome.grant_id} failed; the host retries it")
    return outcome
