"""A target unreachable when `jitc serve` starts: its grants' expiry timers come back as soon
as it does, not a sweep interval later (a real process, the real PostgreSQL behind a port that
refuses connections until the test opens it)."""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pgtest import INTEGRATION, catalog_doc
from serveproc import Serve, free_port, grant

from jitc.models import derive_grant_id


@pytest.fixture
def serve(tmp_path: Path, admin: Any, make_env: Any) -> Iterator[Serve]:
    server = Serve(tmp_path)
    yield server
    server.close()


class Forward:
    """A TCP port that forwards to the database once opened: closed, the database is 'down'."""

    def __init__(self, port: int) -> None:
        conn = catalog_doc()["integrations"][INTEGRATION]["connection"]
        self.target = (conn["host"], int(conn["port"]))
        self.listener = socket.create_server(("127.0.0.1", port))
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def test_timers_of_a_target_down_at_start_are_rebuilt_when_it_is_back(serve: Serve) -> None:
    request_id = f"down-{secrets.token_hex(3)}"
    grant_id = derive_grant_id(INTEGRATION, request_id)
    serve.start("--sweep-interval", "3600")
    # long enough for the restart, on a busy machine, to come before the expiry
    assert serve.send(grant(request_id, "20s"))[0] == 202
    serve.wait_for(lambda o: any(x["request_id"] == request_id for x in o))
    serve.kill()  # its timer dies with it

    port = free_port()  # nothing listens there yet: the database is unreachable
    serve.start("--sweep-interval", "3600", pg_port=port)
    line = serve.read_until("rebuilt from the targets")
    assert "0 expiry timer(s)" in line, line
    forward = Forward(port)
    try:
        outcomes = serve.wait_for(lambda o: f"expire-{grant_id}" in {x["request_id"] for x in o})
        revoked = [o for o in outcomes if o["request_id"] == f"expire-{grant_id}"]
        assert revoked[-1]["status"] == "revoked", revoked  # by its timer, not a sweep
        assert INTEGRATION in serve.read_until("not rebuilt for")
        back = serve.read_until("every target's expiry timers rebuilt")
        assert "(1 in all)" in back, back
    finally:
        serve.kill()
        forward.close()
