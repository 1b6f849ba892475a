"""`jitc` as an operator runs it: exit status 0 success, 2 refused, 1 failure."""

from __future__ import annotations

import json
import os
import signal
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
    said = [line for line in failed.stderr.splitlines() if not line.startswith("{")]
    assert not any("cannot connect" in line for line in said)  # said once (audit lines aside)
    assert jitc("sweep", "--catalog", str(path)).returncode == 1
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("integrations: [")
    for catalog in (tmp_path / "missing.yaml", malformed):
        # a missing file and a malformed one are the same mistake: the input is wrong
        assert jitc("grant", request(tmp_path), "--catalog", str(catalog)).returncode == 2


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
        [
            *JITC,
            "serve",
            "--catalog",
            str(catalog),
            "--port",
            str(port),
            "--events",
            str(events),
            "--journal",
            str(tmp_path / "journal.db"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        box = jitc("keygen", "--box", "--out", str(tmp_path / "box.key")).stdout.strip()
        req = request(tmp_path, identity={"email": "op@example.com", "public_key": box})
        # the URL exactly as serve prints it
        sent = jitc("send", url + "/v1/requests", req, "--key", str(key), "--key-id", "cp-1")
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


def _one_line_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_usage_errors_have_their_own_exit_status_and_version_and_help_examples() -> None:
    for args in ([], ["grant", "--bogus"], ["serve", "--port", "x"], ["keygen"]):
        result = jitc(*args)
        assert result.returncode == 64, (args, result.stderr)
        _one_line_no_traceback(result)
    version = jitc("--version")
    assert version.returncode == 0 and version.stdout.startswith("jitc ")
    for command in ("grant", "revoke", "list", "open", "send", "serve", "demo", "keygen"):
        text = jitc(command, "--help").stdout
        assert "example:" in text and "jitc " + command in text, command
    assert "(default: 8080)" in jitc("serve", "--help").stdout


def test_bad_keys_and_inputs_are_one_line_refusals(tmp_path: Path) -> None:
    box = tmp_path / "box.key"
    jitc("keygen", "--box", "--out", str(box))
    other = tmp_path / "other.key"
    public = jitc("keygen", "--box", "--out", str(other)).stdout.strip()
    junk = tmp_path / "junk.key"
    junk.write_text("not a key at all\n")
    from jitc.sealing import seal

    sealed = seal({"password": "x"}, public)
    cases = [
        (["open", "-", "--key", str(box)], "not json at all"),  # neither JSON nor a blob
        (["open", "-", "--key", str(box)], sealed),  # sealed to another key
        (["open", "-", "--key", str(junk)], sealed),
        (["open", str(tmp_path / "missing.json"), "--key", str(box)], None),
        (["open", "-", "--key", str(tmp_path / "missing.key")], sealed),
        (["send", "http://127.0.0.1:9/", "-", "--key", str(junk), "--key-id", "k"], "{}"),
        (["grant", str(tmp_path / "missing.json"), "--catalog", "examples/catalog.yaml"], None),
        (["grant", "-", "--catalog", "examples/catalog.yaml"], "{nope"),
    ]
    for args, stdin in cases:
        result = jitc(*args, stdin=stdin)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        _one_line_no_traceback(result)
        assert "not a key at all" not in result.stderr


def test_json_is_printed_for_failures_too(tmp_path: Path) -> None:
    result = jitc("grant", str(tmp_path / "missing.json"), "--json")
    assert result.returncode == 2
    doc = json.loads(result.stdout)
    assert doc["error"] == "refused" and doc["field"]


def test_no_act_before_the_audit_sink_works(tmp_path: Path, catalog_file: Path, admin: Any) -> None:
    before = our_roles(admin)
    result = jitc(
        "grant",
        request(tmp_path),
        "--plain",
        "--catalog",
        str(catalog_file),
        "--events",
        str(tmp_path / "no" / "such" / "dir" / "events.jsonl"),
    )
    assert result.returncode == 2 and "events" in result.stderr, result.stderr
    _one_line_no_traceback(result)
    assert our_roles(admin) == before


def test_grant_prints_the_sealed_blob_and_open_takes_any_form_of_it(
    tmp_path: Path, catalog_file: Path, admin: Any
) -> None:
    key = tmp_path / "box.key"
    public = jitc("keygen", "--box", "--out", str(key)).stdout.strip()
    req = request(tmp_path, identity={"email": "op@example.com", "public_key": public})
    events = tmp_path / "events.jsonl"
    out = tmp_path / "creds.sealed"
    granted = jitc(
        "grant", req, "--catalog", str(catalog_file), "--events", str(events), "--out", str(out)
    )
    assert granted.returncode == 0, granted.stdout + granted.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    blob = out.read_text().strip()
    again = jitc("grant", req, "--catalog", str(catalog_file))
    assert "sealed credentials" in again.stdout
    printed = again.stdout.split("sealed credentials: ", 1)[1].split()[0]
    events_line = [line for line in events.read_text().splitlines() if '"outcome"' in line][-1]
    webhook_body = json.dumps({"type": "outcome", "outcome": json.loads(events_line)["outcome"]})
    for form in (blob, printed, events_line, webhook_body, events.read_text()):
        opened = jitc("open", "-", "--key", str(key), stdin=form)
        assert opened.returncode == 0, opened.stderr
        assert json.loads(opened.stdout)["username"]


def test_list_shows_live_grants_and_revoke_takes_a_grant_id(
    tmp_path: Path, catalog_file: Path, admin: Any
) -> None:
    granted = jitc("grant", request(tmp_path), "--plain", "--json", "--catalog", str(catalog_file))
    outcome = json.loads(granted.stdout)
    listed = jitc("list", "--json", "--catalog", str(catalog_file))
    assert listed.returncode == 0, listed.stderr
    rows = {row["grant_id"]: row for row in json.loads(listed.stdout)["grants"]}
    row = rows[outcome["grant_id"]]
    assert row["expires_at"] == outcome["expires_at"] and row["seconds_left"] > 0
    text = jitc("list", "--integration", INTEGRATION, "--catalog", str(catalog_file)).stdout
    assert outcome["grant_id"] in text and "until" in text
    revoked = jitc(
        "revoke",
        "--grant-id",
        outcome["grant_id"],
        "--integration",
        INTEGRATION,
        "--catalog",
        str(catalog_file),
    )
    assert revoked.returncode == 0 and "verified gone: yes" in revoked.stdout, revoked.stdout
    listed = jitc("list", "--json", "--catalog", str(catalog_file))
    assert outcome["grant_id"] not in {r["grant_id"] for r in json.loads(listed.stdout)["grants"]}
    unknown = jitc("list", "--integration", "nope", "--catalog", str(catalog_file))
    assert unknown.returncode == 2


def test_catalog_check_takes_a_path_warns_and_keeps_the_catalogs_units(tmp_path: Path) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "catalog.yaml").read_text())
    doc["integrations"]["local-postgres"]["max_duration"] = "90m"
    doc["integrations"]["local-postgres"]["credentials"] = "vault:secret/db"
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = jitc("catalog", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert "max 90m" in result.stdout
    for warning in ("keys is empty", "'vault'", "sslmode"):
        assert warning in result.stdout, result.stdout
    doc = json.loads(jitc("catalog", "check", str(path), "--json").stdout)
    assert doc["integrations"]["local-postgres"]["permissions"]["read-write"] == "2h"
    assert len(doc["warnings"]) >= 3 and any("vault" in w for w in doc["warnings"])


def test_output_to_a_closed_pipe_is_no_traceback() -> None:
    for command in ("schema | head -c 10", "catalog check examples/catalog.yaml | head -1"):
        proc = subprocess.Popen(
            f"{sys.executable} -m jitc.cli {command} >/dev/null",
            shell=True,
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, err = proc.communicate(timeout=60)
        assert err == "", (command, err)


def test_serve_whose_stdout_reader_went_away_keeps_serving_and_stops_cleanly(
    tmp_path: Path, catalog_file: Path
) -> None:
    events = tmp_path / "events.jsonl"
    journal = tmp_path / "journal.sqlite3"
    env = {k: v for k, v in os.environ.items() if k != "JITC_CATALOG"}
    server = subprocess.Popen(
        [
            *JITC,
            "serve",
            "--catalog",
            str(catalog_file),
            "--port",
            "0",
            "--events",
            str(events),
            "--journal",
            str(journal),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        server.stdout.close()  # `jitc serve | head -1`
        while '"type":"sweep"' not in (events.read_text() if events.exists() else ""):
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            time.sleep(0.1)  # the timers were reported (to nobody), then the sweep ran
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0 and "Traceback" not in err, err
    # it stopped cleanly: the journal is free for the next serve
    from jitc.journal import Journal

    Journal(journal).close()


def test_demo_with_a_bad_dsn_says_why_in_one_line() -> None:
    env_dsn = "host=127.0.0.1 port=1 password=canary-secret"
    result = subprocess.run(
        [*JITC, "demo"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "JITC_PG_DSN": env_dsn},
    )
    assert result.returncode == 1
    assert "connection refused" in result.stdout and "canary-secret" not in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_a_sink_that_fails_after_the_act_still_shows_the_outcome(
    tmp_path: Path, catalog_file: Path, admin: Any
) -> None:
    result = jitc(
        "grant",
        request(tmp_path),
        "--plain",
        "--catalog",
        str(catalog_file),
        "--events",
        "/dev/full",  # opens, then every write fails: a full disk
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "granted:" in result.stdout
        and "WARNING" in result.stdout
        and "not recorded" in result.stdout
    )
    assert "Traceback" not in result.stderr


def _demo_run(output: str) -> tuple[str, str]:
    line = next(line for line in output.splitlines() if line.startswith("this run:"))
    schema = line.split("schema ", 1)[1].split(",")[0]
    prefix = line.split("roles ", 1)[1].rstrip("*")
    return schema, prefix


def _left_behind(admin: Any, schema: str, prefix: str) -> list[Any]:
    roles = admin.execute(
        "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (prefix,)
    ).fetchall()
    schemas = admin.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname = %s", (schema,)
    ).fetchall()
    return roles + schemas


@pytest.mark.slow
def test_an_interrupted_demo_revokes_and_drops_what_it_created(admin: Any) -> None:
    proc = subprocess.Popen(
        [*JITC, "demo", "--seconds", "60"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    output = ""
    for line in proc.stdout:
        output += line
        if "INSERT refused" in line:  # granted and used: a live LOGIN role exists now
            break
    schema, prefix = _demo_run(output)
    proc.send_signal(signal.SIGINT)
    output += proc.stdout.read()
    assert proc.wait(timeout=60) == 130, output
    assert "Traceback" not in output and "interrupted" in output
    assert _left_behind(admin, schema, prefix) == []


@pytest.mark.slow
def test_two_demos_at_once_on_one_server_both_pass_and_leave_nothing(admin: Any) -> None:
    procs = [
        subprocess.Popen(
            [*JITC, "demo", "--seconds", "3"], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output
        assert _left_behind(admin, *_demo_run(output)) == []
        assert "jitc-demo-events" not in output


def test_a_missing_extra_is_named_before_anything_runs(tmp_path: Path, catalog_file: Path) -> None:
    # psycopg made unimportable, as after `pip install -e .` without the postgresql extra
    code = (
        "import sys; sys.modules['psycopg'] = None; from jitc.cli import main; "
        f"sys.exit(main(['grant', {request(tmp_path)!r}, '--plain', '--catalog', {str(catalog_file)!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert (
        "pip install 'jit-connector[postgresql]'" in result.stderr
        and "Traceback" not in result.stderr
    )


def test_grant_with_an_out_file_it_cannot_create_makes_no_grant(
    tmp_path: Path, catalog_file: Path, admin: Any
) -> None:
    public = jitc("keygen", "--box", "--out", str(tmp_path / "box.key")).stdout.strip()
    req = request(tmp_path, identity={"email": "op@example.com", "public_key": public})
    taken = tmp_path / "taken.sealed"
    taken.write_text("someone else's\n")
    before = set(our_roles(admin))
    for out in (taken, tmp_path / "no" / "such" / "dir.sealed"):
        result = jitc("grant", req, "--catalog", str(catalog_file), "--out", str(out))
        assert result.returncode == 2 and "out" in result.stderr, result.stderr
        assert set(our_roles(admin)) == before  # refused before anything was granted
    assert taken.read_text() == "someone else's\n"
    fresh = tmp_path / "fresh.sealed"
    made = jitc("grant", req, "--catalog", str(catalog_file), "--out", str(fresh))
    assert made.returncode == 0, made.stdout + made.stderr
    assert oct(fresh.stat().st_mode & 0o777) == "0o600"
    opened = jitc("open", str(fresh), "--key", str(tmp_path / "box.key"))
    assert opened.returncode == 0 and json.loads(opened.stdout)["password"]
    refused = request(tmp_path, identity={"email": "op@example.com", "public_key": public})
    refused_doc = json.loads(Path(refused).read_text())
    refused_doc["permission"] = "no-such-permission"
    Path(refused).write_text(json.dumps(refused_doc))
    empty = tmp_path / "refused.sealed"
    result = jitc("grant", refused, "--catalog", str(catalog_file), "--out", str(empty))
    assert result.returncode == 2 and not empty.exists()  # no empty file left behind


def test_a_new_events_file_is_readable_by_its_owner_only(
    tmp_path: Path, catalog_file: Path
) -> None:
    events = tmp_path / "events.jsonl"
    result = jitc("sweep", "--catalog", str(catalog_file), "--events", str(events))
    assert result.returncode == 0, result.stderr
    assert events.read_text() and oct(events.stat().st_mode & 0o777) == "0o600"
    from jitc.local import JsonLinesSink
    from jitc.models import AuditEvent

    direct = tmp_path / "direct.jsonl"
    JsonLinesSink(path=direct).audit(AuditEvent(type="sweep", status="revoked"))
    assert oct(direct.stat().st_mode & 0o777) == "0o600"


def test_an_events_file_that_runs_out_of_room_never_holds_a_cut_line(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    # A file size limit stands in for a full disk: the write that crosses it is cut short.
    script = f"""
import resource, signal, sys
from pathlib import Path
from jitc.local import JsonLinesSink
from jitc.models import AuditEvent
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
sink = JsonLinesSink(path=Path({str(events)!r}))
failures = 0
for i in range(40):
    try:
        sink.audit(AuditEvent(type="sweep", status="revoked", message=f"record {{i}}"))
    except OSError:
        failures += 1
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
sink.audit(AuditEvent(type="sweep", status="revoked", message="after the disk has room"))
print(failures)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 0  # the limit was reached
    lines = events.read_text().splitlines()
    docs = [json.loads(line) for line in lines]  # every line whole
    assert docs[-1]["audit"]["message"] == "after the disk has room"


def test_bad_urls_numbers_hosts_and_catalogs_are_one_line_refusals(tmp_path: Path) -> None:
    binary = tmp_path / "catalog.bin"
    binary.write_bytes(bytes(range(256)))
    key = tmp_path / "cp.key"
    jitc("keygen", "--signing", "--out", str(key))
    req = request(tmp_path)
    journal = str(tmp_path / "journal.sqlite3")
    catalog = str(ROOT / "examples" / "catalog.yaml")
    for args in (
        ["send", "http://[::1", req, "--key", str(key), "--key-id", "cp"],
        ["send", "http://127.0.0.1:abc/", req, "--key", str(key), "--key-id", "cp"],
        ["serve", "--port", "-1"],
        ["serve", "--port", "99999"],
        ["serve", "--sweep-interval", "inf"],
        ["serve", "--sweep-interval", "nan"],
        ["serve", "--sweep-interval", "0"],
        ["serve", "--workers", "100000"],
        ["serve", "--host", "\u00e9", "--port", "0", "--catalog", catalog, "--journal", journal],
        ["catalog", "check", str(binary)],
    ):
        result = jitc(*args)
        assert result.returncode in (2, 64), (args, result.returncode, result.stderr)
        _one_line_no_traceback(result)


def test_serve_logs_a_failure_in_one_line(tmp_path: Path, catalog_file: Path, admin: Any) -> None:
    from serveproc import PRIVATE, PUBLIC, free_port, grant

    from jitc.signing import sign

    doc = yaml.safe_load(catalog_file.read_text())
    doc["control_plane"] = {"keys": {"cp": PUBLIC}}
    catalog_file.write_text(yaml.safe_dump(doc))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "JITC_CATALOG"}
    server = subprocess.Popen(  # every event it writes fails: the batch fails and is retried
        [
            *JITC,
            "serve",
            "--catalog",
            str(catalog_file),
            "--port",
            str(port),
            "--events",
            "/dev/full",
            "--journal",
            str(tmp_path / "journal.sqlite3"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        body = json.dumps(grant(f"log-{time.monotonic_ns()}")).encode()
        sent = jitc_send(port, body, sign(body, PRIVATE, "cp").headers())
        assert sent == 202
        assert server.stderr is not None
        seen = []
        for line in server.stderr:
            seen.append(line)
            if "batch failed" in line:
                break
        assert "batch failed" in seen[-1] and "OSError" in seen[-1], seen
        assert not any("Traceback" in line or line.startswith(" ") for line in seen), seen
    finally:
        server.kill()
        server.wait(timeout=10)


def jitc_send(port: int, body: bytes, headers: dict[str, str]) -> int:
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/requests", data=body, method="POST", headers=headers
    )
    with urllib.request.urlopen(req, timeout=30) as response:
        return int(response.status)
