"""Cloud Tasks deletes a task 31 days after it was created, delivered or not
(https://cloud.google.com/tasks/docs/quotas, "Maximum task retention"): a task scheduled
near the 30-day limit has about a day left for its retries, and a revoke or hop failing
longer than that is dropped. Every expiry or hop task keeps a week for them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jitc.gcp.tasks import CloudTasksExpiryScheduler

RETENTION = timedelta(days=31)
RETRIES = timedelta(days=7)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Recorder:
    def __init__(self) -> None:
        self.created: list[tuple[dict[str, Any], str | None, datetime | None]] = []

    def create(self, body: str, name: str | None, at: datetime | None = None) -> bool:
        self.created.append((json.loads(body), name, at))
        return True

    def exists(self, name: str) -> bool:
        return True


@pytest.mark.parametrize("ahead", [timedelta(days=d) for d in (1, 20, 24, 25, 29, 30, 45, 400)])
def test_every_task_keeps_a_week_of_retention_for_its_retries(ahead: timedelta) -> None:
    queue = Recorder()
    scheduler = CloudTasksExpiryScheduler(queue, clock=lambda: NOW)  # type: ignore[arg-type]
    scheduler.schedule("g" + "a" * 24, "db", NOW + ahead)
    [(body, _, fire)] = queue.created
    assert fire is not None and fire - NOW <= RETENTION - RETRIES
    if ahead <= RETENTION - RETRIES - timedelta(hours=1):
        assert fire == NOW + ahead and body.get("kind") != "hop"
    else:
        assert body["kind"] == "hop"
