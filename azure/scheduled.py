"""Timer-triggered jobs. Each is one entry in `JOBS`: the app setting that holds its NCRONTAB
schedule and a function returning a JSON-able summary; `function_app.py` registers one timer
function per entry: the sweep, and the inventory sync (`sync.py`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jitc.azure import observability, runtime
from jitc.azure.queues import decoded
from jitc.messages import request_of


@dataclass(frozen=True)
class Job:
    schedule_setting: str  # the app setting holding the NCRONTAB expression
    run: Callable[[Callable[[], bool]], dict[str, Any]]


def _budget() -> float:
    # Below the host's functionTimeout, so a sweep with a backlog stops between revokes.
    return float(os.environ.get("JITC_SWEEP_BUDGET_SECONDS") or 240)


def is_revoke(text: str) -> bool:
    """Whether a queue message asks for a revoke (an expiry, or a request whose action is
    revoke; its signature is checked again when it runs)."""
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    if isinstance(doc, dict) and doc.get("kind") == "expire":
        return True
    request = request_of(text)
    return request is not None and request.action == "revoke"


def redrive_revokes(limit: int = 32) -> int:
    """Send the revokes in the poison queue back to the worker's queue: a failed revoke is
    retried until it succeeds (alarmed meanwhile), never left to wait for an expiry that may be
    hours away. Grants stay in the poison queue for a person to look at."""
    poison = runtime.poison_queue()
    moved = 0
    # max_messages bounds the listing: without it the client keeps fetching pages, and the
    # grants released below would be received again and again.
    received = list(poison.receive_messages(max_messages=limit, visibility_timeout=30))
    texts = [decoded(message.content) for message in received]
    for message, text in zip(received, texts, strict=True):
        if text is not None and is_revoke(text):
            runtime.queue().enqueue(text, "")
            poison.delete_message(message)
            moved += 1
    for message, text in zip(received, texts, strict=True):
        if text is None or not is_revoke(text):
            poison.update_message(message, visibility_timeout=0)
    return moved


def sweep(proceed: Callable[[], bool]) -> dict[str, Any]:
    """Revoke every grant past its expiry that the targets still hold, and look at the poison
    queue: messages there are operations that failed every retry (alarmed); revokes among them
    are retried."""
    sinks = runtime.sinks()
    sinks.discard()
    report = runtime.engine().sweep(proceed=proceed)
    sinks.flush()
    poisoned = len(list(runtime.poison_queue().peek_messages(max_messages=32)))
    redriven = redrive_revokes() if poisoned else 0
    summary: dict[str, Any] = {
        "revoked": report.revoked,
        "forgotten": report.forgotten,
        "failed": report.failed,
        "remaining": report.remaining,
        "unfinished": report.unfinished,
        "poisoned": poisoned,
        "redriven": redriven,
    }
    if poisoned:
        observability.error("poison queue not empty", poisoned=poisoned, redriven=redriven)
    if report.failed or report.unfinished:
        observability.warning("sweep done", sweep=summary)
    else:
        # The heartbeat: its absence for a few intervals is alarmed.
        observability.info("sweep completed", sweep=summary)
    return summary


def sync(proceed: Callable[[], bool]) -> dict[str, Any]:
    """The inventory sync (jitc.azure.sync), imported when its timer fires: the inventory
    module is ~15 ms of every worker's cold start, and only this job uses it."""
    from jitc.azure.sync import sync as run_sync

    return run_sync(proceed)


JOBS: dict[str, Job] = {
    "sweep": Job("JITC_SWEEP_SCHEDULE", sweep),
    "sync": Job("JITC_SYNC_SCHEDULE", sync),
}


def run(name: str) -> dict[str, Any]:
    deadline = time.monotonic() + _budget()
    return JOBS[name].run(lambda: time.monotonic() < deadline)
