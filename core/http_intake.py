"""The intake over HTTP for `jitc serve`: a WSGI app served by waitress.

waitress parses HTTP (it refuses a malformed `Content-Length` with 400 itself), reads each body
completely before a worker thread sees it, closes connections idle longer than the read
timeout; a request must arrive whole within the request timeout, and above the connection cap
a new connection takes the place of the oldest one with nothing running. So stalled clients
hold sockets, never threads, and cannot keep a real request out.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from waitress.server import create_server

from jitc.intake import MAX_BODY_BYTES, Intake

log = logging.getLogger("jitc.http")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _json(start_response: StartResponse, status: int, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    reason = {
        200: "OK",
        202: "Accepted",
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
        409: "Conflict",
        411: "Length Required",
        413: "Content Too Large",
        503: "Service Unavailable",
    }.get(status, "Error")
    start_response(
        f"{status} {reason}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
    )
    return [data]


def _refused(field: str, message: str) -> dict[str, Any]:
    return {"error": "refused", "field": field, "message": message}


def intake_app(intake: Intake, openapi: Callable[[], dict[str, Any]]) -> WsgiApp:
    """`POST /v1/requests`, `GET /healthz` and `GET /openapi.json`."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        if path == "/healthz" and method == "GET":
            return _json(start_response, 200, {"status": "ok"})
        if path == "/openapi.json" and method == "GET":
            return _json(start_response, 200, openapi())
        if path != "/v1/requests":
            return _json(start_response, 404, _refused("path", "not found"))
        if method != "POST":
            return _json(start_response, 405, _refused("method", "use POST"))
        length_text = str(environ.get("CONTENT_LENGTH") or "")
        if not (length_text.isascii() and length_text.isdigit()):
            return _json(start_response, 411, _refused("Content-Length", "required"))
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            return _json(
                start_response, 413, _refused("body", f"larger than {MAX_BODY_BYTES} bytes")
            )
        body = environ["wsgi.input"].read(length)
        headers = {
            key[5:].replace("_", "-"): str(value)
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        response = intake.handle(headers, body)
        return _json(start_response, response.status, response.body)

    return app


class HttpServer:
    """waitress on one listening socket, run in a thread and stopped from another."""

    def __init__(
        self,
        app: WsgiApp,
        host: str,
        port: int,
        *,
        threads: int = 4,
        max_connections: int = 100,
        read_timeout: int = 10,
        request_timeout: int = 30,
    ) -> None:
        # the stubs type the result as a union whose members lack the bound address
        self._server: Any = cast(Any, create_server)(
            app,
            host=host,
            port=port,
            threads=threads,
            # a backstop only: above the cap, a new connection evicts a stalled one (below)
            connection_limit=2 * max_connections + 2,
            channel_timeout=read_timeout,
            # idle connections are looked for this often: the read timeout's resolution
            cleanup_interval=max(1, read_timeout // 2),
            # waitress's own limit sits above ours, so ours answers with the JSON error body
            max_request_body_size=2 * MAX_BODY_BYTES,
            max_request_header_size=16 * 1024,
            ident="jit-connector",
            # select() refuses a descriptor above 1023 and ends the loop: a process holding
            # that many files (database pools, many connections) would stop answering
            asyncore_use_poll=True,
            expose_tracebacks=False,
            clear_untrusted_proxy_headers=True,
        )
        self._deadline = float(request_timeout)
        self._receiving: dict[int, tuple[int, float]] = {}
        self._idle_check = self._server.maintenance
        self._server.maintenance = self._maintenance
        self._cap = max_connections
        self._accept = self._server.handle_accept
        self._server.handle_accept = self._handle_accept
        self.host = str(self._server.effective_host)
        self.port = int(self._server.effective_port)
        self._stopping = False
        self.failure: str | None = None  # why the loop ended while it should have run
        self._thread = threading.Thread(target=self._run, name="jitc-http", daemon=True)

    def _maintenance(self, now: float) -> None:
        """waitress closes connections idle past the read timeout; a client that sends a byte
        now and then is never idle, and could hold the connection cap for ever. So a request
        must also arrive whole within the request timeout (run in the server's loop thread)."""
        self._idle_check(now)
        seen: dict[int, tuple[int, float]] = {}
        for channel in list(self._server.active_channels.values()):
            parser = channel.request  # the request being received, if any
            if parser is None or channel.requests:
                continue
            began = self._receiving.get(id(channel))
            if began is None or began[0] != id(parser):
                began = (id(parser), now)
            seen[id(channel)] = began
            if now - began[1] > self._deadline:
                channel.will_close = True
        self._receiving = seen

    def _handle_accept(self) -> None:
        """At the cap, a new connection takes the place of the oldest one with nothing running:
        clients that trickle their requests, however many, cannot keep the control plane out
        for as long as the request timeout (run in the server's loop thread)."""
        before = set(self._server.active_channels)
        self._accept()
        channels = self._server.active_channels
        open_ = [c for c in channels.values() if not c.will_close]
        if len(open_) <= self._cap:
            return
        new = set(channels) - before
        idle = [c for c in open_ if not c.requests and c._fileno not in new]
        if idle:
            min(idle, key=lambda c: c.creation_time).will_close = True
        else:  # every other connection has a request running: the new one waits its turn
            for fileno in new:
                channels[fileno].will_close = True

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self._server.run()
        except Exception as exc:
            if self._stopping:  # stop() closing the sockets under the loop
                log.debug("HTTP loop ended", exc_info=True)
                return
            failure = f"{type(exc).__name__}: {exc}"
            log.critical("the HTTP intake stopped answering: %s", failure, exc_info=True)
            self.failure = failure  # said first, then seen
        else:
            if not self._stopping:
                log.critical("the HTTP intake stopped answering: the loop ended")
                self.failure = "the loop ended"

    @property
    def alive(self) -> bool:
        """False once the loop has ended for any reason but stop(): nothing answers then."""
        return self.failure is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let running requests finish and their answers go out, then close.

        A request that ran has its 202 sent before its connection is closed; one still being
        received is dropped unanswered, which is right: it was not accepted.
        """
        from waitress import wasyncore

        server = self._server
        self._stopping = True
        # The socket map belongs to the loop's thread: everything below runs there.
        server.trigger.pull_trigger(lambda: wasyncore.dispatcher.close(server))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._thread.is_alive():
            done = threading.Event()
            server.trigger.pull_trigger(functools.partial(self._close_idle, done))
            done.wait(timeout=1)
            if not server.active_channels:
                break
            time.sleep(0.05)
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        self._thread.join(timeout=10)
        server.task_dispatcher.shutdown(timeout=10)

    def _close_idle(self, done: threading.Event) -> None:
        """Close each connection with no request running once its answer is sent."""
        for channel in list(self._server.active_channels.values()):
            with channel.requests_lock:
                if not channel.requests:
                    channel.close_when_flushed = True
        done.set()
