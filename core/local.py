"""Local implementations of the ports, for the CLI, `jitc serve`, the demo and the tests."""

from __future__ import annotations

import heapq
import json
import os
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO

from jitc.messages import expiry_message
from jitc.models import AuditEvent, Outcome, utcnow
from jitc.ports import EventSink, RequestQueue


class NullScheduler:
    """No timers: expiry is left to the target (VALID UNTIL) and to the sweep."""

    def schedule(self, grant_id: str, integration: str, at: datetime) -> None:
        return None

    def cancel(self, grant_id: str) -> None:
        return None


class ThreadScheduler:
    """One timer thread; at each grant's expiry it puts an expiry message on the queue."""

    def __init__(self, target: RequestQueue, clock: Callable[[], datetime] = utcnow) -> None:
        self._target = target
        self._clock = clock
        self._heap: list[tuple[datetime, str, str]] = []
        self._live: dict[str, datetime] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="jitc-scheduler", daemon=True)
        self._thread.start()

    def schedule(self, grant_id: str, integration: str, at: datetime) -> None:
        with self._cond:
            if self._live.get(grant_id) == at:
                return  # rebuilt from the targets again, or a redelivered grant: one timer
            self._live[grant_id] = at
            heapq.heappush(self._heap, (at, grant_id, integration))
            self._cond.notify()

    def cancel(self, grant_id: str) -> None:
        with self._cond:
            self._live.pop(grant_id, None)

    def pending(self) -> dict[str, datetime]:
        with self._cond:
            return dict(self._live)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        with self._cond:
            while not self._stopped:
                if not self._heap:
                    self._cond.wait()
                    continue
                at, grant_id, integration = self._heap[0]
                wait = (at - self._clock()).total_seconds()
                if wait > 0:
                    self._cond.wait(timeout=min(wait, 1.0))
                    continue
                heapq.heappop(self._heap)
                if self._live.get(grant_id) == at:
                    del self._live[grant_id]
                    self._target.enqueue(expiry_message(grant_id, integration), grant_id)


class JsonLinesSink:
    """Audit events and outcomes as JSON lines, to a file or a stream."""

    def __init__(self, stream: IO[str] | None = None, path: Path | None = None) -> None:
        self._path = path
        self._stream = stream
        self._lock = threading.Lock()

    def _write(self, doc: dict[str, object]) -> None:
        line = json.dumps(doc, separators=(",", ":"), default=str)
        with self._lock:
            if self._path is not None:
                self._append(self._path, (line + "\n").encode())
            else:
                stream = self._stream or sys.stderr
                stream.write(line + "\n")
                stream.flush()

    @staticmethod
    def _append(path: Path, data: bytes) -> None:
        """Append one whole line or nothing: a line cut short by a full disk would glue the next
        record onto it, and a reader would lose both."""
        # Events name identities and grants: a new file is the connector user's only.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            written = 0
            try:
                while written < len(data):
                    written += os.write(fd, data[written:])
            except OSError:
                if written:
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)

    def audit(self, event: AuditEvent) -> None:
        self._write({"audit": event.model_dump(mode="json", exclude_none=True)})

    def outcome(self, outcome: Outcome) -> None:
        self._write({"outcome": outcome.model_dump(mode="json", exclude_none=True)})


class MemorySink:
    """Keeps what it is given (tests, the demo)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()

    def audit(self, event: AuditEvent) -> None:
        with self._lock:
            self.events.append(event)

    def outcome(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)


class FanOutSink:
    def __init__(self, *sinks: EventSink) -> None:
        self.sinks = sinks

    def audit(self, event: AuditEvent) -> None:
        for sink in self.sinks:
            sink.audit(event)

    def outcome(self, outcome: Outcome) -> None:
        for sink in self.sinks:
            sink.outcome(outcome)
