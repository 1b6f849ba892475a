"""The local runtime behind `jitc serve` and `jitc demo`: the same intake as the clouds, a
durable journal in front of in-process workers, expiry timers rebuilt from the targets, and a
sweep at start and then periodically.

Accepted means done: the intake answers 202 only once the request is in the journal, and an
entry is marked done only after its outcome was emitted, so a crash between the two replays it
(every operation is idempotent). Expiry messages are not journaled: the targets record every
live grant's expiry, and the timers and the first sweep are rebuilt from them at start.
"""

from __future__ import annotations

import json
import logging
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from jitc.catalog import Catalog
from jitc.engine import Engine
from jitc.errors import Refused
from jitc.http_intake import HttpServer, intake_app
from jitc.intake import Intake
from jitc.journal import Journal
from jitc.local import ThreadScheduler
from jitc.messages import Work, decode_message, request_of
from jitc.models import AuditEvent, utcnow
from jitc.openapi import openapi_document
from jitc.ports import EventSink
from jitc.secrets import SecretStore
from jitc.signing import Envelope, replay_key

log = logging.getLogger("jitc.runtime")
RETRY_DELAYS = (0.5, 1, 2, 5, 10, 30)
# A target unreadable at start leaves its grants without timers: tried again soon, not in an
# interval, and often enough to notice it back, rarely enough to spare a target in trouble.
STARTUP_RETRY_DELAYS = (1.0, 2.0, 2.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class _Item:
    seq: int | None  # the journal entry; None for an expiry, which the targets can rebuild
    grant_id: str
    text: str


class _Partitions:
    """One FIFO per worker; every message of a grant goes to the same one, so a grant's
    messages run in the order they were accepted while different grants run in parallel."""

    def __init__(self, count: int) -> None:
        self.queues: list[queue.Queue[_Item]] = [queue.Queue() for _ in range(count)]

    def put(self, item: _Item) -> None:
        self.queues[hash(item.grant_id) % len(self.queues)].put(item)


class _JournaledQueue:
    """What the intake enqueues to: on disk first, then to a worker."""

    def __init__(self, journal: Journal, partitions: _Partitions) -> None:
        self.journal = journal
        self.partitions = partitions

    def enqueue(self, message: str, group: str) -> None:
        doc = json.loads(message)
        key = (
            replay_key(Envelope.from_json(doc["envelope"]))
            if doc.get("kind") == "request"
            else None
        )
        seq = self.journal.append(message, group, key)
        self.partitions.put(_Item(seq, group, message))


class _ExpiryQueue:
    """What the timers enqueue to: straight to a worker."""

    def __init__(self, partitions: _Partitions) -> None:
        self.partitions = partitions

    def enqueue(self, message: str, group: str) -> None:
        self.partitions.put(_Item(None, group, message))


@dataclass
class Pending:
    """What a stopped runtime leaves for the next start."""

    journal: list[tuple[int, str]] = field(default_factory=list)  # (seq, grant id)
    timers: dict[str, datetime] = field(default_factory=dict)  # grant id -> expiry


def _runs(items: list[_Item], work: list[Work]) -> list[list[tuple[_Item, Work]]]:
    """Consecutive expiries, and consecutive requests, as groups, in the order they came."""
    groups: list[list[tuple[_Item, Work]]] = []
    for pair in zip(items, work, strict=True):
        if groups and (groups[-1][0][0].seq is None) == (pair[0].seq is None):
            groups[-1].append(pair)
        else:
            groups.append([pair])
    return groups


class LocalRuntime:
    def __init__(
        self,
        catalog: Catalog,
        secrets: SecretStore,
        sink: EventSink,
        host: str = "127.0.0.1",
        port: int = 8080,
        sweep_interval: float = 60.0,
        batch_size: int = 50,  # expiries that fall due together share one bulk revoke
        *,
        journal: Path | None = None,
        workers: int = 4,
        read_timeout: int = 10,
        max_connections: int = 100,
    ) -> None:
        self._tempdir = None
        if journal is None:  # tests and the demo: durable for the process's life only
            self._tempdir = tempfile.TemporaryDirectory(prefix="jitc-journal-")
            journal = Path(self._tempdir.name) / "journal.sqlite3"
        self.journal = Journal(journal)
        self.partitions = _Partitions(max(1, workers))
        self.scheduler = ThreadScheduler(_ExpiryQueue(self.partitions))
        self.sink = sink
        self.engine = Engine(catalog, secrets, self.scheduler, sink)
        self.intake = Intake(catalog, _JournaledQueue(self.journal, self.partitions))
        self.sweep_interval = sweep_interval
        self.batch_size = batch_size
        self.started_at = 0.0
        self.timers_rebuilt_at: float | None = None
        self.timers_ready = threading.Event()  # set once the first rebuild has run
        self.timers_complete = threading.Event()  # set once every target's timers are back
        self.timers_rebuilt = 0
        self.timers_unread: dict[str, str] = {}  # integration -> why its timers are not back
        self.timers_back_at: float | None = None
        self._stop = threading.Event()
        self._retries: set[threading.Timer] = set()
        self._retry_lock = threading.Lock()
        self.http = HttpServer(
            intake_app(self.intake, lambda: openapi_document(self.url)),
            host,
            port,
            max_connections=max_connections,
            read_timeout=read_timeout,
            # a whole request (64 KiB at most) within three read timeouts
            request_timeout=3 * read_timeout,
        )
        self._workers = [
            threading.Thread(target=self._work, args=(q,), name=f"jitc-worker-{i}", daemon=True)
            for i, q in enumerate(self.partitions.queues)
        ]
        self._maintainer = threading.Thread(target=self._maintain, name="jitc-sweep", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.http.host}]" if ":" in self.http.host else self.http.host
        return f"http://{host}:{self.http.port}"

    def start(self) -> LocalRuntime:
        self.started_at = time.monotonic()
        # What was accepted before a stop or a crash runs first, in the order it was accepted.
        for entry in self.journal.pending():
            self.partitions.put(_Item(entry.seq, entry.grant_id, entry.message))
        for thread in (*self._workers, self._maintainer):
            thread.start()
        self.http.start()
        return self

    def stop(self, timeout: float = 30.0) -> Pending:
        """Stop accepting, let the batches in flight finish, and say what is left.

        Whatever was accepted and not done stays in the journal for the next start; live grants
        keep their expiry in the target, which the next start's timers and sweep act on.
        """
        self.http.stop()
        self._stop.set()
        with self._retry_lock:
            for timer in self._retries:
                timer.cancel()
        deadline = time.monotonic() + timeout
        for thread in (*self._workers, self._maintainer):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        pending = Pending(
            journal=[(e.seq, e.grant_id) for e in self.journal.pending()],
            timers=self.scheduler.pending(),
        )
        self.scheduler.stop()
        self.journal.close()
        if self._tempdir is not None:
            self._tempdir.cleanup()
        return pending

    # -- workers ---------------------------------------------------------------------------

    def _batch(self, source: queue.Queue[_Item]) -> list[_Item]:
        try:
            items = [source.get(timeout=0.2)]
        except queue.Empty:
            return []
        while len(items) < self.batch_size:
            try:
                items.append(source.get_nowait())
            except queue.Empty:
                break
        return items

    def _work(self, source: queue.Queue[_Item]) -> None:
        attempts: dict[str, int] = {}
        while not self._stop.is_set():
            items = self._batch(source)
            if not items:
                continue
            work: list[Work] = []
            runnable: list[_Item] = []
            done: list[_Item] = []
            for item in items:
                try:
                    # A journaled request was verified before it went into the journal, which
                    # only this user can write: a key rotated since must not drop it.
                    work.append(
                        decode_message(item.text, self.engine.catalog, time.time(), verified=True)
                    )
                    runnable.append(item)
                except Refused as exc:
                    # Never retried: it cannot become valid. Recorded, like a dead letter,
                    # with the ids the control plane waits on when the message names them.
                    self._refuse(item, exc)
                    done.append(item)
                except Exception:  # a message no code path expected must not stop the worker
                    log.exception("message could not be decoded; recorded as refused")
                    self._audit_refusal(Refused("message", "could not be decoded"))
                    done.append(item)
            failed: list[_Item] = []
            for group in _runs(runnable, work):
                items_, works = [i for i, _ in group], [w for _, w in group]
                try:
                    if items_[0].seq is None:  # expiries that fell due together: bulk revoke
                        outcomes = self.engine.revoke_batch([w.request for w in works])
                    else:
                        outcomes = self.engine.execute_batch(works)
                except Exception:  # e.g. the event sink is down: the whole group runs again
                    log.exception("batch failed; it will run again")
                    failed.extend(items_)
                else:
                    for item, outcome in zip(items_, outcomes, strict=True):
                        (failed if outcome.status == "failed" else done).append(item)
            self._mark_done(done)
            for item in done:
                attempts.pop(item.text, None)
            for item in failed:
                tries = attempts.get(item.text, 0)
                attempts[item.text] = tries + 1
                self._retry(source, item, RETRY_DELAYS[min(tries, len(RETRY_DELAYS) - 1)])

    def _refuse(self, item: _Item, exc: Refused) -> None:
        request = request_of(item.text)
        if request is None:
            self._audit_refusal(exc)
            return
        try:
            self.engine.refuse(request, exc)
        except Exception:
            log.exception("could not record the refusal of %s", request.request_id)

    def _audit_refusal(self, exc: Refused) -> None:
        try:
            self.sink.audit(
                AuditEvent(type="refusal", status="refused", field=exc.field, message=exc.message)
            )
        except Exception:
            log.exception("could not record a refused message")

    def _mark_done(self, items: list[_Item]) -> None:
        seqs = [item.seq for item in items if item.seq is not None]
        try:
            self.journal.mark_done(seqs)
        except Exception:  # they run again at the next start: idempotent, so only late
            log.exception("could not mark %d journal entries done", len(seqs))

    def _retry(self, source: queue.Queue[_Item], item: _Item, delay: float) -> None:
        def again() -> None:
            with self._retry_lock:
                self._retries.discard(timer)
            if not self._stop.is_set():
                source.put(item)

        timer = threading.Timer(delay, again)
        timer.daemon = True
        with self._retry_lock:
            if self._stop.is_set():
                return  # a journaled item stays pending; an expiry is rebuilt at start
            self._retries.add(timer)
        timer.start()

    # -- timers and sweep ------------------------------------------------------------------

    def rebuild_timers(self, names: list[str] | None = None) -> tuple[int, dict[str, str]]:
        """Schedule the revoke of every live grant at the expiry its target records; say which
        integrations could not be read, and why."""
        now = utcnow()
        scheduled = 0
        unread: dict[str, str] = {}
        for name, grants in self.engine.live_grants(names).items():
            if isinstance(grants, str):
                unread[name] = grants
                continue
            for grant in grants:
                if grant.state == "active" and grant.expires_at > now:
                    self.scheduler.schedule(grant.grant_id, name, grant.expires_at)
                    scheduled += 1
        return scheduled, unread

    def _rebuild(self, names: list[str] | None) -> dict[str, str]:
        try:
            count, unread = self.rebuild_timers(names)
        except Exception as exc:
            log.exception("rebuilding timers failed")
            return {name: type(exc).__name__ for name in names or self.engine.catalog.integrations}
        with self._retry_lock:
            if not self.timers_complete.is_set():  # what serve reports: the start's rebuild
                self.timers_rebuilt += count
                self.timers_unread = dict(unread)
        for name, reason in unread.items():
            log.warning("timers of %s not rebuilt yet (retrying): %s", name, reason)
        if names is not None and not unread:
            log.info("timers of %s rebuilt: %d", ", ".join(names), count)
        return unread

    def _sweep(self) -> bool:
        """Sweep; True when every target could be read."""
        try:
            report = self.engine.sweep()
        except Exception:
            log.exception("sweep failed")
            return False
        unread = set(report.failed) & set(self.engine.catalog.integrations)
        return not unread

    def _maintain(self) -> None:
        """Timers and a sweep at start, then a sweep each interval. A target that cannot be read
        is tried again within seconds, not an interval later: its grants' timers are missing."""
        unread = self._rebuild(None)
        self.timers_rebuilt_at = time.monotonic()
        log.info(
            "%d expiry timers rebuilt from the targets in %.2f s",
            self.timers_rebuilt,
            self.timers_rebuilt_at - self.started_at,
        )
        self.timers_ready.set()
        while not self._stop.is_set():
            swept = self._sweep()
            tries = 0
            while unread or not swept:
                if self._stop.wait(STARTUP_RETRY_DELAYS[min(tries, len(STARTUP_RETRY_DELAYS) - 1)]):
                    return
                tries += 1
                if unread:
                    unread = self._rebuild(sorted(unread))
                    if not unread and not self.timers_complete.is_set():
                        self.timers_back_at = time.monotonic()
                        self.timers_complete.set()
                if not swept:
                    swept = self._sweep()
            if not self.timers_complete.is_set():
                self.timers_back_at = time.monotonic()
                self.timers_complete.set()
            try:
                self.journal.prune(time.time() - 2 * self.intake.replay.window - 3600)
            except Exception:
                log.exception("journal prune failed")
            if self._stop.wait(self.sweep_interval):
                return
            unread = self._rebuild(None)
