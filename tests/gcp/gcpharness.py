"""The GCP harness: the loopback GCP (gcpfake), service accounts with key files, a catalog,
and the real entry file `gcp/main.py` served by the real functions-framework, one process per
function, each with its own service account's credentials."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from gcpfake import FakeGcp

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "gcp" / "main.py"
RUN = uuid.uuid4().hex[:4]
PROJECT = f"jitc-test-{RUN}"
REGION = "europe-west1"
NAME = "jitc"
QUEUE = f"projects/{PROJECT}/locations/{REGION}/queues/{NAME}-requests"
PG_PREFIX = f"gcpt{RUN}_"
PG_SCHEMA = f"gcpt{RUN}_data"
FUNCTIONS = ("intake", "worker", "sweep", "sync")
SYNC_BUCKET = f"{PROJECT}-{NAME}-sync"  # the module's google_storage_bucket.sync_state
TOMBSTONE_BUCKET = f"{PROJECT}-{NAME}-tombstones"  # google_storage_bucket.tombstones


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeGcp]:
    server = FakeGcp(PROJECT, retry_seconds=0.3)
    server.queues.add(QUEUE)
    server.buckets.add(TOMBSTONE_BUCKET)
    yield server
    server.close()


# What `worker_credentials` gives a test: use(key, env).
WorkerCredentials = Callable[[dict[str, Any], dict[str, str]], None]


@pytest.fixture
def worker_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WorkerCredentials:
    """For tests that call Google's clients in-process as the worker: `key` (a service account's
    key) in a file only this user can read, named by GOOGLE_APPLICATION_CREDENTIALS, and the
    variables of `env` set beside it; all of it undone when the test ends, after the fixtures
    that asked for this one have done their own checks."""

    def use(key: dict[str, Any], env: dict[str, str]) -> None:
        path = tmp_path / f"worker-key-{uuid.uuid4().hex[:8]}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(key, out)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
        for name, value in env.items():
            monkeypatch.setenv(name, value)

    return use


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Any]:
    from pgtest import schema_admin

    with schema_admin(PG_PREFIX, PG_SCHEMA) as conn:
        yield conn


def pg_integration(name: str, credentials: str) -> dict[str, Any]:
    from pgtest import cloud_integration

    return cloud_integration(name, credentials, PG_PREFIX, PG_SCHEMA, "2h")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Function:
    name: str
    url: str
    email: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Deployment:
    fake: FakeGcp
    catalog: dict[str, Any]
    sign_private: str
    emails: dict[str, str]
    invoker: str
    functions: dict[str, Function] = field(default_factory=dict)
    tmp: Path = Path()

    def post(
        self, function: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        url = self.functions[function].url + "v1/requests"
        return http_post(url, body, headers)

    def logs(self, function: str) -> list[dict[str, Any]]:
        lines = self.functions[function].log.read_text().splitlines()
        docs = []
        for line in lines:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                docs.append(doc)
        return docs

    def stop(self) -> None:
        for function in self.functions.values():
            function.process.terminate()
        for function in self.functions.values():
            try:
                function.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                function.process.kill()


def http_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def deploy(
    fake: FakeGcp, tmp: Path, catalog: dict[str, Any], sign_private: str, emails: dict[str, str],
    invoker: str, keys: dict[str, dict[str, Any]], functions: tuple[str, ...] = FUNCTIONS,
) -> Deployment:  # fmt: skip
    """Start the functions (all by default) from the real entry file under their own accounts."""
    ports = {name: free_port() for name in FUNCTIONS}
    urls = {name: f"http://127.0.0.1:{port}/" for name, port in ports.items()}
    deployment = Deployment(fake, catalog, sign_private, emails, invoker, tmp=tmp)
    catalog_json = json.dumps(catalog)
    for name in functions:
        key_file = tmp / f"{name}-key.json"
        key_file.write_text(json.dumps(keys[name]))
        key_file.chmod(0o600)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "JITC_PROJECT": PROJECT,
            "JITC_QUEUE": QUEUE,
            "JITC_WORKER_URL": urls["worker"],
            "JITC_SWEEP_URL": urls["sweep"],
            "JITC_SYNC_URL": urls["sync"],
            "JITC_SYNC_BUCKET": SYNC_BUCKET,
            "JITC_GCP_TOMBSTONE_BUCKET": TOMBSTONE_BUCKET,
            "JITC_STORAGE_ENDPOINT": fake.url,
            "JITC_INVOKER_EMAIL": invoker,
            "JITC_CATALOG": catalog_json,
            "JITC_CERTS_URL": f"{fake.url}/oauth2/v1/certs",
            "JITC_TASKS_ENDPOINT": fake.url,
            "JITC_SECRETS_ENDPOINT": fake.url,
            "JITC_GCP_ENDPOINT_CLOUDRESOURCEMANAGER": fake.url + "/",
            "JITC_GCP_ENDPOINT_SECRETMANAGER": fake.url + "/",
            "JITC_GCP_ENDPOINT_STORAGE": fake.url + "/storage/v1/",
            "JITC_GCP_ENDPOINT_PUBSUB": fake.url + "/",
            "JITC_EVENT_TOPIC": f"projects/{PROJECT}/topics/{NAME}-events",
            "JITC_TIMEOUT_SECONDS": "120",
            "JITC_LOG_LEVEL": "DEBUG",
            "JITC_BEHIND_CLOUD_RUN_IAM": "1",  # as the module sets it
        }
        log = tmp / f"{name}.log"
        process = subprocess.Popen(
            [
                sys.executable, "-m", "functions_framework", "--source", str(ENTRY),
                "--target", name, "--host", "127.0.0.1", "--port", str(ports[name]),
            ],
            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp,
        )  # fmt: skip
        deployment.functions[name] = Function(name, urls[name], emails[name], process, log)
    for function in deployment.functions.values():
        _wait_up(function)
    return deployment


def _wait_up(function: Function) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if function.process.poll() is not None:
            raise RuntimeError(f"{function.name} exited:\n{function.log.read_text()}")
        try:
            with socket.create_connection(
                ("127.0.0.1", int(function.url.rsplit(":", 1)[1].strip("/"))), timeout=1
            ):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{function.name} did not start:\n{function.log.read_text()}")


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
