"""Expiry on EventBridge Scheduler: one one-time schedule per grant, named by the grant id, in a
dedicated group, that puts the expiry message on the worker's queue and then deletes itself.

EventBridge Scheduler fires with 60-second precision (anywhere within the minute it is set
for), so the time is rounded *up* to the next whole minute: the revoke is never early and at most
about two minutes late; docs/aws.md explains what else bounds the lag.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from jitc.messages import expiry_message
from jitc.ports import RequestQueue

# Scheduler keeps retrying a failed delivery to SQS for up to a day, then dead-letters it.
RETRY_POLICY = {"MaximumEventAgeInSeconds": 86400, "MaximumRetryAttempts": 185}


def fire_time(at: datetime) -> datetime:
    """The first whole minute at or after `at`, in UTC."""
    at = at.astimezone(UTC)
    floor = at.replace(second=0, microsecond=0)
    return floor if floor == at else floor + timedelta(minutes=1)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class EventBridgeExpiryScheduler:
    def __init__(
        self,
        client: Any,
        group: str,
        queue_arn: str,
        role_arn: str,
        queue: RequestQueue,
        dead_letter_arn: str | None = None,
        clock: Any = None,
    ) -> None:
        if dead_letter_arn is not None and dead_letter_arn.endswith(".fifo"):
            # CreateSchedule refuses a FIFO dead-letter queue: every grant would fail after
            # it was made. Refused here, once, at the first use of the scheduler.
            raise ValueError(
                f"{dead_letter_arn}: a schedule's dead-letter queue must be a standard queue"
            )
        self._client = client
        self.group = group
        self.queue_arn = queue_arn
        self.role_arn = role_arn
        self._queue = queue
        self.dead_letter_arn = dead_letter_arn
        self._clock = clock or (lambda: datetime.now(UTC))

    def target(self, grant_id: str, integration: str) -> dict[str, Any]:
        target: dict[str, Any] = {
            "Arn": self.queue_arn,
            "RoleArn": self.role_arn,
            "Input": expiry_message(grant_id, integration),
            "RetryPolicy": RETRY_POLICY,
        }
        if self.queue_arn.endswith(".fifo"):
            target["SqsParameters"] = {"MessageGroupId": grant_id}
        if self.dead_letter_arn:
            target["DeadLetterConfig"] = {"Arn": self.dead_letter_arn}
        return target

    def schedule(self, grant_id: str, integration: str, at: datetime) -> None:
        when = fire_time(at)
        if when <= self._clock() + timedelta(seconds=5):
            # Too close to schedule reliably: the revoke is due now, so it is queued now.
            self._queue.enqueue(expiry_message(grant_id, integration), grant_id)
            return
        try:
            self._client.create_schedule(
                Name=grant_id,
                GroupName=self.group,
                ScheduleExpression=f"at({when:%Y-%m-%dT%H:%M:%S})",
                ScheduleExpressionTimezone="UTC",
                FlexibleTimeWindow={"Mode": "OFF"},
                ActionAfterCompletion="DELETE",
                Description=f"jit-connector: revoke {grant_id} of {integration}",
                Target=self.target(grant_id, integration),
            )
        except ClientError as exc:
            # A redelivered grant finds its schedule already there: the expiry is a pure
            # function of the signed request, so the existing schedule is the right one.
            if _code(exc) != "ConflictException":
                raise

    def cancel(self, grant_id: str) -> None:
        try:
            self._client.delete_schedule(Name=grant_id, GroupName=self.group)
        except ClientError as exc:
            if _code(exc) != "ResourceNotFoundException":
                raise
