"""Adversarial checks of the rotation's hand-over: the engine, refused with the value it had,
re-reads the secret while a rotation finishes (real files, a real FIFO to hold one read)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from jitc.rotation import _write_private
from jitc.secrets import FileSecretStore, Secret, SecretRef, pending_path


def _opened(path: Path) -> int:
    """How many descriptors of this process have `path` open (ours, and the reader's)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            continue
    return count


def test_a_rotation_finishing_between_the_two_reads_still_yields_the_new_password(
    tmp_path: Path,
) -> None:
    """The engine was refused: the target already takes the pending value. Its re-read reads the
    file (old), then the rotation renames the pending file over it, then the re-read looks for
    the pending file, which is gone: without the new value in the candidates, the operation
    fails although nothing is wrong. The FIFO holds the first read open until the rename."""
    secret = tmp_path / "admin.json"
    os.mkfifo(secret, 0o600)
    ref = SecretRef(f"file:{secret}#password")
    pending = Path(pending_path(str(secret)))
    _write_private(pending, json.dumps({"password": "new-password-abcdefghijkl"}))
    writer = os.open(secret, os.O_RDWR)  # the FIFO's writer: a read of it waits for our data
    found: list[Secret] = []
    reader = threading.Thread(target=lambda: found.extend(FileSecretStore().candidates(ref)))
    reader.start()
    try:
        deadline = time.monotonic() + 10
        while _opened(secret) < 2 and reader.is_alive():
            assert time.monotonic() < deadline, "the re-read never opened the secret file"
            time.sleep(0.01)
        # It may have read the pending file already, or not: the rotation now finishes.
        os.replace(pending, secret)
        os.write(writer, json.dumps({"password": "old-password-abcdefghijkl"}).encode())
    finally:
        os.close(writer)
        reader.join(10)
    assert "new-password-abcdefghijkl" in [s.reveal() for s in found]


def test_the_label_key_never_shows_in_a_repr() -> None:
    """The label key MACs every label and derives every grant's password: like a Secret, it must
    not print itself (a traceback with locals, a formatted session, an assertion report)."""
    from jitc.labels import LabelKey

    key = LabelKey.from_secret("label-key-never-printed-0123456789")
    assert "label-key-never-printed" not in repr(key)
    assert "label-key-never-printed" not in str(key)
