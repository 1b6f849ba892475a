"""`jitc serve` as a separate process, for tests that kill it: its catalog, its journal and
events files, signed requests to it, and waiting for what it wrote."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from pgtest import BOX_PUBLIC, INTEGRATION, SCHEMA, catalog_doc

from jitc.signing import sign, signing_keypair

ROOT = Path(__file__).resolve().parent.parent
PRIVATE, PUBLIC = signing_keypair()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """One `jitc serve` at a time on one journal; restartable with another catalog."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.journal = folder / "journal.sqlite3"
        self.events = folder / "events.jsonl"
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.output = ""

    def catalog(
        self,
        reachable: bool = True,
        control_plane: dict[str, Any] | None = None,
        pg_port: int | None = None,
    ) -> Path:
        doc = catalog_doc()
        if pg_port is not None:  # a port of the test's choosing in front of the database
            doc["integrations"][INTEGRATION]["connection"]["port"] = pg_port
            doc["integrations"][INTEGRATION]["connection"]["connect_timeout"] = 1
        doc["integrations"][INTEGRATION]["credentials"] = None
        if not reachable:  # the worker fails every message, as during a database outage
            doc["integrations"][INTEGRATION]["connection"]["port"] = 1
            doc["integrations"][INTEGRATION]["connection"]["connect_timeout"] = 1
        doc["control_plane"] = control_plane or {"keys": {"cp": PUBLIC}, "max_skew": "2m"}
        # One label key per serve folder, read from a private file as a deployment would.
        key_file = self.folder / "label.key"
        if not key_file.exists():
            key_file.touch(mode=0o600)
            key_file.write_text(secrets.token_urlsafe(32))
        doc["connector"] = {**doc.get("connector", {}), "label_key": f"file:{key_file}"}
        path = self.folder / ("catalog.yaml" if reachable else "catalog-down.yaml")
        path.write_text(yaml.safe_dump(doc))
        return path

    def start(
        self,
        *extra: str,
        reachable: bool = True,
        control_plane: dict[str, Any] | None = None,
        pg_port: int | None = None,
    ) -> None:
        env = {k: v for k, v in os.environ.items() if k != "JITC_CATALOG"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jitc.cli",
                "serve",
                "--catalog",
                str(self.catalog(reachable, control_plane, pg_port)),
                "--port",
                str(self.port),
                "--events",
                str(self.events),
                "--journal",
                str(self.journal),
                *extra,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening" in line, line
        self.output = line

    def read_until(self, text: str) -> str:
        """serve's output up to the first line holding `text` (it prints as it goes)."""
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output += line
            if text in line:
                return line
        raise AssertionError(f"serve ended without printing {text!r}: {self.output}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def interrupt(self, signum: int = signal.SIGINT) -> tuple[int, str]:
        assert self.proc is not None
        self.proc.send_signal(signum)
        return self.exited()

    def exited(self) -> tuple[int, str]:
        """Wait for a process already told to stop. (A second signal could reach it after it
        has stopped, while the interpreter shuts down and the default action is back.)"""
        assert self.proc is not None and self.proc.stdout is not None
        rest = self.proc.stdout.read()
        code = self.proc.wait(timeout=60)
        self.proc = None
        self.output += rest
        return code, self.output

    def close(self) -> None:
        if self.proc is not None:
            self.kill()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/requests"

    def send(self, doc: dict[str, Any], timestamp: int | None = None) -> tuple[int, dict[str, Any]]:
        body = json.dumps(doc).encode()
        envelope = sign(body, PRIVATE, "cp", timestamp)
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers=envelope.headers()
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def outcomes(self) -> list[dict[str, Any]]:
        if not self.events.exists():
            return []
        lines = self.events.read_text().splitlines()
        return [json.loads(line)["outcome"] for line in lines if line.startswith('{"outcome"')]

    def wait_for(self, done: Any, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            outcomes = self.outcomes()
            if done(outcomes):
                return outcomes
            time.sleep(0.1)
        raise AssertionError(f"not done within {timeout}s: {self.outcomes()}")


def grant(request_id: str, duration: str = "1h") -> dict[str, Any]:
    return {
        "request_id": request_id,
        "action": "grant",
        "integration": INTEGRATION,
        "permission": "read-only",
        "resources": [SCHEMA],
        "identity": {"email": "dur@example.com", "public_key": BOX_PUBLIC},
        "duration": duration,
        "justification": "durability test",
    }


def revoke(request_id: str) -> dict[str, Any]:
    return {"request_id": request_id, "action": "revoke", "integration": INTEGRATION}
