"""Inventory sync: what each target holds (names only) and the connector's own view of it,
sent to the control plane as signed `inventory` events, in pages, only what changed.

Each integration's records stream from a reader thread through a small queue into pages cut
where the content says (a record whose hash ends a page), so adding one table changes one or
two pages, not every page after it; memory holds a page and a few chunks, whatever the target's
size. A page carries the sha256 of its records; the manifest that follows lists every page's
hash. When the control plane acknowledged a version (its 2xx answer to the manifest names the
sync id, the integration and the version), the next sync sends only the pages whose hash that
version lacks. Any answer that does not name exactly what was sent (none, another version, an
old sync's) is no acknowledgement: the state is cleared, a delta is sent again in full at once,
and the worst a lying control plane can cause is resending everything.

A target that cannot be read, or stops answering mid-read, fails its own part (a `failed`
manifest, reported); the others go on. Its reader thread is abandoned, never closed from here:
closing a driver's connection under a thread blocked in it is not safe.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import hashlib
import json
import logging
import os
import queue
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from jitc.catalog import Catalog, Integration
from jitc.errors import JitcError, Refused
from jitc.models import INVENTORY_NAME_MAX, INVENTORY_SCHEMA_VERSION, Grant, utcnow
from jitc.secrets import SecretStore
from jitc.templates.base import InventoryRecord

log = logging.getLogger("jitc.inventory")

PAGE_MIN = 256  # records: no content-defined cut before this many
PAGE_MAX = 2000  # records: always cut here
PAGE_AVERAGE = 1024  # a record ends a page with probability 1/PAGE_AVERAGE past PAGE_MIN
PAGE_BYTES_MAX = 512 * 1024  # serialized records in one page, whatever their names' lengths
CHUNK = 500  # records per hand-over from the reader thread
QUEUE_CHUNKS = 4  # chunks in flight between the reader thread and the pager
DEFAULT_STALL_SECONDS = 60.0
_HASH = re.compile(r"^[0-9a-f]{64}$")
_SYNC_ID = re.compile(r"^[0-9a-f]{32}$")

Record = dict[str, Any]
Status = Literal["complete", "failed", "unfinished", "not_sent"]


class TransportError(JitcError):
    """The control plane could not be told: the sync stops (the next one starts over)."""


class Declined(JitcError):
    """The control plane answered, and refused this event (a 4xx): not a transport failure."""


class Stalled(JitcError):
    pass


class Unfinished(JitcError):
    pass


class InventoryTransport(Protocol):
    """Sends one event body (`{"type": "inventory", "inventory": ...}`); returns the answer's
    body where the receiver can answer (the webhook), None where it cannot (a file)."""

    def send(self, doc: dict[str, object]) -> bytes | None: ...


@dataclass(frozen=True)
class Acked:
    """A version the control plane acknowledged, and the page hashes it holds."""

    version: str
    pages: tuple[str, ...]
    sync_id: str


class SyncState(Protocol):
    """Where the acknowledged versions are kept between syncs (a file; a table on AWS)."""

    def load(self, integration: str) -> Acked | None: ...

    def save(self, integration: str, acked: Acked | None) -> None: ...


def acked_from(doc: object) -> Acked | None:
    """A stored acknowledgement, or None for anything malformed (then the sync is full)."""
    if not isinstance(doc, dict):
        return None
    version, pages, sync_id = doc.get("version"), doc.get("pages"), doc.get("sync_id")
    if not (isinstance(version, str) and _HASH.match(version)):
        return None
    if not (isinstance(sync_id, str) and _SYNC_ID.match(sync_id)):
        return None
    if not isinstance(pages, list) or not all(isinstance(p, str) and _HASH.match(p) for p in pages):
        return None
    if version_of_hashes(pages) != version:
        return None  # a state that does not add up is not trusted to skip anything
    return Acked(version, tuple(pages), sync_id)


def acked_to(acked: Acked) -> dict[str, Any]:
    return {"version": acked.version, "pages": list(acked.pages), "sync_id": acked.sync_id}


class FileSyncState:
    """One JSON file (mode 0600), replaced whole on each save under a lock, so `jitc sync`
    and a running `jitc serve` can share it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_name(self.path.name + ".lock")
        # Never through a link: the default state file is in the working directory.
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        found = doc.get("integrations") if isinstance(doc, dict) else None
        return found if isinstance(found, dict) else {}

    def load(self, integration: str) -> Acked | None:
        return acked_from(self._read().get(integration))

    def save(self, integration: str, acked: Acked | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            doc = self._read()
            if acked is None:
                doc.pop(integration, None)
            else:
                doc[integration] = acked_to(acked)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".sync-state-")
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump({"v": 1, "integrations": doc}, out, sort_keys=True)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise


class MemorySyncState:
    """Acknowledgements for the life of the process (tests; a runtime with no state file)."""

    def __init__(self) -> None:
        self._acked: dict[str, Acked] = {}

    def load(self, integration: str) -> Acked | None:
        return self._acked.get(integration)

    def save(self, integration: str, acked: Acked | None) -> None:
        if acked is None:
            self._acked.pop(integration, None)
        else:
            self._acked[integration] = acked


class JsonLinesTransport:
    """Events as JSON lines to a stream: no answer, so every sync is full."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def send(self, doc: dict[str, object]) -> bytes | None:
        self.out.write(json.dumps(doc, separators=(",", ":")) + "\n")
        self.out.flush()
        return None


# -- records ---------------------------------------------------------------------------------


def _clip(text: str) -> tuple[str, bool]:
    # Lone surrogates (bytes a target could not decode) would make the JSON unencodable.
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > INVENTORY_NAME_MAX:
        return text[:INVENTORY_NAME_MAX], True
    return text, False


def clean(record: Record) -> Record:
    """A record as it may leave: every text field within the limit; a cut one is marked, with
    the hash of the uncut record so that two long names cut alike stay apart. Control
    characters and JSON-looking names stay as they are: json.dumps escapes them, and the
    receiver gets the name the target holds."""
    out: Record = {}
    cut = False
    for key, value in record.items():
        if value is None:
            continue
        if isinstance(value, str):
            value, was_cut = _clip(value)
            cut = cut or was_cut
        elif isinstance(value, list):
            value = [_clip(str(v))[0] for v in value[:64]]
        out[key] = value
    if cut:
        out["truncated"] = True
        full = json.dumps(record, sort_keys=True, ensure_ascii=True, default=str)
        out["full_sha256"] = hashlib.sha256(full.encode("utf-8", "backslashreplace")).hexdigest()
    return out


def _text(value: object) -> str | None:
    """A driver may hand a name over as bytes (PostgreSQL under SQL_ASCII, binary collations)."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def target_record(item: InventoryRecord) -> Record:
    return clean(
        {
            "kind": item.kind,
            "name": _text(item.name),
            "parent": _text(item.parent),
            "arn": _text(item.arn),
            "id": _text(item.id),
        }
    )


def grant_record(grant: Grant) -> Record:
    return clean(
        {
            "kind": "grant",
            "name": grant.grant_id,
            "permission": grant.permission,
            "principal": grant.principal,
            "identity": grant.identity,
            "state": grant.state,
            "expires_at": grant.expires_at.isoformat(),
        }
    )


def permission_records(integration: Integration) -> Iterator[Record]:
    """The catalog's permissions for this integration: what the control plane may offer."""
    for name in sorted(integration.permissions):
        permission = integration.permissions[name]
        yield clean(
            {
                "kind": "permission",
                "name": name,
                "resources": list(permission.resources),
                "max_duration": permission.max_duration or integration.max_duration_text,
            }
        )


def canonical(record: Record) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@dataclass
class Page:
    records: list[Record]
    hash: str


def paginate(records: Iterable[Record]) -> Iterator[Page]:
    """Pages cut by content: a record ends a page when its hash says so (past PAGE_MIN), or
    at PAGE_MAX records or PAGE_BYTES_MAX bytes. The page hash is the sha256 of the page's
    records as canonical JSON (`[r1,r2,...]`, keys sorted, no spaces, ASCII)."""
    page: list[Record] = []
    digest = hashlib.sha256(b"[")
    size = 0
    for record in records:
        text = canonical(record).encode()
        if page:
            digest.update(b",")
        digest.update(text)
        page.append(record)
        size += len(text) + 1
        cut = len(page) >= PAGE_MAX or size >= PAGE_BYTES_MAX
        if not cut and len(page) >= PAGE_MIN:
            mark = int.from_bytes(hashlib.sha256(text).digest()[:4], "big")
            cut = mark % PAGE_AVERAGE == 0
        if cut:
            digest.update(b"]")
            yield Page(page, digest.hexdigest())
            page, digest, size = [], hashlib.sha256(b"["), 0
    if page:
        digest.update(b"]")
        yield Page(page, digest.hexdigest())


def version_of_hashes(hashes: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


# -- reading a target without being held by it -----------------------------------------------

_END = object()
# Reader threads the sync gave up on, by integration: while one is still blocked in its target,
# no new one starts there, so a target hung for days holds one thread and connection, not one
# per sync.
_HUNG: dict[str, threading.Thread] = {}
_HUNG_LOCK = threading.Lock()


class _Reader:
    """Runs `source` in a daemon thread; hands its records over in chunks through a bounded
    queue. A target silent for `stall` seconds raises Stalled here, and the thread is left to
    end on its own (it stops at its next record, and closes its own connection)."""

    def __init__(self, source: Callable[[], Iterator[Record]], stall: float, name: str) -> None:
        with _HUNG_LOCK:
            hung = _HUNG.get(name)
            if hung is not None and hung.is_alive():
                raise Stalled("the previous read of this target is still waiting for it")
            _HUNG.pop(name, None)
        self.name = name
        self.stall = stall
        self._queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._cancel = threading.Event()
        # In the caller's context (context variables: log context, the caller's identity).
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run, source), name=f"jitc-sync-{name}", daemon=True
        )
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._cancel.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Callable[[], Iterator[Record]]) -> None:
        records = source()
        try:
            chunk: list[Record] = []
            for record in records:
                chunk.append(record)
                if len(chunk) >= CHUNK:
                    if not self._put(chunk):
                        return
                    chunk = []
            if (not chunk or self._put(chunk)) and not self._cancel.is_set():
                self._put(_END)
        except Exception as exc:
            self._put(exc)
        finally:
            close = getattr(records, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    def __iter__(self) -> Iterator[Record]:
        while True:
            try:
                item = self._queue.get(timeout=self.stall)
            except queue.Empty:
                self._cancel.set()
                with _HUNG_LOCK:
                    _HUNG[self.name] = self._thread
                raise Stalled(f"the target did not answer for {self.stall:g} s") from None
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            assert isinstance(item, list)
            yield from item

    def cancel(self) -> None:
        self._cancel.set()


# -- the sync -----------------------------------------------------------------------------------


@dataclass
class IntegrationSync:
    status: Status
    version: str | None = None
    base_version: str | None = None
    pages: int = 0
    sent: int = 0
    records: int = 0
    acked: bool = False
    full: bool = True
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class SyncReport:
    sync_id: str
    integrations: dict[str, IntegrationSync] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(i.status == "complete" for i in self.integrations.values())

    @property
    def healthy(self) -> bool:
        """Complete, and every acknowledged version kept: what a scheduled sync's heartbeat
        stands for (a state store that cannot be read or written must reach the alarm too)."""
        return self.ok and not any(i.error for i in self.integrations.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "sync_id": self.sync_id,
            "ok": self.ok,
            "integrations": {k: v.as_dict() for k, v in self.integrations.items()},
        }


TargetRecords = Callable[[Integration], Iterator[Grant | InventoryRecord]]


def _ack_of(answer: bytes | None) -> tuple[str, str, str] | None:
    if not answer:
        return None
    try:
        doc = json.loads(answer)
    except ValueError:
        return None
    ack = doc.get("ack") if isinstance(doc, dict) else None
    if not isinstance(ack, dict):
        return None
    values = (ack.get("sync_id"), ack.get("integration"), ack.get("version"))
    if not all(isinstance(v, str) for v in values):
        return None
    return values  # type: ignore[return-value]


class Syncer:
    def __init__(
        self,
        catalog: Catalog,
        target_records: TargetRecords,
        transport: InventoryTransport,
        state: SyncState,
        *,
        clock: Callable[[], datetime] = utcnow,
        stall_seconds: float = DEFAULT_STALL_SECONDS,
        proceed: Callable[[], bool] | None = None,
    ) -> None:
        self.catalog = catalog
        self.target_records = target_records
        self.transport = transport
        self.state = state
        self.clock = clock
        self.stall = stall_seconds
        self.proceed = proceed

    def run(self, names: Iterable[str] | None = None, *, full: bool = False) -> SyncReport:
        report = SyncReport(uuid.uuid4().hex)
        chosen = set(names) if names is not None else None
        stopped: str | None = None
        for integration in self.catalog.integrations.values():
            if chosen is not None and integration.name not in chosen:
                continue
            if stopped is not None:
                report.integrations[integration.name] = IntegrationSync("not_sent", error=stopped)
                continue
            if self.proceed is not None and not self.proceed():
                report.integrations[integration.name] = IntegrationSync(
                    "unfinished", error="out of time before it started"
                )
                continue
            try:
                result = self._one(report.sync_id, integration, full)
                if result.status == "complete" and not result.acked and not result.full:
                    # A delta the control plane did not take: it may lack the base. Send all.
                    result = self._one(report.sync_id, integration, True)
            except TransportError as exc:
                stopped = f"control plane unreachable: {exc}"
                result = IntegrationSync("not_sent", error=stopped)
            report.integrations[integration.name] = result
        return report

    def _event(self, sync_id: str, integration: Integration, **fields: Any) -> dict[str, object]:
        body = {
            "schema_version": INVENTORY_SCHEMA_VERSION,
            "sync_id": sync_id,
            "integration": integration.name,
            "target_kind": integration.kind,
            "time": self.clock().isoformat(),
            **fields,
        }
        return {"type": "inventory", "inventory": body}

    def _send(self, doc: dict[str, object]) -> bytes | None:
        try:
            return self.transport.send(doc)
        except JitcError as exc:
            status = getattr(exc, "status", None)
            if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
                raise Declined(f"the control plane refused the event: HTTP {status}") from None
            raise TransportError(str(exc)) from None
        except OSError as exc:
            raise TransportError(type(exc).__name__) from None

    def _records(self, integration: Integration) -> Callable[[], Iterator[Record]]:
        def source() -> Iterator[Record]:
            yield from permission_records(integration)
            grants: list[Grant] = []
            items = self.target_records(integration)
            try:
                for item in items:
                    if isinstance(item, Grant):
                        grants.append(item)  # few: the live grants, sorted before sending
                        continue
                    if grants:
                        grants.sort(key=lambda g: g.grant_id)
                        yield from (grant_record(g) for g in grants)
                        grants = []
                    yield target_record(item)
                grants.sort(key=lambda g: g.grant_id)
                yield from (grant_record(g) for g in grants)
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()

        return source

    def _one(self, sync_id: str, integration: Integration, full: bool) -> IntegrationSync:
        name = integration.name
        base = None if full else self._load(name)
        known = set(base.pages) if base is not None else set()
        result = IntegrationSync("complete", base_version=base.version if base else None)
        result.full = base is None
        hashes: list[str] = []
        sent: list[int] = []
        reader: _Reader | None = None
        try:
            reader = _Reader(self._records(integration), self.stall, name)
            for index, page in enumerate(paginate(reader)):
                if self.proceed is not None and not self.proceed():
                    raise Unfinished("out of time mid-read; the next sync sends it")
                hashes.append(page.hash)
                result.records += len(page.records)
                if page.hash in known:
                    continue
                self._send(
                    self._event(
                        sync_id,
                        integration,
                        kind="page",
                        index=index,
                        hash=page.hash,
                        records=page.records,
                    )
                )
                sent.append(index)
        except (TransportError, Declined) as exc:
            if reader is not None:
                reader.cancel()
            if isinstance(exc, TransportError):
                raise
            return IntegrationSync("failed", error=str(exc), records=result.records)
        except Unfinished as exc:
            if reader is not None:
                reader.cancel()
            return IntegrationSync("unfinished", error=str(exc), records=result.records)
        except Exception as exc:  # the target's failure: its own part fails, reported
            if reader is not None:
                reader.cancel()
            # Within the schema's limit, whatever a driver put in its message.
            error = (str(exc) if isinstance(exc, JitcError) else _describe(exc))[:1000]
            with contextlib.suppress(Declined):
                # A control plane that refuses the failure's report (a 4xx) leaves this part
                # failed, as it is: the other integrations still sync.
                self._send(
                    self._event(sync_id, integration, kind="manifest", status="failed", error=error)
                )
            return IntegrationSync("failed", error=error, records=result.records)
        version = version_of_hashes(hashes)
        try:
            answer = self._send(
                self._event(
                    sync_id,
                    integration,
                    kind="manifest",
                    status="complete",
                    version=version,
                    base_version=result.base_version,
                    pages=hashes,
                    sent=sent,
                    record_count=result.records,
                )
            )
        except Declined:
            answer = b""  # the control plane could not take this version (e.g. lost its base)
        result.version, result.pages, result.sent = version, len(hashes), len(sent)
        if _ack_of(answer) == (sync_id, name, version):
            result.acked = True
            result.error = self._save(name, Acked(version, tuple(hashes), sync_id))
        elif base is not None or answer is not None:
            # Not acknowledged as sent: nothing is assumed held; the next delta has no base.
            result.error = self._save(name, None)
        return result

    def _load(self, name: str) -> Acked | None:
        """The acknowledged version, or None (a full sync) when the state cannot be read."""
        try:
            return self.state.load(name)
        except Exception as exc:  # a cache: unreadable, everything is sent
            log.warning("inventory state for %s not read: %s", name, _describe(exc))
            return None

    def _save(self, name: str, acked: Acked | None) -> str | None:
        """Keep the acknowledged version; None, or what kept it from being kept. The state is
        a cache: unsaved, the next sync sends a delta against an older version (which a control
        plane that lost it declines, and gets in full), so a full disk, a read-only folder or a
        failing table costs a larger sync, never this integration's part or the others'."""
        try:
            self.state.save(name, acked)
        except Exception as exc:
            why = getattr(exc, "strerror", None) or _describe(exc)
            log.warning("inventory state for %s not saved: %s", name, why)
            return f"acknowledged version not saved: {why}"
        return None


def _describe(exc: Exception) -> str:
    """An unexpected error's type and its service's error code (botocore's `response`, Azure's
    `error_code`): never its text, which may quote what the target holds."""
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    code = code or getattr(exc, "error_code", None)
    return f"{type(exc).__name__}: {code}" if isinstance(code, str) else type(exc).__name__


def webhook_transport(catalog: Catalog, secrets: SecretStore) -> InventoryTransport:
    """The catalog's control-plane webhook, signed with the connector's key."""
    connector = catalog.connector
    if not connector.webhook_url:
        raise Refused("catalog", "connector.webhook_url is not set: nowhere to send the inventory")
    if not connector.signing_key:
        raise Refused("catalog", "connector.webhook_url needs connector.signing_key")
    from jitc.webhook import WebhookSink

    return WebhookSink.from_catalog(connector.webhook_url, connector.signing_key, secrets)


class PeriodicSync:
    """`jitc serve`'s inventory task: a sync at start, then one each interval, in its own
    thread; a failed sync is logged and the next interval tries again."""

    def __init__(self, run: Callable[[], SyncReport], interval: float) -> None:
        self._run = run
        self.interval = interval
        self.last: SyncReport | None = None
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="jitc-sync", daemon=True)

    def start(self) -> PeriodicSync:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.last = self._run()
                failed = {
                    name: part.error or part.status
                    for name, part in self.last.integrations.items()
                    if part.status != "complete" or part.error  # e.g. the state not saved
                }
                if failed:
                    log.warning("inventory sync incomplete: %s", failed)
                else:
                    log.info("inventory sync %s complete", self.last.sync_id)
            except Exception:
                log.exception("inventory sync failed")
            self.runs += 1
            if self._stop.wait(self.interval):
                return
