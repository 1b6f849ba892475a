"""`jitc` as an operator runs it: exit status 0 success, 2 refused, 1 failure."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pgtest import INTEGRATION, LABEL_KEY, SCHEMA, catalog_doc, our_roles

ROOT = Path(__file__).resolve().parent.parent
JITC = [sys.executable, "-m", "jitc.cli"]


def jitc(
    *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "JITC_CATALOG"}
    return subprocess.run(
        [*JITC, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def _cli_catalog_doc(tmp_path: Path) -> dict[str, Any]:
    """The test catalog with a label key in a file only this user reads, as the CLI resolves."""
    key = tmp_path / "label.key"
    key.write_text(LABEL_KEY)  # the key the other tests sign this run's bundles with
    key.chmod(0o600)
    doc = catalog_doc()
    doc["connector"] = {"label_key": f"file:{key}"}
    doc["integrations"][INTEGRATION]["credentials"] = None
    return doc


@pytest.fixture
def catalog_file(tmp_path: Path, admin: Any) -> Path:
    doc = _cli_catalog_doc(tmp_path)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def request(tmp_path: Path, **changes: Any) -> str:
    doc: dict[str, Any] = {
        "request_id": f"cli-{time.monotonic_ns()}",
        "action": "grant",
        "integration": INTEGRATION,
        "permission": "read-only",
        "resources": [SCHEMA],
        "identity": {"email": "op@example.com"},
        "duration": "10m",
    }
    doc.update(changes)
    path = tmp_path / f"{doc['request_id']}.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_catalog_check_and_schema() -> None:
    ok = jitc("catalog", "check", "--catalog", "examples/catalog.yaml")
    assert ok.returncode == 0 and "local-postgres" in ok.stdout
    schema = jitc("schema")
    assert schema.returncode == 0 and "access-request" in json.loads(schema.stdout)


def test_plan_grant_revoke_exit_codes(tmp_path: Path, catalog_file: Path, admin: Any) -> None:
    req = request(tmp_path)
    before = our_roles(admin)
    plan = jitc("plan", req, "--catalog", str(catalog_file))
    assert plan.returncode == 0 and "CREATE ROLE" in plan.stdout and "'********'" in plan.stdout
    assert our_roles(admin) == before

    refused = jitc("grant", req, "--catalog", str(catalog_file))  # no public key, no --plain
    assert refused.returncode == 2 and "identity.public_key" in refused.stdout

    granted = jitc("grant", req, "--plain", "--json", "--catalog", str(catalog_file))
    assert granted.returncode == 0, granted.stderr
    outcome = json.loads(granted.stdout)
    assert outcome["status"] == "granted" and outcome["credentials"]["password"]
    events = [json.loads(line) for line in granted.stderr.splitlines() if line.startswith("{")]
    assert events and outcome["credentials"]["password"] not in granted.stderr

    revoke = request(tmp_path, request_id=outcome["request_id"], action="revoke")
    revoke_doc = {
        k: v
        for k, v in json.loads(Path(revoke).read_text()).items()
        if k in ("request_id", "action", "integration")
    }
    done = jitc("revoke", "-", "--catalog", str(catalog_file), stdin=json.dumps(revoke_doc))
    assert done.returncode == 0 and "verified gone: yes" in done.stdout

    unknown = jitc(
        "grant", request(tmp_path, permission="nope"), "--plain", "--catalog", str(catalog_file)
    )
    assert unknown.returncode == 2
    malformed = jitc("grant", "-", "--catalog", str(catalog_file), stdin="{nope")
    assert malformed.returncode == 2 and "body" in malformed.stderr


def test_failure_exits_1(tmp_path: Path, admin: Any) -> None:
    doc = _cli_catalog_doc(tmp_path)
    doc["integrations"][INTEGRATION]["connection"]["port"] = 1
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(doc))
    failed = jitc("grant", request(tmp_path), "--plain", "--catalog", str(path))
    assert failed.returncode == 1 and "cannot connect" in failed.stdout
    assert jitc("sweep", "--catalog", str(path)).returncode == 1
    assert (
        jitc("grant", request(tmp_path), "--catalog", str(tmp_path / "missing.yaml")).returncode
        == 1
    )


def test_keygen_sealed_grant_and_open(tmp_path: Path, catalog_file: Path, admin: Any) -> None:
    key = tmp_path / "box.key"
    made = jitc("keygen", "--box", "--out", str(key))
    assert made.returncode == 0 and oct(key.stat().st_mode & 0o777) == "0o600"
    public = made.stdout.strip()
    req = request(tmp_path, identity={"email": "op@example.com", "public_key": public})
    granted = jitc("grant", req, "--json", "--catalog", str(catalog_file))
    assert granted.returncode == 0, granted.stdout
    outcome_file = tmp_path / "outcome.json"
    outcome_file.write_text(granted.stdout)
    assert 'credentials"' not in granted.stdout.replace("sealed_credentials", "")
    opened = jitc("open", str(outcome_file), "--key", str(key))
    assert (
        opened.returncode == 0
        and json.loads(opened.stdout)["username"] == json.loads(granted.stdout)["principal"]
    )
    sweep = jitc("sweep", "--json", "--catalog", str(catalog_file))
    assert sweep.returncode == 0 and json.loads(sweep.stdout)["revoked"] == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_and_send(tmp_path: Path, admin: Any) -> None:
    key = tmp_path / "cp.key"
    public = jitc("keygen", "--signing", "--out", str(key)).stdout.strip()
    doc = _cli_catalog_doc(tmp_path)
    doc["control_plane"] = {"keys": {"cp-1": public}}
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(doc))
    events = tmp_path / "events.jsonl"
    port = _free_port()
    server = subprocess.Popen(
        [*JITC, "serve", "--catalog", str(catalog), "--port", str(port), "--events", str(events)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        box = jitc("keygen", "--box", "--out", str(tmp_path / "box.key")).stdout.strip()
        req = request(tmp_path, identity={"email": "op@example.com", "public_key": box})
        sent = jitc("send", url, req, "--key", str(key), "--key-id", "cp-1")
        assert sent.returncode == 0 and json.loads(sent.stdout)["status"] == "accepted"
        forged = jitc("send", url, req, "--key", str(tmp_path / "box.key"), "--key-id", "cp-1")
        assert forged.returncode == 2
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "granted" not in (
            events.read_text() if events.exists() else ""
        ):
            time.sleep(0.1)
        lines = [json.loads(line) for line in events.read_text().splitlines()]
        assert any(line.get("outcome", {}).get("status") == "granted" for line in lines)
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.slow
def test_demo_runs_the_whole_story() -> None:
    demo = jitc("demo", "--seconds", "3", timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    for step in ("plan", "grant", "query", "scheduled revoke", "new login is refused", "sweep"):
        assert step in demo.stdout
    assert "demo passed" in demo.stdout


@pytest.mark.slow
def test_demo_runs_on_an_embedded_postgresql_when_none_is_given() -> None:
    demo = jitc("demo", "--seconds", "2", "--embedded", timeout=180)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "embedded PostgreSQL" in demo.stdout and "demo passed" in demo.stdout
