"""Admin sessions kept across batches.

A queue delivers one message per batch more often than not, and a new connection (TLS, SCRAM,
backend start) costs several times what the grant itself does. A session is kept after its
batch only when it is idle and healthy, and handed out again only to a batch of the same
integration with the same connection settings, the same admin secret and the same label key
(compared by digest: a rotated secret opens a new connection). While kept it holds no secret:
the batch that takes it gives it that batch's own, and takes it back at close.
"""

from __future__ import annotations

import hashlib
import select
import threading
import time
from typing import TYPE_CHECKING

import psycopg
from psycopg import pq

from jitc.labels import LabelKey
from jitc.secrets import Secret
from jitc.templates.postgresql import Connection

if TYPE_CHECKING:
    from jitc.templates.postgresql_session import PostgreSQLSession

PoolKey = tuple[str, str, str, str]
# Idle sessions kept per key (enough for the worker threads of one process) and in all: a
# server's connection slots are shared with everyone else.
KEPT_PER_KEY = 4
KEPT_IN_ALL = 8

_POOL: dict[PoolKey, list[tuple[float, PostgreSQLSession]]] = {}
_LOCK = threading.Lock()


def pool_key(
    integration: str, connection: Connection, secret: Secret | None, key: LabelKey
) -> PoolKey:
    password = secret.reveal() if secret is not None else ""
    return (
        integration,
        _settings_json(connection),
        hashlib.sha256(b"jitc pool\0" + password.encode()).hexdigest(),
        hashlib.sha256(b"jitc pool\0" + key.secret).hexdigest(),
    )


# Connection settings as JSON, by object: a catalog's settings are frozen models made once,
# and serialising them was a good part of a kept batch's cost. Each entry keeps its model, so
# an id is never reused while its entry stands.
_SETTINGS_JSON: dict[int, tuple[Connection, str]] = {}


def _settings_json(connection: Connection) -> str:
    known = _SETTINGS_JSON.get(id(connection))
    if known is not None and known[0] is connection:
        return known[1]
    text = connection.model_dump_json()
    with _LOCK:
        if len(_SETTINGS_JSON) >= 64:  # catalogs reloaded many times: start again
            _SETTINGS_JSON.clear()
        _SETTINGS_JSON[id(connection)] = (connection, text)
    return text


def take(
    integration: str, connection: Connection, secret: Secret | None, key: LabelKey
) -> PostgreSQLSession:
    from jitc.templates.postgresql_session import PostgreSQLSession

    keep = connection.keep_connection_seconds
    wanted = pool_key(integration, connection, secret, key) if keep > 0 else None
    while wanted is not None:
        with _LOCK:
            kept = _POOL.get(wanted)
            entry = kept.pop() if kept else None
        if entry is None:
            break
        since, session = entry
        session._secret = secret
        if time.monotonic() - since <= keep and _alive(session.conn):
            session.pool_key = wanted
            return session
        session.conn.close()
    session = PostgreSQLSession(integration, connection, secret, key)
    session.pool_key = wanted
    return session


def give_back(session: PostgreSQLSession) -> None:
    """Keep the session for a later batch if it is idle and healthy; close it otherwise."""
    wanted, session.pool_key = session.pool_key, None
    session._secret = None
    conn = session.conn
    healthy = (
        not conn.closed
        and conn.info.status == pq.ConnStatus.OK
        and conn.info.transaction_status == pq.TransactionStatus.IDLE
    )
    stale: list[PostgreSQLSession] = []
    kept_it = False
    with _LOCK:
        if wanted is not None and session.refused:
            # The credential no longer logs in (a rotation, a changed password): every
            # connection kept under it goes, so the next batch logs in with what it reads.
            stale.extend(kept_session for _, kept_session in _POOL.pop(wanted, []))
        elif wanted is not None and healthy:
            kept = _POOL.setdefault(wanted, [])
            if len(kept) < KEPT_PER_KEY:
                kept.append((time.monotonic(), session))
                kept_it = True
        stale += _prune(session.settings.keep_connection_seconds)
    if not kept_it:
        conn.close()
    for old in stale:
        old.conn.close()


def _prune(keep: float) -> list[PostgreSQLSession]:
    """Under the lock: take out sessions idle longer than `keep`, and the oldest beyond the
    total cap; the caller closes them."""
    now = time.monotonic()
    count = sum(len(kept) for kept in _POOL.values())
    if count <= KEPT_IN_ALL and all(
        now - since <= keep for kept in _POOL.values() for since, _ in kept
    ):
        for key in [key for key, kept in _POOL.items() if not kept]:
            del _POOL[key]
        return []  # nothing idle too long, nothing beyond the cap: the common case
    entries = sorted(
        ((since, key, session) for key, kept in _POOL.items() for since, session in kept),
        key=lambda entry: entry[0],
        reverse=True,
    )
    stay = [e for e in entries if now - e[0] <= keep][:KEPT_IN_ALL]
    chosen = {id(e[2]) for e in stay}
    out = [e[2] for e in entries if id(e[2]) not in chosen]
    _POOL.clear()
    for since, key, session in reversed(stay):
        _POOL.setdefault(key, []).append((since, session))
    return out


def close_all() -> None:
    """Close every kept session (tests, and a process that stops)."""
    with _LOCK:
        entries = [entry for kept in _POOL.values() for entry in kept]
        _POOL.clear()
    for _, session in entries:
        session.conn.close()


def _alive(conn: psycopg.Connection[object]) -> bool:
    """Without a round trip: an idle connection the server has ended (terminated backend,
    restart, idle timeout) has something to read, its last message or the end of the stream;
    a healthy one has nothing to say. Anything to read counts as ended: a new connection is
    cheaper than a batch that fails on its first statement."""
    if conn.closed or conn.info.transaction_status != pq.TransactionStatus.IDLE:
        return False
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return False
    return not readable
