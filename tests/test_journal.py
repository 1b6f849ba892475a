"""The journal on its own: durable settings, order, done-marking, replay keys, privacy, owner."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from jitc.errors import Refused
from jitc.journal import Journal, JournalError


def test_entries_come_back_in_order_until_done_and_replays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    seqs = [journal.append(f"m{i}", f"g{i % 2}", f"k{i}") for i in range(4)]
    with pytest.raises(Refused, match="replayed"):
        journal.append("again", "g0", "k1")
    journal.mark_done([seqs[1]])
    journal.close()
    again = Journal(path)  # another process's view after a stop or a crash
    assert [(e.message, e.grant_id) for e in again.pending()] == [
        ("m0", "g0"),
        ("m2", "g0"),
        ("m3", "g1"),
    ]
    with pytest.raises(Refused):
        again.append("again", "g1", "k1")  # done, but still remembered
    assert again.prune(accepted_before=float("inf")) == 1
    again.append("again", "g1", "k1")  # forgotten once stale
    again.close()


def test_the_journal_is_private_durable_and_has_one_owner(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    journal.append("m", "g", None)
    for file in tmp_path.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    with pytest.raises(JournalError, match="in use"):
        Journal(path)
    settings = journal._conn.execute("PRAGMA synchronous").fetchone()
    mode = journal._conn.execute("PRAGMA journal_mode").fetchone()
    assert settings == (2,) and mode == ("wal",)  # FULL: a commit is on disk when it returns
    journal.close()
    Journal(path).close()  # the owner let go


def test_an_unusable_path_is_a_journal_error(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite3").mkdir()
    with pytest.raises(JournalError):
        Journal(tmp_path / "dir.sqlite3")
