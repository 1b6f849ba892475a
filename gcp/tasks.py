"""The request queue and the expiry timers, both on one Cloud Tasks queue.

Every message is one HTTP task that Cloud Tasks delivers to the worker with an OIDC token of
the invoker service account. Names are hashes, never sequences (sequential names throttle a
queue), and a name makes `CreateTask` idempotent: `ALREADY_EXISTS` means it is already there.

- A request task is named from the hash of the signed message, so the same signed request
  accepted by two intake instances is queued once (a replay, refused with 409).
- An expiry task is named from the grant id and fires at the expiry. Cloud Tasks schedules at
  most 30 days ahead and keeps a task 31 days: an expiry more than 24 days ahead gets a *hop*
  task that the worker turns into the next one (each hop named by grant id and its own fire
  time, so no two share a name). A name stays
  taken for about an hour after its task ran or was deleted; a grant id scheduled again inside
  that time gets an unnamed task (a spare expiry is harmless: a revoke of what is gone succeeds).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from jitc.errors import Refused
from jitc.messages import expiry_message

# Cloud Tasks refuses a schedule_time more than 30 days ahead, and deletes a task 31 days after
# its creation whether it succeeded or not: a task scheduled near the limit would have a day
# for its retries before a failing revoke or hop is dropped. Scheduled at most this far, every
# task keeps a week of them (and an hour for clock skew).
MAX_AHEAD = timedelta(days=31) - timedelta(days=7) - timedelta(hours=1)
# An expiry this close is queued at once rather than scheduled.
IMMEDIATE = timedelta(seconds=5)
HOP = "hop"


def task_id(*parts: str) -> str:
    """A task id as Cloud Tasks allows it ([A-Za-z0-9_-], at most 500): a hash, spread evenly."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def status_name(exc: Exception) -> str | None:
    """Google's status name (`ALREADY_EXISTS`, `ABORTED`) of an API error, from the gRPC code
    or from the REST answer's `error.status`."""
    code = getattr(exc, "grpc_status_code", None)
    if code is not None:
        return str(getattr(code, "name", code))
    response = getattr(exc, "response", None)
    try:
        status = response.json()["error"]["status"] if response is not None else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return str(status) if status else None


def hop_message(grant_id: str, integration: str, expires_at: datetime) -> str:
    return json.dumps(
        {
            "kind": HOP,
            "grant_id": grant_id,
            "integration": integration,
            "expires_at": expires_at.astimezone(UTC).isoformat(),
        }
    )


class CloudTasksQueue:
    """`queue`: projects/P/locations/L/queues/Q; `worker_url`: the worker's HTTPS URL (also the
    OIDC audience); `invoker`: the service account whose OIDC token the tasks carry."""

    def __init__(self, client: Any, queue: str, worker_url: str, invoker: str) -> None:
        self._client = client
        self.queue = queue
        self.worker_url = worker_url
        self.invoker = invoker

    def task(self, body: str, name: str | None, at: datetime | None = None) -> dict[str, Any]:
        task: dict[str, Any] = {
            "http_request": {
                "url": self.worker_url,
                "http_method": "POST",
                "headers": {"Content-Type": "application/json"},
                "body": body.encode(),
                "oidc_token": {
                    "service_account_email": self.invoker,
                    "audience": self.worker_url,
                },
            }
        }
        if name is not None:
            task["name"] = f"{self.queue}/tasks/{name}"
        if at is not None:
            task["schedule_time"] = at.astimezone(UTC)
        return task

    def create(self, body: str, name: str | None, at: datetime | None = None) -> bool:
        """Create the task; False when a task of that name already exists (or did lately)."""
        from google.api_core import exceptions

        try:
            self._client.create_task(parent=self.queue, task=self.task(body, name, at))
        except exceptions.Conflict as exc:
            # Over REST every 409 is a Conflict: ALREADY_EXISTS is ours to accept, ABORTED is
            # a failure to retry.
            if status_name(exc) != "ALREADY_EXISTS":
                raise
            return False
        return True

    def exists(self, name: str) -> bool:
        from google.api_core import exceptions

        try:
            self._client.get_task(name=f"{self.queue}/tasks/{name}")
        except exceptions.NotFound:
            return False
        return True

    def delete(self, name: str) -> None:
        from google.api_core import exceptions

        with contextlib.suppress(exceptions.NotFound):
            self._client.delete_task(name=f"{self.queue}/tasks/{name}")

    def enqueue(self, message: str, group: str) -> None:
        if not self.create(message, task_id("request", message)):
            # The same signed message is already queued (or ran within the last hour).
            raise Refused("request", "this signed request was already accepted")


class CloudTasksExpiryScheduler:
    def __init__(self, queue: CloudTasksQueue, clock: Callable[[], datetime] | None = None) -> None:
        self._queue = queue
        self._clock = clock or (lambda: datetime.now(UTC))

    def schedule(self, grant_id: str, integration: str, at: datetime) -> None:
        self.schedule_from(grant_id, integration, at, name=task_id("expire", grant_id))

    def schedule_from(self, grant_id: str, integration: str, at: datetime, name: str) -> None:
        """The task that revokes at `at`, or the hop towards it, under `name`."""
        now = self._clock()
        if at <= now + IMMEDIATE:
            # Due now: queued now (named, so two deliveries of one grant queue it once).
            self._queue.create(expiry_message(grant_id, integration), name)
            return
        if at - now > MAX_AHEAD:
            body, fire = hop_message(grant_id, integration, at), now + MAX_AHEAD
        else:
            body, fire = expiry_message(grant_id, integration), at
        if self._queue.create(body, name, fire) or self._queue.exists(name):
            return
        # The name ran or was deleted within the hour and is still reserved: an unnamed task.
        self._queue.create(body, None, fire)

    def hop(self, grant_id: str, integration: str, at: datetime) -> None:
        """A hop task fired: schedule the next step, named by this step's fire time."""
        # Named by the minute it runs: never the name of the hop now running (created a month
        # ago), and one name for a redelivery of this hop within the minute.
        minute = int(self._clock().timestamp()) // 60
        step = task_id("hop", grant_id, at.isoformat(), str(minute))
        self.schedule_from(grant_id, integration, at, name=step)

    def cancel(self, grant_id: str) -> None:
        # Only the first task is known by name; a later hop that still fires revokes a grant
        # that is gone, which succeeds and changes nothing.
        self._queue.delete(task_id("expire", grant_id))
