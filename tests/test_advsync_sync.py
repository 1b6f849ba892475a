"""Adversarial checks of the inventory sync against a control plane that misbehaves: on the real
PostgreSQL, to a real HTTP control plane (tests/inventory_cp.py)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import psycopg
from inventory_cp import ControlPlane, serving
from pgtest import catalog_doc
from test_inventory_sync import DEAD, INTEGRATION, PUBLIC, _engine, pg  # noqa: F401

from jitc.inventory import FileSyncState, webhook_transport

LATE = INTEGRATION + "-late"


class RefusesFailedManifests(ControlPlane):
    """A control plane that answers 400 to a `failed` manifest (its schema or its policy does
    not take the error text): a 4xx the connector must treat as that part's refusal only."""

    def _manifest(self, event: dict[str, Any]) -> tuple[int, bytes]:
        if event["status"] == "failed":
            return 400, b'{"error":"not taken"}'
        return super()._manifest(event)


def test_a_refused_failed_manifest_does_not_stop_the_other_integrations(
    pg: psycopg.Connection[Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    late = json.loads(json.dumps(catalog_doc()["integrations"][INTEGRATION]))
    cp = RefusesFailedManifests(PUBLIC)
    with serving(cp) as url:
        engine = _engine(url, {LATE: late})
        order = list(engine.catalog.integrations)
        assert order.index(DEAD) < order.index(LATE)  # the dead one is synced first
        report = engine.sync(
            webhook_transport(engine.catalog, engine.secrets), FileSyncState(tmp_path / "s")
        )
    assert report.integrations[DEAD].status == "failed"
    assert report.integrations[LATE].status == "complete"
    assert LATE in cp.current


def test_a_control_plane_that_drips_its_answer_cannot_hold_the_sender() -> None:
    """urlopen's timeout bounds each socket read, not the exchange: a control plane that sends
    a byte of its answer every half timeout would hold the sync (and `jitc serve`'s outcome
    and audit deliveries through the same sink) for days. The whole exchange has a deadline."""
    import socket
    import threading
    import time

    from jitc.secrets import Secret
    from jitc.signing import signing_keypair
    from jitc.webhook import WebhookError, WebhookSink

    private, _ = signing_keypair()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n")
                while not stop.is_set():
                    conn.sendall(b" ")
                    time.sleep(0.1)
            except OSError:
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/events"
    sink = WebhookSink(url, lambda: Secret(private), attempts=1, timeout=0.5, backoff=0.01)
    outcome: list[object] = []

    def send() -> None:
        try:
            outcome.append(sink.send({"type": "inventory", "inventory": {}}))
        except WebhookError as exc:
            outcome.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sender.join(15)
    stop.set()
    listener.close()
    assert not sender.is_alive(), "the send was still held after 15 s with a 0.5 s timeout"
    assert isinstance(outcome[0], WebhookError)


def test_a_state_file_that_cannot_be_written_costs_a_full_sync_not_the_others(
    pg: psycopg.Connection[Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    """`jitc sync` on a full disk (a file size limit of 100 bytes: every write past it fails,
    as on ENOSPC): the control plane acknowledged the first integration, its state cannot be
    saved. The acknowledgement is only a cache (lost, the next sync is full): the sync must
    still send every other integration, not stop at the first save."""
    import resource
    import signal
    import subprocess
    import sys

    from test_inventory_sync import ADMIN_PASSWORD, LABEL_KEY, PRIVATE

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, as ENOSPC, not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    cp = ControlPlane(PUBLIC)
    with serving(cp) as url:
        doc = catalog_doc()
        for name, path in (("label", "label"), ("signing", "signing"), ("admin", "admin")):
            (tmp_path / path).write_text(
                {"label": LABEL_KEY, "signing": PRIVATE, "admin": ADMIN_PASSWORD}[name]
            )
        doc["connector"] = {
            "label_key": f"file:{tmp_path / 'label'}",
            "signing_key": f"file:{tmp_path / 'signing'}",
            "webhook_url": url,
        }
        doc["integrations"][INTEGRATION]["credentials"] = f"file:{tmp_path / 'admin'}"
        doc["integrations"][LATE] = json.loads(json.dumps(doc["integrations"][INTEGRATION]))
        (tmp_path / "catalog.json").write_text(json.dumps(doc))
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "jitc.cli",
                "sync",
                "--catalog",
                str(tmp_path / "catalog.json"),
                "--state",
                str(tmp_path / "state" / "state.json"),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=limited,  # a child of this test only
        )
    assert INTEGRATION in cp.current, run.stderr
    assert LATE in cp.current, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])


def test_the_sync_state_lock_is_never_opened_through_a_link(tmp_path: Path) -> None:
    """`--state` defaults to the working directory: in a shared one (/tmp), a link planted at
    `<state>.lock` would have the sync (often root) create or open any file it points to, as
    `jitc rotate`'s lock refuses to."""
    from jitc.inventory import Acked, FileSyncState, version_of_hashes

    target = tmp_path / "elsewhere" / "created-by-the-sync"
    target.parent.mkdir()
    (tmp_path / "state.json.lock").symlink_to(target)
    page = "0" * 64
    acked = Acked(version_of_hashes([page]), (page,), "1" * 32)
    # Refused (the sync then reports its state as not saved and goes on), or done elsewhere.
    with contextlib.suppress(OSError):
        FileSyncState(tmp_path / "state.json").save("x", acked)
    assert not target.exists()


def test_a_redirect_is_not_a_delivery() -> None:
    """urllib follows a 302 to a POST with a GET that carries no body, to any URL (plain http
    to another host too, past the https rule): a control plane behind a load balancer that
    redirects (to a login page, to its new address) answered 200 there, and the connector
    counted an outcome, an audit event or an inventory page as delivered that nobody got."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from jitc.secrets import Secret
    from jitc.signing import signing_keypair
    from jitc.webhook import WebhookError, WebhookSink

    private, _ = signing_keypair()
    seen: list[tuple[str, int]] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(("GET", 0))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    elsewhere = ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    target = f"http://127.0.0.1:{elsewhere.server_address[1]}/login"

    class Redirects(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    front = ThreadingHTTPServer(("127.0.0.1", 0), Redirects)
    for server in (elsewhere, front):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{front.server_address[1]}/v1/events"
        sink = WebhookSink(url, lambda: Secret(private), attempts=2, timeout=2, backoff=0.01)
        failed = False
        try:
            sink.send({"type": "outcome", "outcome": {}})
        except WebhookError as exc:
            failed = True
            assert exc.status == 302
        assert failed, "a redirect answered 200 elsewhere was taken as delivered"
        assert seen == []  # and nothing followed it
    finally:
        for server in (elsewhere, front):
            server.shutdown()
            server.server_close()
