"""The local runtime behind `jitc serve` and `jitc demo`: the same intake as the clouds, an
in-process queue and worker, a timer scheduler for expiries and a periodic sweep."""

from __future__ import annotations

import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from jitc.catalog import Catalog
from jitc.engine import Engine
from jitc.errors import Refused
from jitc.intake import MAX_BODY_BYTES, Intake
from jitc.local import InProcessQueue, ThreadScheduler
from jitc.messages import decode_message
from jitc.models import AuditEvent
from jitc.ports import EventSink
from jitc.secrets import SecretStore

log = logging.getLogger("jitc.runtime")
RETRY_DELAYS = (0.5, 1, 2, 5, 10, 30)


class LocalRuntime:
    def __init__(
        self,
        catalog: Catalog,
        secrets: SecretStore,
        sink: EventSink,
        host: str = "127.0.0.1",
        port: int = 8080,
        sweep_interval: float = 60.0,
        batch_size: int = 10,
    ) -> None:
        self.queue = InProcessQueue()
        self.scheduler = ThreadScheduler(self.queue)
        self.sink = sink
        self.engine = Engine(catalog, secrets, self.scheduler, sink)
        self.intake = Intake(catalog, self.queue)
        self.sweep_interval = sweep_interval
        self.batch_size = batch_size
        self._stop = threading.Event()
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self._threads = [
            threading.Thread(target=self.server.serve_forever, name="jitc-http", daemon=True),
            threading.Thread(target=self._work, name="jitc-worker", daemon=True),
            threading.Thread(target=self._sweep, name="jitc-sweep", daemon=True),
        ]

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LocalRuntime:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.scheduler.stop()
        for thread in self._threads[1:]:
            thread.join(timeout=10)

    def _work(self) -> None:
        attempts: dict[str, int] = {}
        while not self._stop.is_set():
            messages = self.queue.get_batch(self.batch_size, timeout=0.2)
            work, texts = [], []
            for text in messages:
                try:
                    work.append(decode_message(text, self.engine.catalog, time.time()))
                    texts.append(text)
                except Refused as exc:
                    # Never retried: it cannot become valid. Recorded, like a dead letter.
                    self.sink.audit(
                        AuditEvent(
                            type="refusal", status="refused", field=exc.field, message=exc.message
                        )
                    )
            if not work:
                continue
            try:
                outcomes = self.engine.execute_batch(work)
            except Exception:  # e.g. the event sink is down: the whole batch is delivered again
                log.exception("batch failed; it will be delivered again")
                failed = texts
            else:
                failed = [t for t, o in zip(texts, outcomes, strict=True) if o.status == "failed"]
                for text in set(texts) - set(failed):
                    attempts.pop(text, None)
            for text in failed:
                tries = attempts.get(text, 0)
                attempts[text] = tries + 1
                delay = RETRY_DELAYS[min(tries, len(RETRY_DELAYS) - 1)]
                timer = threading.Timer(delay, self.queue.enqueue, args=(text, ""))
                timer.daemon = True
                timer.start()

    def _sweep(self) -> None:
        while not self._stop.wait(self.sweep_interval):
            try:
                self.engine.sweep()
            except Exception:
                log.exception("sweep failed")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        intake = self.intake

        class Handler(BaseHTTPRequestHandler):
            server_version = "jit-connector"
            sys_version = ""

            def _reply(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._reply(200, {"status": "ok"})
                else:
                    self._reply(404, {"error": "not_found", "field": "path", "message": self.path})

            def do_POST(self) -> None:
                if self.path != "/v1/requests":
                    self._reply(404, {"error": "not_found", "field": "path", "message": self.path})
                    return
                length_text = self.headers.get("Content-Length", "")
                if not length_text.isdigit():
                    self._reply(
                        411, {"error": "refused", "field": "Content-Length", "message": "required"}
                    )
                    return
                length = int(length_text)
                if length > MAX_BODY_BYTES:
                    self._reply(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        {
                            "error": "refused",
                            "field": "body",
                            "message": f"larger than {MAX_BODY_BYTES} bytes",
                        },
                    )
                    self.close_connection = True
                    return
                body = self.rfile.read(length)
                response = intake.handle(dict(self.headers.items()), body)
                self._reply(response.status, response.body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s " + format, self.address_string(), *args)

        return Handler
