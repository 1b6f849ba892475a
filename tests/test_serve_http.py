"""The intake's HTTP server under hostile clients, and what a redelivered grant reports, on the
in-process runtime with the real PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from descriptors import FD_SETSIZE
from pgtest import BOX_PUBLIC, INTEGRATION, LABEL_KEY, SCHEMA, catalog_doc
from serveproc import Serve
from waitress import wasyncore

from jitc.catalog import parse_catalog
from jitc.http_intake import HttpServer
from jitc.local import MemorySink
from jitc.runtime import LocalRuntime
from jitc.secrets import EnvSecretStore, SecretStores
from jitc.signing import Envelope, sign, signing_keypair

PRIVATE, PUBLIC = signing_keypair()


def _start() -> tuple[LocalRuntime, MemorySink]:
    doc = catalog_doc()
    doc["control_plane"] = {"keys": {"cp": PUBLIC}, "max_skew": "2m"}
    sink = MemorySink()
    rt = LocalRuntime(
        parse_catalog(doc),
        SecretStores({"mem": EnvSecretStore({"admin": "", "label": LABEL_KEY})}),
        sink,
        port=0,
        sweep_interval=3600,
        read_timeout=1,
        max_connections=20,
    ).start()
    return rt, sink


@pytest.fixture
def runtime(admin: Any, make_env: Any) -> Iterator[tuple[LocalRuntime, MemorySink]]:
    rt, sink = _start()
    yield rt, sink
    rt.stop()


def _body(request_id: str, duration: str = "10m") -> bytes:
    return json.dumps(
        {
            "request_id": request_id,
            "action": "grant",
            "integration": INTEGRATION,
            "permission": "read-only",
            "resources": [SCHEMA],
            "identity": {"email": "h@example.com", "public_key": BOX_PUBLIC},
            "duration": duration,
            "justification": "INC-1234: restore the nightly export",
        }
    ).encode()


def _raw(rt: LocalRuntime, head: bytes, body: bytes = b"") -> bytes:
    with socket.create_connection((rt.http.host, rt.http.port), timeout=10) as conn:
        conn.sendall(head + body)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        return data


def _request(
    rt: LocalRuntime, body: bytes, envelope: Envelope | None = None, **headers: str
) -> bytes:
    envelope = envelope or sign(body, PRIVATE, "cp")
    fields = {**envelope.headers(), "Content-Length": str(len(body)), "Connection": "close"}
    fields.update(headers)
    head = "POST /v1/requests HTTP/1.1\r\nHost: x\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in fields.items()
    )
    return _raw(rt, head.encode("utf-8") + b"\r\n", body)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_unicode_digits_in_headers_get_an_answer_not_a_dropped_connection(
    runtime: Any,
) -> None:
    rt, sink = runtime
    body = _body(f"uni-{time.monotonic_ns()}")
    answer = _request(rt, body, **{"X-Jitc-Timestamp": "\u00b2"})
    assert _status(answer) == 401 and b"X-Jitc-Timestamp" in answer, answer
    answer = _request(rt, body, **{"Content-Length": "\u00b2"})
    assert _status(answer) == 400, answer
    answer = _request(rt, body, **{"Content-Length": "\uff11\uff10"})
    assert _status(answer) == 400, answer
    time.sleep(0.3)
    assert sink.outcomes == []


def test_stalled_bodies_hold_no_threads_are_timed_out_and_the_intake_still_answers(
    runtime: Any,
) -> None:
    rt, _ = runtime
    threads_before = threading.active_count()
    stalled = []
    for _ in range(60):  # three times the connection cap
        conn = socket.create_connection((rt.http.host, rt.http.port), timeout=30)
        conn.sendall(b"POST /v1/requests HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        stalled.append(conn)
    assert threading.active_count() <= threads_before + 2
    for conn in stalled:  # each is closed by the server, none answered with a 202
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        assert b"202" not in data
        conn.close()
    answer = _request(rt, _body(f"after-{time.monotonic_ns()}"))
    assert _status(answer) == 202, answer


def _wait(sink: MemorySink, count: int) -> None:
    deadline = time.monotonic() + 20
    while len(sink.outcomes) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sink.outcomes) >= count, sink.outcomes


def test_a_redelivered_grant_keeps_the_expiry_its_target_recorded(runtime: Any) -> None:
    rt, sink = runtime
    body = _body(f"redeliver-{time.monotonic_ns()}")
    for n in range(3):  # each send signs anew, a second later: a later computed expiry
        assert _status(_request(rt, body)) == 202
        _wait(sink, n + 1)
        time.sleep(1.1)
    expiries = {o.expires_at for o in sink.outcomes}
    assert [o.status for o in sink.outcomes] == ["granted"] * 3
    assert len(expiries) == 1, expiries
    grant_id = sink.outcomes[0].grant_id
    assert grant_id is not None
    assert rt.scheduler.pending()[grant_id] == sink.outcomes[0].expires_at
    live = rt.engine.live_grants([INTEGRATION])[INTEGRATION]
    assert not isinstance(live, str)
    assert [g.expires_at for g in live if g.grant_id == grant_id] == [sink.outcomes[0].expires_at]


def test_the_justification_is_in_the_audit_event(runtime: Any) -> None:
    rt, sink = runtime
    assert _status(_request(rt, _body(f"why-{time.monotonic_ns()}"))) == 202
    _wait(sink, 1)
    grants = [e for e in sink.events if e.type == "grant"]
    assert grants and grants[0].justification == "INC-1234: restore the nightly export"


def test_a_request_the_journal_cannot_record_is_not_accepted(runtime: Any) -> None:
    rt, sink = runtime

    conn = rt.journal._conn
    rt.journal._conn = _Broken(conn)
    body = _body(f"disk-{time.monotonic_ns()}")
    envelope = sign(body, PRIVATE, "cp")
    answer = _request(rt, body, envelope)
    assert _status(answer) == 503, answer
    time.sleep(0.3)
    assert sink.outcomes == []
    # The disk is back: the control plane sends the very same signed request again.
    rt.journal._conn = conn
    answer = _request(rt, body, envelope)
    assert _status(answer) == 202, answer
    _wait(sink, 1)
    assert [o.status for o in sink.outcomes] == ["granted"]


class _Broken:
    """A database connection whose writes fail, as on a full or failing disk."""

    def __init__(self, inner: sqlite3.Connection) -> None:
        self.inner = inner

    def execute(self, statement: str, *args: Any) -> Any:
        if statement.lstrip().upper().startswith("INSERT"):
            raise sqlite3.OperationalError("disk I/O error")
        return self.inner.execute(statement, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_the_intake_publishes_its_openapi_document(runtime: Any) -> None:
    from jitc.openapi import openapi_document

    rt, _ = runtime
    answer = _raw(rt, b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert _status(answer) == 200
    doc = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert doc == openapi_document(rt.url)


def test_grants_that_expire_together_are_all_revoked_and_verified(runtime: Any, admin: Any) -> None:
    from datetime import UTC, datetime, timedelta

    from pgtest import our_roles

    rt, sink = runtime
    before = set(our_roles(admin))
    # far enough ahead for every grant to be made first, also on a busy machine
    expires = (datetime.now(UTC) + timedelta(seconds=12)).isoformat()
    count = 12
    for i in range(count):
        doc = json.loads(_body(f"together-{time.monotonic_ns()}-{i}"))
        del doc["duration"]
        doc["expires_at"] = expires
        assert _status(_request(rt, json.dumps(doc).encode())) == 202
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        revokes = [o for o in sink.outcomes if o.action == "revoke"]
        if len(revokes) >= count:
            break
        time.sleep(0.1)
    assert [o.status for o in sink.outcomes if o.action == "grant"] == ["granted"] * count
    assert len(revokes) == count, sink.outcomes
    assert all(o.status == "revoked" and o.verified for o in revokes), revokes
    assert all(o.request_id.startswith("expire-") for o in revokes)
    made = {o.principal for o in sink.outcomes if o.action == "grant"}
    login = admin.execute(
        "SELECT rolname FROM pg_roles WHERE rolcanlogin AND rolname = ANY(%s)", (list(made),)
    ).fetchall()
    assert login == [] and set(our_roles(admin)) - before <= made  # tombstones at most


def test_a_client_dripping_its_request_cannot_hold_a_connection(runtime: Any) -> None:
    rt, _ = runtime  # read timeout 1 s, so a request must arrive whole within 3 s
    conn = socket.create_connection((rt.http.host, rt.http.port), timeout=30)
    conn.sendall(b"POST /v1/requests HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    closed = False
    for _ in range(40):  # never idle for a whole read timeout: one byte every 0.5 s
        time.sleep(0.5)
        try:
            conn.sendall(b" ")
        except OSError:
            closed = True
            break
        conn.setblocking(False)
        try:
            closed = conn.recv(65536) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed = True
        conn.setblocking(True)
        if closed:
            break
    conn.close()
    assert closed


def test_clients_trickling_their_headers_past_the_cap_do_not_keep_a_request_out(
    admin: Any, make_env: Any
) -> None:
    doc = catalog_doc()
    doc["control_plane"] = {"keys": {"cp": PUBLIC}, "max_skew": "2m"}
    sink = MemorySink()
    cap = 10
    rt = LocalRuntime(
        parse_catalog(doc),
        SecretStores({"mem": EnvSecretStore({"admin": "", "label": LABEL_KEY})}),
        sink,
        port=0,
        sweep_interval=3600,
        read_timeout=5,  # a whole request may take 15 s: the tricklers stay that long
        max_connections=cap,
    ).start()
    stop = threading.Event()
    tricklers: list[socket.socket] = []
    try:
        for _ in range(cap + 5):
            conn = socket.create_connection((rt.http.host, rt.http.port), timeout=30)
            conn.sendall(b"POST /v1/requests HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n")
            tricklers.append(conn)

        def trickle() -> None:  # a header line now and then: never idle, never complete
            while not stop.wait(0.5):
                for conn in tricklers:
                    with contextlib.suppress(OSError):
                        conn.sendall(b"X-A: b\r\n")

        threading.Thread(target=trickle, daemon=True).start()
        answer = _request(rt, _body(f"loris-{time.monotonic_ns()}"))
        assert _status(answer) == 202, answer
        open_ = 0
        for conn in tricklers:
            conn.setblocking(False)
            try:
                open_ += conn.recv(65536) != b""
            except BlockingIOError:
                open_ += 1  # nothing to read, not closed: still held open
            except OSError:
                pass
        # The request got in by taking one stalled client's place, not by waiting for the
        # request timeout to close them all.
        assert open_ >= cap - 2, open_
    finally:
        stop.set()
        for conn in tricklers:
            conn.close()
        rt.stop()


def test_the_intake_answers_with_its_sockets_numbered_above_what_select_can_watch(
    admin: Any, make_env: Any, high_descriptors: None
) -> None:
    rt, sink = _start()
    try:
        with socket.create_connection((rt.http.host, rt.http.port), timeout=10) as probe:
            assert probe.fileno() >= FD_SETSIZE  # and so are the server's end and its listener
        answer = _request(rt, _body(f"high-{time.monotonic_ns()}"))
        assert _status(answer) == 202, answer
        _wait(sink, 1)
        assert [o.status for o in sink.outcomes] == ["granted"], sink.outcomes
        assert rt.http.alive
    finally:
        rt.stop()


def test_an_intake_loop_that_ends_is_reported_not_left_silent(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: Any, **__: Any) -> None:
        raise OSError("poll failed")

    monkeypatch.setattr(wasyncore, "poll2", broken)
    server = HttpServer(lambda environ, start_response: [], "127.0.0.1", 0)
    server.start()
    deadline = time.monotonic() + 10
    while server.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not server.alive and server.failure == "OSError: poll failed"
    assert any(
        r.levelno == logging.CRITICAL and "stopped answering" in r.getMessage()
        for r in caplog.records
    ), caplog.records
    server.stop(timeout=1)


def test_serve_exits_failed_when_its_intake_stops_answering(tmp_path: Path, admin: Any) -> None:
    """A supervisor restarts a process that exits; one that hangs with its intake dead it
    would leave running, accepting connections nobody answers."""
    serve = Serve(tmp_path)
    inject = (
        "import sys, waitress.wasyncore as w\n"
        "def broken(*a, **k): raise OSError('poll failed')\n"
        "w.poll2 = broken\n"
        "from jitc.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    command = [sys.executable, "-c", inject, "serve", "--catalog", str(serve.catalog())]
    command += ["--port", str(serve.port), "--events", str(serve.events)]
    command += ["--journal", str(serve.journal)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "the intake stopped answering (OSError: poll failed)" in done.stdout, done.stdout


def _ok(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


def _get(server: HttpServer) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        return data


def test_a_connection_that_cannot_be_taken_costs_that_connection_not_the_listener() -> None:
    """waitress closes a server whose accept handler raised; the intake's never does."""
    from waitress.channel import HTTPChannel

    class FailsOnce(HTTPChannel):
        failures = 1

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if FailsOnce.failures:
                FailsOnce.failures -= 1
                raise RuntimeError("channel could not be made")
            super().__init__(*args, **kwargs)

    server = HttpServer(_ok, "127.0.0.1", 0)
    server._server.channel_class = FailsOnce
    server.start()
    try:
        with contextlib.suppress(OSError):
            _get(server)
        assert FailsOnce.failures == 0
        assert _get(server).endswith(b"ok")
        assert server.alive and server.problem() is None
    finally:
        server.stop()


def test_a_listener_closed_under_the_loop_is_reported() -> None:
    server = HttpServer(_ok, "127.0.0.1", 0)
    server.start()
    server._server.trigger.pull_trigger(lambda: wasyncore.dispatcher.close(server._server))
    deadline = time.monotonic() + 10
    while server.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.problem() == "the listener closed"
    server.stop()


OUT_OF_DESCRIPTORS = """
import os, resource, sys
from jitc.http_intake import HttpServer

def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]

server = HttpServer(app, "127.0.0.1", 0, read_timeout=60)
server.start()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 3, hard))
print(server.port, flush=True)
sys.stdin.readline()
print("alive" if server.alive else f"dead: {server.problem()}", flush=True)
server.stop()
"""


def test_out_of_descriptors_a_new_connection_is_closed_not_left_hanging() -> None:
    """Out of descriptors, accept() fails and leaves the connection waiting: the listener stays
    readable, and the loop would spin on it while the client waits for nothing."""
    child = subprocess.Popen(
        [sys.executable, "-c", OUT_OF_DESCRIPTORS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        port = int(child.stdout.readline())
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
        closed = 0
        for conn in held:
            conn.settimeout(3)
            with contextlib.suppress(TimeoutError):
                closed += conn.recv(1) == b""  # closed by the server, unanswered
        assert closed >= 1, "every connection past the limit was left hanging"
        for conn in held:
            conn.close()
        deadline = time.monotonic() + 10
        answer = b""
        while time.monotonic() < deadline and not answer.endswith(b"ok"):
            with contextlib.suppress(OSError):
                conn = socket.create_connection(("127.0.0.1", port), timeout=10)
                conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = conn.recv(65536)
                conn.close()
            time.sleep(0.1)
        assert answer.endswith(b"ok"), answer
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "alive"
    finally:
        child.kill()
        child.wait(timeout=10)


def test_a_request_deadline_starts_with_each_request_not_a_former_one_at_its_address() -> None:
    """A keep-alive client sending request after request, each well within the deadline, is
    never cut off: a new request whose parser lands where the last one was freed is new."""
    from types import SimpleNamespace

    class Parser:
        """A request being received: only its identity matters here."""

    server = HttpServer(_ok, "127.0.0.1", 0, read_timeout=1, request_timeout=3)
    try:
        channel = SimpleNamespace(
            requests=[], request=Parser(), last_activity=0.0, will_close=False
        )
        server._server.active_channels = {7: channel}
        for tick in range(1, 12):
            channel.request = None  # the last request answered; the next one begins
            channel.request = Parser()
            channel.last_activity = float(tick)
            server._maintenance(float(tick))
            assert not channel.will_close, tick
        for tick in range(12, 17):  # one request that never ends is cut at its deadline
            channel.last_activity = float(tick)
            server._maintenance(float(tick))
        assert channel.will_close
    finally:
        server._server.active_channels = {}
        server.stop()


def test_a_failed_listener_keeps_the_trigger_until_stop_and_a_lost_spare_comes_back() -> None:
    """waitress closed the trigger pipe with a failed listener; workers and stop() then wrote
    into whatever file took its number next."""
    server = HttpServer(_ok, "127.0.0.1", 0)
    server.start()

    def fail() -> None:
        try:
            raise RuntimeError("listener failed")
        except RuntimeError:
            server._server.handle_error()

    server._server.trigger.pull_trigger(fail)
    deadline = time.monotonic() + 10
    while server.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.problem() == "the listener failed"
    assert not server._server.trigger._closed
    os.close(server._spare)  # another thread took the descriptor the spare gave up
    server._spare = None
    server._server.trigger.pull_trigger(lambda: server._maintenance(time.time()))
    deadline = time.monotonic() + 10
    while server._spare is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server._spare is not None
    server.stop()
    assert not server._thread.is_alive() and server._server.trigger._closed
