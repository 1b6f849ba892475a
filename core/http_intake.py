"""The intake over HTTP for `jitc serve`: a WSGI app served by waitress.

waitress parses HTTP (it refuses a malformed `Content-Length` with 400 itself), reads each body
completely before a worker thread sees it, closes connections idle longer than the read
timeout; a request must arrive whole within the request timeout, and above the connection cap
a new connection takes the place of the oldest one with nothing running. So stalled clients
hold sockets, never threads, and cannot keep a real request out.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from waitress import wasyncore
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
        self._idle_after = float(read_timeout)
        # channel id -> (the request being received, first seen at): the parser itself, held, so
        # a later request can never be taken for it (ids of freed objects come back)
        self._receiving: dict[int, tuple[Any, float]] = {}
        self._server.maintenance = self._maintenance
        self._cap = max_connections
        self._accept = self._server.handle_accept
        self._server.handle_accept = self._handle_accept
        self._accept_socket = self._server.accept
        self._server.accept = self._accept_or_shed
        self._server_error = self._server.handle_error
        self._server.handle_error = self._handle_server_error
        # waitress closes its trigger pipe with a failed listener, and workers go on writing to
        # its old descriptor number, which a journal or a database socket may have taken since:
        # the listener alone is closed; the trigger goes with the rest, at stop()
        self._server.close = functools.partial(wasyncore.dispatcher.close, self._server)
        self._readable = self._server.readable
        self._server.readable = self._listening
        self._paused_until = 0.0
        # One descriptor held back: when the process runs out, it is given up for a moment to
        # take the waiting connection and close it, so the listener does not stay readable
        # and the loop does not spin on it.
        self._spare: int | None = os.open(os.devnull, os.O_RDONLY)
        self._shed_logged = 0.0
        self.host = str(self._server.effective_host)
        self.port = int(self._server.effective_port)
        self._stopping = False
        self.failure: str | None = None  # why the loop ended while it should have run
        self._thread = threading.Thread(target=self._run, name="jitc-http", daemon=True)

    # waitress lets a worker thread close a channel (a failed `100 Continue`), which changes the
    # channel map while the loop thread reads it: everything here reads a copy.

    def _channels(self) -> list[Any]:
        return list(self._server.active_channels.values())

    def _maintenance(self, now: float) -> None:
        """waitress closes connections idle past the read timeout; a client that sends a byte
        now and then is never idle, and could hold the connection cap for ever. So a request
        must also arrive whole within the request timeout (run in the server's loop thread)."""
        self._keep_spare()
        seen: dict[int, tuple[Any, float]] = {}
        for channel in self._channels():
            if not channel.requests and channel.last_activity < now - self._idle_after:
                channel.will_close = True
            parser = channel.request  # the request being received, if any
            if parser is None or channel.requests:
                continue
            began = self._receiving.get(id(channel))
            if began is None or began[0] is not parser:
                began = (parser, now)
            seen[id(channel)] = began
            if now - began[1] > self._deadline:
                channel.will_close = True
        self._receiving = seen

    def _handle_accept(self) -> None:
        """At the cap, a new connection takes the place of the oldest one with nothing running:
        clients that trickle their requests, however many, cannot keep the control plane out
        for as long as the request timeout (run in the server's loop thread). Whatever goes
        wrong here costs that one connection, never the listener: waitress closes a server
        whose handler raised."""
        channels = self._server.active_channels
        before: set[int] = set()
        try:
            before = set(list(channels))
            self._accept()
            new = set(list(channels)) - before
            open_ = [c for c in self._channels() if not c.will_close]
            if len(open_) <= self._cap:
                return
            idle = [c for c in open_ if not c.requests and c._fileno not in new]
            if idle:
                min(idle, key=lambda c: c.creation_time).will_close = True
            else:  # every other connection has a request running: the new one waits its turn
                for fileno in new:
                    if fileno in channels:
                        channels[fileno].will_close = True
        except Exception:
            log.exception("a connection could not be taken; it is closed, the intake goes on")
            for fileno in set(list(channels)) - before:
                channel = channels.get(fileno)
                if channel is not None:
                    channel.will_close = True

    def _keep_spare(self) -> None:
        if self._spare is None:
            with contextlib.suppress(OSError):
                self._spare = os.open(os.devnull, os.O_RDONLY)

    def _listening(self) -> bool:
        """waitress's own answer (it also runs the maintenance), unless the listener is resting
        after running out of descriptors with no spare to give up."""
        readable = bool(self._readable())
        return readable and time.monotonic() >= self._paused_until

    def _accept_or_shed(self) -> Any:
        try:
            accepted = self._accept_socket()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
        else:
            self._keep_spare()
            return accepted
        shed = False
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
            # None waiting any more, or the freed descriptor already taken: nothing shed.
            with contextlib.suppress(OSError):
                conn, _ = self._server.socket.accept()
                conn.close()
                shed = True
            self._keep_spare()
        now = time.monotonic()
        if not shed:  # nothing to give up (another thread took it): rest, not spin
            self._paused_until = now + 0.1
        if now - self._shed_logged > 10:
            self._shed_logged = now
            log.error("out of file descriptors: new connections are closed unanswered")
        return None

    def _handle_server_error(self) -> None:
        """An exception no handler caught, on the listening socket: waitress logs it and closes
        the listener. Said as the failure it is, so `serve` exits for its supervisor."""
        if not self._stopping:
            log.critical("the HTTP intake's listener failed", exc_info=True)
            self.failure = self.failure or "the listener failed"
        self._server_error()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        failure = "the loop ended"
        try:
            self._server.run()
        except BaseException as exc:
            failure = type(exc).__name__
            with contextlib.suppress(Exception):
                failure += f": {exc}"
            if not self._stopping:
                log.critical("the HTTP intake stopped answering", exc_info=True)
        finally:
            if not self._stopping:
                self.failure = self.failure or failure

    def problem(self) -> str | None:
        """Once started: why nothing answers, when the listener or its loop has ended for any
        reason but stop() (or did before a stop()); None while it serves."""
        if self.failure is not None or self._stopping:
            return self.failure
        if not self._thread.is_alive():
            return "the loop ended"
        if not self._server.accepting:
            return "the listener closed"
        return None

    @property
    def alive(self) -> bool:
        return self.problem() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let running requests finish and their answers go out, then close.

        A request that ran has its 202 sent before its connection is closed; one still being
        received is dropped unanswered, which is right: it was not accepted.
        """
        server = self._server
        self._stopping = True
        if self._thread.is_alive():
            try:
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
            except OSError:  # the loop closed its trigger (the listener failed): close here
                log.warning("the HTTP loop's trigger is closed; closing its sockets from here")
            self._thread.join(timeout=10)
        if not self._thread.is_alive():  # never started, or ended: nothing else touches the map
            wasyncore.close_all(server._map)
        server.task_dispatcher.shutdown(timeout=10)
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None

    def _close_idle(self, done: threading.Event) -> None:
        """Close each connection with no request running once its answer is sent."""
        for channel in list(self._server.active_channels.values()):
            with channel.requests_lock:
                if not channel.requests:
                    channel.close_when_flushed = True
        done.set()
