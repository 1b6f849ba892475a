"""Admin sessions kept across batches, for every template whose session is a connection or a
client (PostgreSQL, Redis, RabbitMQ).

A queue delivers one message per batch more often than not, and a new client (its connection,
its login, for redis-py the client object itself) costs about what the grant does. A session is
kept after its batch only when it is idle and healthy, and handed out again only to a batch of
the same integration with the same connection settings, the same admin secret and the same label
key. The key holds a digest, never a secret, keyed with a random per-process key, so a
memory dump gives no digest that could be looked up. While kept a session holds neither the
admin secret nor the label key: the batch that takes it gives it that batch's own
(`hand_over`), and `give_back` takes them away. A session idle past its integration's limit is
closed by a timer, not left open until some later batch comes.
"""

from __future__ import annotations

import hashlib
import os
import select
import threading
import time
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel

from jitc.labels import LabelKey
from jitc.secrets import Secret

PoolKey = tuple[str, str, str]
_DIGEST_KEY = os.urandom(32)


class Keepable(Protocol):
    pool_key: PoolKey | None
    broken: bool
    # Set when the server refused this session's credential: every session kept under the same
    # key goes, since one logged in earlier proves nothing about the credential now.
    refused: bool

    def reusable(self) -> bool:
        """Idle, healthy and not failed, decided without a round trip."""

    def hand_over(self, secret: Secret | None, key: LabelKey) -> None:
        """Take a batch's secret and label key; from now on the session is that batch's."""

    def drop_secret(self) -> None:
        """Forget the secret, the label key and anything batch-scoped, before it is kept."""

    def discard(self) -> None:
        """Close for good."""


S = TypeVar("S", bound=Keepable)


def ended_by_peer(fds: Iterable[int]) -> bool:
    """Whether any of these idle connections has something to read, without waiting: the end
    of the stream or a last message from a server that closed it. poll, not select: select
    refuses a descriptor above 1023, which a process holding many connections reaches."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class KeptSession:
    """What every kept session holds beside its connection: the label key of the batch that
    holds it (none while kept), and whether the engine gave it up after a failure (then it is
    closed at its give-back, never kept: its state is not known)."""

    _key: LabelKey | None
    broken: bool = False

    @property
    def key(self) -> LabelKey:
        if self._key is None:
            raise RuntimeError("a kept session holds no label key until a batch takes it")
        return self._key


def pool_key(
    integration: str, connection: BaseModel, secret: Secret | None, key: LabelKey
) -> PoolKey:
    password = (secret.reveal() if secret is not None else "").encode()
    return (
        integration,
        _settings_json(connection),
        # Keyed BLAKE2b under a key of this process (the pool key holds no secret and lives
        # only here): a quarter of an OpenSSL HMAC's instructions. One digest of both secrets,
        # the admin secret's length first so no two pairs of secrets run together alike.
        _digest(b"%d\0%b%b" % (len(password), password, key.secret)),
    )


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, key=_DIGEST_KEY, digest_size=32).hexdigest()


# Connection settings as JSON, by object: a catalog's settings are frozen models made once,
# and serialising them was a good part of a kept batch's cost. Each entry keeps its model, so
# an id is never reused while its entry stands.
_SETTINGS_JSON: dict[int, tuple[BaseModel, str]] = {}
_SETTINGS_LOCK = threading.Lock()


def _settings_json(connection: BaseModel) -> str:
    known = _SETTINGS_JSON.get(id(connection))
    if known is not None and known[0] is connection:
        return known[1]
    text = connection.model_dump_json()
    with _SETTINGS_LOCK:
        if len(_SETTINGS_JSON) >= 64:  # catalogs reloaded many times: start again
            _SETTINGS_JSON.clear()
        _SETTINGS_JSON[id(connection)] = (connection, text)
    return text


class SessionPool(Generic[S]):
    """Idle sessions, at most `per_key` per key (enough for the worker threads of one process)
    and `in_all` in all: a server's connection slots are shared with everyone else."""

    def __init__(self, per_key: int = 4, in_all: int = 8) -> None:
        self.per_key = per_key
        self.in_all = in_all
        # Each with the time it was kept and its own integration's idle limit.
        self._kept: dict[PoolKey, list[tuple[float, float, S]]] = {}
        self._lock = threading.Lock()
        # At most one pending: it closes what has idled out, then waits for the next to.
        self._timer: threading.Timer | None = None
        self._due = 0.0

    def session(
        self,
        integration: str,
        connection: BaseModel,
        secret: Secret | None,
        key: LabelKey,
        keep: float,
        make: Callable[[], S],
    ) -> tuple[S, bool]:
        """A session kept from an earlier batch of the same integration, settings, secret and
        label key, or a new one from `make`; and whether it was kept."""
        wanted = pool_key(integration, connection, secret, key) if keep > 0 else None
        if wanted is not None:
            kept = self.take(wanted, keep, secret, key)
            if kept is not None:
                return kept, True
        session = make()
        session.pool_key = wanted
        return session, False

    def take(self, wanted: PoolKey, keep: float, secret: Secret | None, key: LabelKey) -> S | None:
        """A kept session for this key, given `secret` and `key`, or None: the caller makes a
        new one."""
        while True:
            with self._lock:
                kept = self._kept.get(wanted)
                entry = kept.pop() if kept else None
            if entry is None:
                return None
            since, _, session = entry
            if time.monotonic() - since <= keep and session.reusable():
                session.hand_over(secret, key)
                session.pool_key = wanted
                return session
            session.discard()

    def give_back(self, session: S, keep: float) -> None:
        """Keep the session for a later batch of its key if it is reusable; close it otherwise.
        A session with no key (keeping is off, or it is not to be kept) is closed."""
        wanted, session.pool_key = session.pool_key, None
        reusable = (
            wanted is not None
            and keep > 0
            and not session.refused
            and not session.broken
            and session.reusable()
        )
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
            self._arm()
        if not kept_it:
            session.discard()
        for old in stale:
            old.discard()

    def _arm(self) -> None:
        """Under the lock: have a timer close the next session to idle out. A process that gets
        no further batch (a quiet `jitc serve`) would otherwise keep its admin connections open
        and logged in long past their limit."""
        due = None
        for kept in self._kept.values():  # loops, not generators: this runs after every batch
            for since, keep, _ in kept:
                if due is None or since + keep < due:
                    due = since + keep
        if due is None:
            return
        if self._timer is not None:
            if self._due <= due:
                return
            self._timer.cancel()  # a session with a shorter limit than the pending timer's
        self._due = due
        self._timer = threading.Timer(max(0.0, due - time.monotonic()) + 0.01, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            self._timer = None
            stale = self._prune()
            self._arm()
        for old in stale:
            old.discard()

    def _prune(self) -> list[S]:
        """Under the lock: take out sessions idle longer than their own limit, and the oldest
        beyond the total cap; the caller closes them."""
        now = time.monotonic()
        count = 0
        idle = False
        empty = []
        for key, kept in self._kept.items():  # loops, not generators: this runs after every batch
            if not kept:
                empty.append(key)
            count += len(kept)
            for since, keep, _ in kept:
                idle = idle or now - since > keep
        if count <= self.in_all and not idle:
            for key in empty:
                del self._kept[key]
            return []  # nothing idle too long, nothing beyond the cap: the common case
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
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        for _, _, session in entries:
            session.discard()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(kept) for kept in self._kept.values())
