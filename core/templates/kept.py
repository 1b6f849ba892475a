"""Admin sessions kept across batches, for the templates whose session is a client object (Redis,
RabbitMQ): the rules of `postgresql_pool`, for any session.

A queue delivers one message per batch more often than not, and a new client (its connection,
its login, for redis-py the client object itself) costs about what the grant does. A session is
kept after its batch only when it is idle and healthy, and handed out again only to a batch of
the same integration with the same connection settings, the same admin secret and the same label
key. The key holds digests, never a secret: each is keyed with a random per-process key, so a
memory dump gives no digest that could be looked up. While kept a session holds no secret: the
batch that takes it gives it that batch's own (`hand_over`), and `give_back` takes it away.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel

from jitc.labels import LabelKey
from jitc.secrets import Secret

PoolKey = tuple[str, str, str, str]
_DIGEST_KEY = os.urandom(32)


class Keepable(Protocol):
    pool_key: PoolKey | None
    # Set when the server refused this session's credential: every session kept under the same
    # key goes, since one logged in earlier proves nothing about the credential now.
    refused: bool

    def reusable(self) -> bool:
        """Idle, healthy and not failed, decided without a round trip."""

    def hand_over(self, secret: Secret | None) -> None:
        """Take a batch's secret; from now on the session is that batch's."""

    def drop_secret(self) -> None:
        """Forget the secret, and anything batch-scoped, before the session is kept."""

    def discard(self) -> None:
        """Close for good."""


S = TypeVar("S", bound=Keepable)


def pool_key(
    integration: str, connection: BaseModel, secret: Secret | None, key: LabelKey
) -> PoolKey:
    password = secret.reveal() if secret is not None else ""
    return (
        integration,
        connection.model_dump_json(),
        # One-shot digests: a third of hmac.new's time, once per batch.
        hmac.digest(_DIGEST_KEY, b"secret\0" + password.encode(), "sha256").hex(),
        hmac.digest(_DIGEST_KEY, b"label key\0" + key.secret, "sha256").hex(),
    )


class SessionPool(Generic[S]):
    """Idle sessions, at most `per_key` per key (enough for the worker threads of one process)
    and `in_all` in all: a server's connection slots are shared with everyone else."""

    def __init__(self, per_key: int = 4, in_all: int = 8) -> None:
        self.per_key = per_key
        self.in_all = in_all
        # Each with the time it was kept and its own integration's idle limit.
        self._kept: dict[PoolKey, list[tuple[float, float, S]]] = {}
        self._lock = threading.Lock()

    def take(self, wanted: PoolKey, keep: float, secret: Secret | None) -> S | None:
        """A kept session for this key, given `secret`, or None: the caller makes a new one."""
        while True:
            with self._lock:
                kept = self._kept.get(wanted)
                entry = kept.pop() if kept else None
            if entry is None:
                return None
            since, _, session = entry
            if time.monotonic() - since <= keep and session.reusable():
                session.hand_over(secret)
                session.pool_key = wanted
                return session
            session.discard()

    def give_back(self, session: S, keep: float) -> None:
        """Keep the session for a later batch of its key if it is reusable; close it otherwise.
        A session with no key (keeping is off, or it is not to be kept) is closed."""
        wanted, session.pool_key = session.pool_key, None
        reusable = wanted is not None and keep > 0 and not session.refused and session.reusable()
        session.drop_secret()
        stale: list[S] = []
        kept_it = False
        with self._lock:
            if wanted is not None and session.refused:
                stale.extend(s for _, _, s in self._kept.pop(wanted, []))
            elif wanted is not None and reusable:
                kept = self._kept.setdefault(wanted, [])
                if len(kept) < self.per_key:
                    kept.append((time.monotonic(), keep, session))
                    kept_it = True
            stale += self._prune()
        if not kept_it:
            session.discard()
        for old in stale:
            old.discard()

    def _prune(self) -> list[S]:
        """Under the lock: take out sessions idle longer than their own limit, and the oldest
        beyond the total cap; the caller closes them."""
        now = time.monotonic()
        entries = sorted(
            ((since, keep, key, s) for key, kept in self._kept.items() for since, keep, s in kept),
            key=lambda entry: entry[0],
            reverse=True,
        )
        stay = [e for e in entries if now - e[0] <= e[1]][: self.in_all]
        chosen = {id(e[3]) for e in stay}
        out = [e[3] for e in entries if id(e[3]) not in chosen]
        self._kept.clear()
        for since, keep, key, s in reversed(stay):
            self._kept.setdefault(key, []).append((since, keep, s))
        return out

    def close_all(self) -> None:
        """Close every kept session (tests, and a process that stops)."""
        with self._lock:
            entries = [entry for kept in self._kept.values() for entry in kept]
            self._kept.clear()
        for _, _, session in entries:
            session.discard()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(kept) for kept in self._kept.values())
