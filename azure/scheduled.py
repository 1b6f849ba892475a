"""Timer-triggered jobs. Each is one entry in `JOBS`: the app setting that holds its NCRONTAB
schedule and a function returning a JSON-able summary; `function_app.py` registers one timer
function per entry, so a second scheduled job (an inventory sync, say) is a few lines here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jitc.azure import observability, runtime


@dataclass(frozen=True)
class Job:
    schedule_setting: str  # the app setting holding the NCRONTAB expression
    run: Callable[[Callable[[], bool]], dict[str, Any]]


def _budget() -> float:
    # Below the host's functionTimeout, so a sweep with a backlog stops between revokes.
    return float(os.environ.get("JITC_SWEEP_BUDGET_SECONDS") or 240)


def sweep(proceed: Callable[[], bool]) -> dict[str, Any]:
    """Revoke every grant past its expiry that the targets still hold, and look at the poison
    queue: messages there are operations that failed every retry (alarmed)."""
    sinks = runtime.sinks()
    sinks.discard()
    report = runtime.engine().sweep(proceed=proceed)
    sinks.flush()
    poisoned = len(list(runtime.poison_queue().peek_messages(max_messages=32)))
    summary: dict[str, Any] = {
        "revoked": report.revoked,
        "forgotten": report.forgotten,
        "failed": report.failed,
        "remaining": report.remaining,
        "unfinished": report.unfinished,
        "poisoned": poisoned,
    }
    if poisoned:
        observability.error("poison queue not empty", poisoned=poisoned)
    if report.failed or report.unfinished:
        observability.warning("sweep done", sweep=summary)
    else:
        # The heartbeat: its absence for a few intervals is alarmed.
        observability.info("sweep completed", sweep=summary)
    return summary


JOBS: dict[str, Job] = {
    "sweep": Job("JITC_SWEEP_SCHEDULE", sweep),
}


def run(name: str) -> dict[str, Any]:
    deadline = time.monotonic() + _budget()
    return JOBS[name].run(lambda: time.monotonic() < deadline)
