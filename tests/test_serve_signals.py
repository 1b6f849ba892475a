"""Stopping `jitc serve` in the middle of a burst: every request that was run had its 202
answered, and nothing was run that was not answered (a real process on the real PostgreSQL)."""

from __future__ import annotations

import http.client
import json
import secrets
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from serveproc import PRIVATE, Serve, grant

from jitc.signing import sign


@pytest.fixture
def serve(tmp_path: Path, admin: Any, make_env: Any) -> Iterator[Serve]:
    server = Serve(tmp_path)
    yield server
    server.close()


def _post(port: int, doc: dict[str, Any]) -> int | None:
    """The status the client saw, or None when the connection ended without an answer."""
    body = json.dumps(doc).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v1/requests", body, sign(body, PRIVATE, "cp").headers())
        return conn.getresponse().status
    except OSError:  # refused, reset, or closed before the answer
        return None
    finally:
        conn.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_burst_leaves_no_request_run_without_its_answer(
    serve: Serve, signum: int
) -> None:
    run = secrets.token_hex(3)
    ids = [f"burst-{run}-{i}" for i in range(80)]
    serve.start()
    answered = threading.Semaphore(0)
    signalled = threading.Event()

    def one(request_id: str) -> int | None:
        status = _post(serve.port, grant(request_id))
        answered.release()
        return status

    def stop_midway() -> None:
        for _ in range(20):  # a quarter of the burst has its answers
            answered.acquire()
        assert serve.proc is not None
        serve.proc.send_signal(signum)
        signalled.set()

    stopper = threading.Thread(target=stop_midway)
    stopper.start()
    with ThreadPoolExecutor(8) as pool:
        statuses = dict(zip(ids, pool.map(one, ids), strict=True))
    stopper.join()
    assert signalled.is_set()
    code, output = serve.exited()
    assert code == 0, output

    accepted = {i for i, s in statuses.items() if s == 202}
    assert accepted and len(accepted) < len(ids), statuses  # the signal came mid-burst
    serve.start()  # runs what was accepted and not done yet
    serve.wait_for(lambda o: accepted <= {x["request_id"] for x in o})
    code, output = serve.interrupt(signal.SIGTERM)
    assert code == 0 and "0 accepted request(s) not done yet" in output, output
    ran = {o["request_id"] for o in serve.outcomes()}
    assert ran == accepted, {i: statuses[i] for i in ran ^ accepted}
