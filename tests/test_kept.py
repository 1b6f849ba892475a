"""The pool of kept sessions: idle limits and the total cap, at each give-back (no server
needed)."""

from __future__ import annotations

import time

import pytest

from jitc.labels import LabelKey
from jitc.secrets import Secret
from jitc.templates.kept import PoolKey, SessionPool


class FakeSession:
    def __init__(self, name: str) -> None:
        self.name = name
        self.pool_key: PoolKey | None = None
        self.refused = False
        self.broken = False
        self.closed = False

    def reusable(self) -> bool:
        return not self.closed

    def hand_over(self, secret: Secret | None, key: LabelKey) -> None:
        return None

    def drop_secret(self) -> None:
        return None

    def discard(self) -> None:
        self.closed = True


KEY = LabelKey.from_secret("a-label-key-for-the-pool-tests")


def _key(name: str) -> PoolKey:
    return (name, "{}", "s")


def test_a_session_past_its_idle_limit_is_closed_at_the_next_give_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool: SessionPool[FakeSession] = SessionPool()
    old, new = FakeSession("old"), FakeSession("new")
    old.pool_key, new.pool_key = _key("a"), _key("b")
    pool.give_back(old, 5.0)
    assert len(pool) == 1 and not old.closed
    later = time.monotonic() + 10
    monkeypatch.setattr(time, "monotonic", lambda: later)
    pool.give_back(new, 300.0)
    assert old.closed and not new.closed and len(pool) == 1
    assert pool.take(_key("b"), 300.0, None, KEY) is new
    assert pool.take(_key("a"), 300.0, None, KEY) is None


def test_the_total_cap_closes_the_oldest_and_a_taken_key_leaves_no_empty_entry() -> None:
    pool: SessionPool[FakeSession] = SessionPool(per_key=4, in_all=2)
    sessions = [FakeSession(str(i)) for i in range(3)]
    for index, session in enumerate(sessions):
        session.pool_key = _key(str(index))
        pool.give_back(session, 300.0)
    assert [s.closed for s in sessions] == [True, False, False] and len(pool) == 2
    assert pool.take(_key("1"), 300.0, None, KEY) is sessions[1]
    extra = FakeSession("x")
    extra.pool_key = _key("2")
    pool.give_back(extra, 300.0)
    assert len(pool) == 2 and not extra.closed
    assert _key("1") not in pool._kept
    # Newest first for a key.
    assert pool.take(_key("2"), 300.0, None, KEY) is extra
    assert pool.take(_key("2"), 300.0, None, KEY) is sessions[2]


def test_the_pool_key_tells_every_pair_of_admin_secret_and_label_key_apart() -> None:
    """One digest covers both secrets: moving bytes from one into the other, or swapping them,
    gives another key; the same pair, read again by a later batch, the same one."""
    from pydantic import BaseModel

    from jitc.templates.kept import pool_key

    class Settings(BaseModel):
        host: str = "h"

    settings = Settings()
    label = "k" * 16

    def key(secret: str | None, label_key: str) -> PoolKey:
        given = Secret(secret) if secret is not None else None
        return pool_key("i", settings, given, LabelKey.from_secret(label_key))

    assert key("ab", label) == key("ab", label)
    assert key("ab", label) != key("a", "b" + label)
    assert key("abkkkkkkkkkkkkkkkk", "b" * 16) != key("ab", "k" * 16 + "b" * 16)
    assert key(None, label) == key("", label)  # no credential: the login without a password
    assert key("0", label) != key("", "0" + label)
    # Neither secret is in the key (each with letters no hex digest holds).
    assert all(secret not in "".join(key(secret, label)) for secret in ("pw-secret-xyz", label))
