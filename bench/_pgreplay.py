"""Record what the engine sends PostgreSQL, and send the same again over raw psycopg.

`record()` watches every `Cursor.execute` (`Connection.execute` runs one, on a new cursor;
the template also keeps cursors of its own), the fetches of those cursors (iteration
included), and the `transaction()` and `pipeline()` blocks opened on a connection while it is
active, as events in order. `replay()` sends those events again on a connection of the
caller's: the same statements, parameters, transactions, savepoints and pipeline syncs, with
new names put in place of the recorded ones, each statement on a new cursor where the engine
used `Connection.execute` and on a cursor kept on that connection where the engine kept one
(so the floor is raw psycopg used as the engine uses it). Values the server makes up (role
oids, backend pids) are learned as the replay goes: where a recorded fetch returned one value
and the replay's returns another at the same place, later parameters get the new one. A
replay that errs, or that fetches rows of another shape, was not the same statements: it
raises.

This is the "same statements" floor of bench_pg_latency.py: the engine's own statements with
none of its Python around them (request checks, planning, labels, sealing, events).
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

Event = tuple[Any, ...]
OID_FLOOR = 16384  # FirstNormalObjectId: below it, the server's own objects


@dataclass
class Recording:
    events: list[Event] = field(default_factory=list)
    # Every connection a statement went to, in order of first use, with its database.
    connections: dict[int, str] = field(default_factory=dict)


def _text(conn: psycopg.Connection[Any], query: Any) -> str:
    if isinstance(query, sql.Composable):
        return query.as_string(conn)
    if isinstance(query, bytes):
        return query.decode()
    return str(query)


@contextlib.contextmanager
def record() -> Iterator[Recording]:
    """Record, for the duration of the block, on every connection of this process."""
    found = Recording()
    cursor_of: dict[int, int] = {}  # id(cursor) -> its index among the events
    originals = {
        "execute": psycopg.Cursor.execute,
        "conn_execute": psycopg.Connection.execute,
        "transaction": psycopg.Connection.transaction,
        "pipeline": psycopg.Connection.pipeline,
        "fetchone": psycopg.Cursor.fetchone,
        "fetchall": psycopg.Cursor.fetchall,
        "iter": psycopg.Cursor.__iter__,
    }

    temporary: list[bool] = [False]  # inside Connection.execute: its cursor is a new one

    def conn_execute(conn: Any, *args: Any, **kw: Any) -> Any:
        temporary[0] = True
        try:
            return originals["conn_execute"](conn, *args, **kw)
        finally:
            temporary[0] = False

    def execute(cursor: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        conn = cursor.connection
        if id(conn) not in found.connections:
            found.connections[id(conn)] = conn.info.dbname
        index = len(found.events)
        # Connection.execute passes prepare=None; the replay's Connection.execute does too.
        kw = {k: v for k, v in kw.items() if v is not None}
        # Which cursor: None for the new one of a Connection.execute, else the kept cursor's
        # identity, so the replay keeps a cursor of its own wherever the engine kept one.
        kept = None if temporary[0] else id(cursor)
        found.events.append(("exec", id(conn), _text(conn, query), params, kw, kept))
        # A kept cursor's fetches belong to its latest statement.
        cursor_of[id(cursor)] = index
        temporary[0] = False
        return originals["execute"](cursor, query, params, **kw)

    def fetch(name: str) -> Callable[..., Any]:
        def fetching(cursor: Any, *args: Any) -> Any:
            rows = originals[name](cursor, *args)
            if id(cursor) in cursor_of:
                shown = [rows] if name == "fetchone" else rows
                found.events.append(("fetch", cursor_of[id(cursor)], name, shown))
            return rows

        return fetching

    def iterate(cursor: Any) -> Any:
        rows = originals["fetchall"](cursor)
        if id(cursor) in cursor_of:
            found.events.append(("fetch", cursor_of[id(cursor)], "fetchall", rows))
        return iter(rows)

    def block(name: str) -> Callable[..., Any]:
        @contextlib.contextmanager
        def wrapped(conn: Any, *args: Any, **kw: Any) -> Iterator[Any]:
            found.events.append((f"{name}-enter", id(conn)))
            try:
                with originals[name](conn, *args, **kw) as inner:
                    yield inner
            except BaseException:
                # A block left by an error: the replay cannot make the same error happen.
                found.events.append(("failed", id(conn)))
                raise
            found.events.append((f"{name}-exit", id(conn)))

        return wrapped

    patches: dict[tuple[type, str], Any] = {
        (psycopg.Cursor, "execute"): execute,
        (psycopg.Connection, "execute"): conn_execute,
        (psycopg.Connection, "transaction"): block("transaction"),
        (psycopg.Connection, "pipeline"): block("pipeline"),
        (psycopg.Cursor, "fetchone"): fetch("fetchone"),
        (psycopg.Cursor, "fetchall"): fetch("fetchall"),
        (psycopg.Cursor, "__iter__"): iterate,
    }
    saved = {key: getattr(key[0], key[1]) for key in patches}
    for (cls, name), value in patches.items():
        setattr(cls, name, value)
    try:
        yield found
    finally:
        for (cls, name), value in saved.items():
            setattr(cls, name, value)


def _swap(value: Any, names: dict[str, str], learned: dict[Any, Any]) -> Any:
    if isinstance(value, str):
        for old, new in names.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, list | tuple):
        return type(value)(_swap(v, names, learned) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return learned.get(value, value)
    return value


def _learn(recorded: Any, replayed: Any, learned: dict[Any, Any]) -> None:
    if isinstance(recorded, list | tuple) and isinstance(replayed, list | tuple):
        if len(recorded) != len(replayed):
            raise RuntimeError(f"replay fetched {len(replayed)} rows, recorded {len(recorded)}")
        for a, b in zip(recorded, replayed, strict=True):
            _learn(a, b, learned)
    elif (
        isinstance(recorded, int)
        and isinstance(replayed, int)
        and recorded != replayed
        # Only values the server makes up (oids of new roles, backend pids): small numbers
        # are counts and flags, which must not be rewritten where they recur.
        and recorded >= OID_FLOOR
    ):
        learned[recorded] = replayed


# The cursors a replay keeps on each connection, where the engine kept one: raw psycopg
# reusing a cursor as the engine's session does, across replays on one kept connection.
_KEPT: weakref.WeakKeyDictionary[psycopg.Connection[Any], dict[int, Any]] = (
    weakref.WeakKeyDictionary()
)


def replay(
    conn: psycopg.Connection[Any],
    recording: Recording,
    names: dict[str, str],
    connect: Callable[[str], psycopg.Connection[Any]],
) -> float:
    """Send the recorded events again: those of the first recorded connection on `conn`, those
    of any other on a new connection to its database (`connect(dbname)`, made where the
    engine made its own and closed at the end), each recorded name in `names` replaced.

    Returns the seconds the replay spent on its own bookkeeping (putting the names and learned
    values in place, learning values from fetched rows): work no program sending these
    statements itself would do, for a timed caller to leave out of the floor."""
    spent = 0.0
    learned: dict[Any, Any] = {}
    cursors: dict[int, Any] = {}
    blocks: list[Any] = []
    first = next(iter(recording.connections), None)
    conns: dict[int, psycopg.Connection[Any]] = {} if first is None else {first: conn}
    try:
        for index, event in enumerate(recording.events):
            kind, owner = event[0], event[1]
            if kind == "fetch":
                _, at, name, rows = event
                got = getattr(cursors[at], name)()
                start = time.perf_counter()
                try:
                    _learn(rows, [got] if name == "fetchone" else got, learned)
                except RuntimeError as exc:
                    sent = recording.events[at]
                    raise RuntimeError(f"{exc}: {sent[2][:300]} {sent[3]!r:.300}") from None
                spent += time.perf_counter() - start
                continue
            if kind == "failed":
                raise RuntimeError("the recording has a block that ended in an error")
            if owner not in conns:
                conns[owner] = connect(recording.connections[owner])
            target = conns[owner]
            if kind == "exec":
                _, _, text, params, kw, kept = event
                start = time.perf_counter()
                query = _swap(text, names, learned).encode()
                values = _swap(params, names, learned)
                spent += time.perf_counter() - start
                if kept is None:
                    cursors[index] = target.execute(query, values, **kw)
                else:
                    mine = _KEPT.setdefault(target, {})
                    if kept not in mine:
                        mine[kept] = target.cursor()
                    cursors[index] = mine[kept]
                    mine[kept].execute(query, values, **kw)
            elif kind.endswith("-enter"):
                opened = getattr(target, kind.removesuffix("-enter"))()
                opened.__enter__()
                blocks.append(opened)
            else:
                blocks.pop().__exit__(None, None, None)
    finally:
        for owner, other in conns.items():
            if owner != first:
                other.close()
    return spent
