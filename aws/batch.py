"""One SQS batch through the engine, keeping each grant's messages in order.

Messages are decoded first; what can never become valid (bad signature, too old, malformed) is
refused, audited and deleted. The rest run in *waves*: wave n holds the n-th message of each
message group (the grant id), and a group whose message failed sends nothing more this batch,
so a later message of one grant never overtakes an earlier one that will be retried. One wave
is one `Engine.execute_batch`: one secret fetch and one connection per integration. A batch of
distinct grants is a single wave.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jitc.engine import Engine
from jitc.errors import Refused
from jitc.messages import Work, decode_message
from jitc.models import AuditEvent, Outcome

HELD_BACK = "held back behind an earlier message of the same grant that will be retried"
OUT_OF_TIME = "not started: the invocation's time was running out"


@dataclass(frozen=True)
class Message:
    message_id: str
    body: str
    group: str | None


@dataclass(frozen=True)
class Verdict:
    """`retry` True: report the message as a batch item failure, so SQS delivers it again."""

    retry: bool
    outcome: Outcome | None = None
    reason: str | None = None


def run_batch(
    engine: Engine,
    messages: Sequence[Message],
    clock: Callable[[], float] = time.time,
    proceed: Callable[[], bool] | None = None,
) -> dict[str, Verdict]:
    """`proceed` is asked before each message runs; once it answers False no further message
    starts, and those not run are reported as retryable (SQS delivers them again)."""
    verdicts: dict[str, Verdict] = {}
    queues: dict[str, list[tuple[Message, Work]]] = {}
    now = clock()
    for message in messages:
        try:
            work = decode_message(message.body, engine.catalog, now)
        except Refused as exc:
            engine.sink.audit(
                AuditEvent(type="refusal", status="refused", field=exc.field, message=exc.message)
            )
            reason = f"{exc.field}: {exc.message}"
            verdicts[message.message_id] = Verdict(retry=False, reason=reason)
            continue
        group = message.group or work.request.target_grant_id
        queues.setdefault(group, []).append((message, work))

    blocked: set[str] = set()
    wave_number = 0
    stopped = False
    while not stopped:
        wave = [
            (group, items[wave_number])
            for group, items in queues.items()
            if wave_number < len(items) and group not in blocked
        ]
        if not wave:
            break
        outcomes = engine.execute_batch([work for _, (_, work) in wave], proceed=proceed)
        stopped = len(outcomes) < len(wave)
        for (group, (message, _)), outcome in zip(wave, outcomes, strict=False):
            failed = outcome.status == "failed"
            verdicts[message.message_id] = Verdict(retry=failed, outcome=outcome)
            if failed:
                blocked.add(group)
        wave_number += 1
    for group, items in queues.items():
        for message, _ in items:
            reason = HELD_BACK if group in blocked else OUT_OF_TIME
            verdicts.setdefault(message.message_id, Verdict(retry=True, reason=reason))
    return verdicts
