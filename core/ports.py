"""Ports the engine talks through; each cloud folder implements them with its own services."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from jitc.models import AuditEvent, Outcome
from jitc.secrets import Secret, SecretRef, SecretStore

__all__ = ["EventSink", "ExpiryScheduler", "RequestQueue", "Secret", "SecretRef", "SecretStore"]


class ExpiryScheduler(Protocol):
    """Schedules the revoke of a grant at its expiry. Both calls are idempotent by grant id."""

    def schedule(self, grant_id: str, integration: str, at: datetime) -> None: ...

    def cancel(self, grant_id: str) -> None: ...


class RequestQueue(Protocol):
    """Carries messages (JSON text) from the intake and the scheduler to the worker."""

    def enqueue(self, message: str, group: str) -> None: ...


class EventSink(Protocol):
    """Audit events for the company's logs; outcomes for the control plane."""

    def audit(self, event: AuditEvent) -> None: ...

    def outcome(self, outcome: Outcome) -> None: ...
