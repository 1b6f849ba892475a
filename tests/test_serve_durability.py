"""`jitc serve` keeps every accepted request through kill -9 and SIGINT, rebuilds its expiry
timers from the targets at start, and sweeps at once (a real process on the real PostgreSQL)."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pgtest import INTEGRATION
from serveproc import Serve, grant, revoke

from jitc.models import derive_grant_id


@pytest.fixture
def serve(tmp_path: Path, admin: Any, make_env: Any) -> Iterator[Serve]:
    server = Serve(tmp_path)
    yield server
    server.close()


def _ids(outcomes: list[dict[str, Any]], status: str) -> set[str]:
    return {o["request_id"] for o in outcomes if o["status"] == status}


def test_requests_accepted_before_a_kill_9_all_run_after_the_restart(
    serve: Serve, admin: Any
) -> None:
    run = secrets.token_hex(3)
    # A grant that a later revoke, accepted while the database is down, must take away.
    serve.start()
    first = f"kill-{run}-first"
    assert serve.send(grant(first))[0] == 202
    serve.wait_for(lambda o: first in _ids(o, "granted"))
    serve.kill()
    principal = next(o for o in serve.outcomes() if o["request_id"] == first)["principal"]

    # The database is unreachable: every accepted request fails and waits for a retry.
    serve.start(reachable=False)
    accepted = []
    for i in range(12):
        status, answer = serve.send(grant(f"kill-{run}-{i}"))
        assert status == 202, answer
        accepted.append(f"kill-{run}-{i}")
    assert serve.send(revoke(first))[0] == 202
    time.sleep(1.0)  # the worker has tried and failed some of them by now
    serve.kill()
    assert not _ids(serve.outcomes(), "granted") & set(accepted)

    serve.start()
    outcomes = serve.wait_for(
        lambda o: set(accepted) <= _ids(o, "granted") and first in _ids(o, "revoked")
    )
    assert set(accepted) <= _ids(outcomes, "granted")
    can_login = admin.execute(
        "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (principal,)
    ).fetchall()
    assert can_login in ([], [(False,)])  # dropped, or a NOLOGIN tombstone


def test_sigint_stops_cleanly_says_what_is_pending_and_the_next_start_runs_it(
    serve: Serve,
) -> None:
    run = secrets.token_hex(3)
    serve.start(reachable=False)
    accepted = [f"int-{run}-{i}" for i in range(5)]
    for request_id in accepted:
        assert serve.send(grant(request_id))[0] == 202
    code, output = serve.interrupt(signal.SIGINT)
    assert code == 0, output
    assert "5 accepted request(s) not done yet" in output, output
    serve.start()
    serve.wait_for(lambda o: set(accepted) <= _ids(o, "granted"))


def test_sigterm_stops_cleanly_and_lists_live_grants_with_their_expiry(serve: Serve) -> None:
    request_id = f"term-{secrets.token_hex(3)}"
    serve.start()
    assert serve.send(grant(request_id, "30m"))[0] == 202
    serve.wait_for(lambda o: request_id in _ids(o, "granted"))
    code, output = serve.interrupt(signal.SIGTERM)
    assert code == 0, output
    assert derive_grant_id(INTEGRATION, request_id) in output and "expires" in output, output


def test_after_a_kill_9_the_expiry_timer_is_rebuilt_from_the_target(
    serve: Serve, admin: Any
) -> None:
    request_id = f"timer-{secrets.token_hex(3)}"
    grant_id = derive_grant_id(INTEGRATION, request_id)
    serve.start("--sweep-interval", "3600")
    # Long enough for the restart and its sweep to come before the expiry on a busy machine.
    assert serve.send(grant(request_id, "20s"))[0] == 202
    serve.wait_for(lambda o: request_id in _ids(o, "granted"))
    serve.kill()  # its timer dies with it
    serve.start("--sweep-interval", "3600")
    assert "1 expiry timer(s) rebuilt" in serve.read_until("rebuilt from the targets")
    outcomes = serve.wait_for(lambda o: f"expire-{grant_id}" in _ids(o, "revoked"))
    assert f"sweep-{grant_id}" not in _ids(outcomes, "revoked")  # the timer did it


def test_a_grant_that_expired_while_serve_was_down_is_swept_at_start(
    serve: Serve, admin: Any
) -> None:
    request_id = f"sweep-{secrets.token_hex(3)}"
    grant_id = derive_grant_id(INTEGRATION, request_id)
    serve.start("--sweep-interval", "3600")
    assert serve.send(grant(request_id, "5s"))[0] == 202
    outcomes = serve.wait_for(lambda o: request_id in _ids(o, "granted"))
    serve.kill()
    expires = next(o for o in outcomes if o["request_id"] == request_id)["expires_at"]
    left = datetime.fromisoformat(expires) - datetime.now(UTC)
    time.sleep(max(0.0, left.total_seconds()) + 1)  # expired while nothing ran
    serve.start("--sweep-interval", "3600")
    serve.wait_for(lambda o: f"sweep-{grant_id}" in _ids(o, "revoked"))


def test_the_journal_refuses_a_replay_across_a_restart(serve: Serve) -> None:
    doc = grant(f"replay-{secrets.token_hex(3)}")
    now = int(time.time())
    serve.start()
    assert serve.send(doc, timestamp=now)[0] == 202
    serve.kill()
    serve.start()  # a new process: its in-memory replay guard is empty
    status, answer = serve.send(doc, timestamp=now)
    assert status == 409 and answer["field"] == "signature", answer


def test_a_second_serve_on_the_same_journal_is_refused(serve: Serve) -> None:
    serve.start()
    other = Serve(serve.folder)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jitc.cli",
            "serve",
            "--catalog",
            str(serve.catalog()),
            "--port",
            str(other.port),
            "--journal",
            str(serve.journal),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=serve.folder,
    )
    assert result.returncode == 1 and "in use by another jitc serve" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_serve_on_the_same_journal_by_another_name_is_refused(serve: Serve) -> None:
    serve.start()
    alias = serve.folder / "alias.sqlite3"
    alias.symlink_to(serve.journal)
    for stale in serve.folder.glob("*.lock"):  # a lock file, if any, cannot be relied on
        stale.unlink()
    other = Serve(serve.folder)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "jitc.cli", "serve"),
            "--catalog",
            str(serve.catalog()),
            "--port",
            str(other.port),
            "--journal",
            str(alias),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=serve.folder,
    )
    assert result.returncode == 1 and "in use by another jitc serve" in result.stderr, result
