"""A control plane for the inventory sync tests: a real HTTP server (loopback, ephemeral port)
that the connector's real webhook client posts to. It does what a control plane must: verifies
each event's signature with the connector's public key, checks each page's hash against its
records, rebuilds every manifest's version from the pages it holds, and acknowledges only a
version it could rebuild. `mode` makes it misbehave the ways a test needs."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from jitc.inventory_models import InventoryEvent
from jitc.signing import Envelope, verify


def page_hash(records: list[dict[str, Any]]) -> str:
    text = json.dumps(records, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class ControlPlane:
    public_key: str
    key_id: str = "connector"
    # ack | none | wrong | cross | replay | garbage | lose (forgets its pages after its first ack)
    mode: str = "ack"
    bodies: list[bytes] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    pages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # hash -> records
    versions: dict[str, list[str]] = field(default_factory=dict)  # version -> page hashes
    current: dict[str, str] = field(default_factory=dict)  # integration -> acked version
    failed: dict[str, str] = field(default_factory=dict)  # integration -> error
    refused: list[str] = field(default_factory=list)
    last_ack: dict[str, Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def records(self, integration: str) -> list[dict[str, Any]]:
        """The inventory the control plane holds for an integration, rebuilt from its pages."""
        version = self.current[integration]
        return [r for h in self.versions[version] for r in self.pages[h]]

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        with self.lock:
            self.bodies.append(body)
            try:
                envelope = Envelope.from_headers(headers, body)
                verify(envelope, {self.key_id: self.public_key}, time.time(), 300, 60)
            except Exception as exc:
                self.refused.append(str(exc))
                return 401, b'{"error":"signature"}'
            doc = json.loads(body)
            if doc.get("type") != "inventory":
                return 204, b""
            event = doc["inventory"]
            InventoryEvent.model_validate_json(json.dumps(event))  # the published schema holds
            self.events.append(event)
            if event["kind"] == "page":
                if page_hash(event["records"]) != event["hash"]:
                    return 400, b'{"error":"hash"}'
                self.pages[event["hash"]] = event["records"]
                return 202, b""
            return self._manifest(event)

    def _manifest(self, event: dict[str, Any]) -> tuple[int, bytes]:
        name = event["integration"]
        if event["status"] == "failed":
            self.failed[name] = event.get("error", "")
            return 202, b""
        hashes = event["pages"]
        missing = [h for h in hashes if h not in self.pages]
        version = hashlib.sha256("\n".join(hashes).encode()).hexdigest()
        if missing or version != event["version"]:
            return 409, json.dumps({"error": "missing pages", "missing": len(missing)}).encode()
        self.versions[version] = hashes
        ack = {"sync_id": event["sync_id"], "integration": name, "version": version}
        if self.mode == "none":
            return 200, b'{"ok":true}'
        if self.mode == "garbage":
            return 200, b'{"ack": "' + version.encode() + b'", "x": [}'
        if self.mode == "wrong":
            ack = {**ack, "version": hashlib.sha256(b"other").hexdigest()}
        if self.mode == "cross":  # the right version, acknowledged for another integration
            ack = {**ack, "integration": name + "-other"}
        if self.mode == "replay" and self.last_ack is not None:
            ack = self.last_ack  # the acknowledgement of an earlier sync, again
        else:
            self.last_ack = ack
        self.current[name] = version
        if self.mode == "lose":  # once: then it behaves
            self.pages.clear()
            self.mode = "ack"
        return 200, json.dumps({"ack": ack}).encode()


@contextmanager
def serving(cp: ControlPlane) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            status, answer = cp.handle(dict(self.headers.items()), body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/events"
    finally:
        server.shutdown()
        server.server_close()
