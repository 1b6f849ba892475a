"""The local runtime's on-disk journal: an accepted request is on disk before its 202.

SQLite in WAL mode with `synchronous=FULL`: a commit has reached the disk when `append`
returns, so a kill -9 or a power cut after the 202 cannot lose the request. An entry is marked
done only after its outcome was emitted; on start, what is not done is replayed in order.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from jitc.errors import JitcError, Refused

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    grant_id TEXT NOT NULL,
    replay_key TEXT UNIQUE,
    message TEXT NOT NULL,
    accepted REAL NOT NULL,
    done REAL
);
CREATE INDEX IF NOT EXISTS entries_pending ON entries (seq) WHERE done IS NULL;
"""


class JournalError(JitcError):
    """The journal cannot be opened or written; nothing may be accepted then."""


@dataclass(frozen=True)
class Entry:
    seq: int
    grant_id: str
    message: str
    accepted: float


class Journal:
    """Append-only log of accepted requests. Safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Request bodies name identities: readable by the connector's user only.
            # One owner at a time: two runtimes replaying one journal would run everything twice.
            # The lock is on the database file itself, so another name for it (a symlink, a
            # relative path) meets the same lock, and there is no lock file to delete.
            self._owner = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._owner)
                raise JournalError(f"journal {path} is in use by another jitc serve") from None
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"journal {path}: {exc}") from None
        self._lock = threading.Lock()

    def append(self, message: str, grant_id: str, replay_key: str | None = None) -> int:
        """Record a message durably and return its sequence number.

        A second message with the same replay key is refused: the journal outlives the
        process, so a request replayed across a restart is still caught.
        """
        with self._lock:
            try:
                cursor = self._conn.execute(
                    "INSERT INTO entries (grant_id, replay_key, message, accepted) "
                    "VALUES (?, ?, ?, ?)",
                    (grant_id, replay_key, message, time.time()),
                )
            except sqlite3.IntegrityError:
                raise Refused("signature", "replayed request") from None
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: {exc}") from None
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def mark_done(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self._lock:
            now = time.time()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "UPDATE entries SET done = ? WHERE seq = ?", [(now, seq) for seq in seqs]
                )
            except sqlite3.Error:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def pending(self) -> list[Entry]:
        """Entries not done yet, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, grant_id, message, accepted FROM entries "
                "WHERE done IS NULL ORDER BY seq"
            ).fetchall()
        return [Entry(int(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]

    def prune(self, accepted_before: float) -> int:
        """Forget done entries accepted before a moment; their replay keys are stale by then."""
        with self._lock:
            cursor = self._conn.execute(
                "DELETE FROM entries WHERE done IS NOT NULL AND accepted < ?", (accepted_before,)
            )
        return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            os.close(self._owner)
