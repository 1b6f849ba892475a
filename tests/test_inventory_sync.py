"""Inventory sync on the real PostgreSQL and Redis, to a real HTTP control plane that verifies
signatures and hashes: pages, acknowledged deltas, a lying control plane, an unreachable
target, a target that hangs mid-read, hostile names, and nothing secret or of data leaving."""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from inventory_cp import ControlPlane, serving
from pgtest import PG_DSN, RUN, catalog_doc
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from jitc import inventory
from jitc.catalog import parse_catalog
from jitc.cli import main
from jitc.engine import Engine
from jitc.inventory import FileSyncState, paginate, webhook_transport
from jitc.inventory_models import InventoryEvent
from jitc.local import MemorySink, NullScheduler
from jitc.secrets import EnvSecretStore, SecretStores
from jitc.signing import signing_keypair

PRIVATE, PUBLIC = signing_keypair()
# This module's own schema: other modules of the same run share pgtest's SCHEMA.
SCHEMA = f"ji_{RUN}"
LABEL_KEY = secrets.token_urlsafe(32)
ADMIN_PASSWORD = "pw-" + secrets.token_urlsafe(18)  # must never leave
ROW_MARKER = f"row-data-{secrets.token_hex(8)}"  # a value in a table: must never leave
INTEGRATION = f"pg-{RUN}"
DEAD = f"dead-{RUN}"
REDIS = f"redis-{RUN}"
REDIS_ADMIN = f"a{RUN}-inv"
REDIS_ADMIN_PASSWORD = secrets.token_urlsafe(18)
HOSTILE_TABLES = [
    '"}],"ack":{"version":"x"}}',
    "line\nbreak\ttab\x01ctl",
    "x" * 63,
    "emoji-\u2603-\u00e9",
]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _admin() -> psycopg.Connection[Any]:
    return psycopg.connect(PG_DSN, autocommit=True)


@pytest.fixture(scope="module")
def pg() -> Iterator[psycopg.Connection[Any]]:
    conn = _admin()
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    for name in ["accounts", "orders", *HOSTILE_TABLES]:
        conn.execute(
            sql.SQL("CREATE TABLE {}.{} (v text)").format(
                sql.Identifier(SCHEMA), sql.Identifier(name)
            )
        )
    conn.execute(
        sql.SQL("INSERT INTO {}.accounts VALUES (%s)").format(sql.Identifier(SCHEMA)),
        (ROW_MARKER,),
    )
    try:
        yield conn
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA)))
        conn.close()


def _catalog(url: str, extra: dict[str, Any] | None = None) -> Any:
    doc = catalog_doc()
    doc["connector"] = {"label_key": "mem:label", "signing_key": "mem:signing", "webhook_url": url}
    dead = json.loads(json.dumps(doc["integrations"][INTEGRATION]))
    dead["connection"]["port"] = _closed_port()
    dead["connection"]["connect_timeout"] = 2
    doc["integrations"][DEAD] = dead
    doc["integrations"].update(extra or {})
    return parse_catalog(doc, "test")


def _engine(url: str, extra: dict[str, Any] | None = None) -> Engine:
    store = SecretStores(
        {
            "mem": EnvSecretStore(
                {
                    "admin": ADMIN_PASSWORD,
                    "label": LABEL_KEY,
                    "signing": PRIVATE,
                    "redis": REDIS_ADMIN_PASSWORD,
                }
            )
        }
    )
    return Engine(_catalog(url, extra), store, NullScheduler(), MemorySink())


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of a few records, so that a test inventory of tens of names spans many pages."""
    monkeypatch.setattr(inventory, "PAGE_MIN", 2)
    monkeypatch.setattr(inventory, "PAGE_MAX", 6)
    monkeypatch.setattr(inventory, "PAGE_AVERAGE", 4)


def _table_names(cp: ControlPlane) -> set[str]:
    return {
        r["name"]
        for r in cp.records(INTEGRATION)
        if r["kind"] == "table" and r.get("parent") == SCHEMA
    }


def test_full_then_only_changed_pages_and_the_control_plane_rebuilds_the_same(
    pg: psycopg.Connection[Any], tmp_path: Path, small_pages: None
) -> None:
    cp = ControlPlane(PUBLIC)
    state = FileSyncState(tmp_path / "state.json")
    with serving(cp) as url:
        engine = _engine(url)
        transport = webhook_transport(engine.catalog, engine.secrets)
        first = engine.sync(transport, state, names=[INTEGRATION])
        part = first.integrations[INTEGRATION]
        assert part.status == "complete" and part.acked and part.full, part
        assert part.sent == part.pages >= 4
        assert _table_names(cp) == {"accounts", "orders", *HOSTILE_TABLES}
        kinds = {r["kind"] for r in cp.records(INTEGRATION)}
        assert {"database", "schema", "table", "login_role", "permission"} <= kinds
        assert state.load(INTEGRATION) is not None

        # Nothing of ours changed: no page is sent but those holding cluster-wide names (roles,
        # databases), which other suites on this shared server change at any moment.
        sent_before = len(cp.events)
        second = engine.sync(transport, state, names=[INTEGRATION]).integrations[INTEGRATION]
        assert (second.full, second.acked, second.base_version) == (False, True, part.version)
        assert _only_shared_pages(cp.events[sent_before:])
        assert cp.events[-1]["kind"] == "manifest"

        # One new table: only the page holding it goes (and shared ones), and the inventory the
        # control plane rebuilds from old and new pages has it.
        pg.execute(sql.SQL("CREATE TABLE {}.zebra ()").format(sql.Identifier(SCHEMA)))
        sent_before = len(cp.events)
        third = engine.sync(transport, state, names=[INTEGRATION]).integrations[INTEGRATION]
        assert third.acked and not third.full and third.version != part.version
        pages = [e for e in cp.events[sent_before:] if e["kind"] == "page"]
        holding = [e for e in pages if any(r["name"] == "zebra" for r in e["records"])]
        assert len(holding) == 1
        assert all(_shared(e) for e in pages if e not in holding)
        assert third.sent < third.pages
        assert _table_names(cp) == {"accounts", "orders", "zebra", *HOSTILE_TABLES}


SHARED_KINDS = {"login_role", "group", "database", "schema"}


def _shared(page: dict[str, Any]) -> bool:
    """A page other suites can change: cluster-wide names, or tables of schemas not ours in
    the shared database."""
    return any(
        r["kind"] in SHARED_KINDS or (r["kind"] == "table" and r.get("parent") != SCHEMA)
        for r in page["records"]
    )


def _only_shared_pages(events: list[dict[str, Any]]) -> bool:
    return all(_shared(e) for e in events if e["kind"] == "page")


@pytest.mark.parametrize("mode", ["none", "wrong", "cross", "replay", "garbage"])
def test_an_answer_that_does_not_name_what_was_sent_is_no_acknowledgement(
    pg: psycopg.Connection[Any], tmp_path: Path, mode: str
) -> None:
    cp = ControlPlane(PUBLIC)
    state = FileSyncState(tmp_path / "state.json")
    with serving(cp) as url:
        engine = _engine(url)
        transport = webhook_transport(engine.catalog, engine.secrets)
        first = engine.sync(transport, state, names=[INTEGRATION]).integrations[INTEGRATION]
        assert first.acked
        cp.mode = mode
        pg.execute(
            sql.SQL("CREATE TABLE {}.{} ()").format(
                sql.Identifier(SCHEMA), sql.Identifier(f"t_{mode}")
            )
        )
        second = engine.sync(transport, state, names=[INTEGRATION]).integrations[INTEGRATION]
        # The delta was not taken: it is sent again in full at once, and nothing is assumed
        # held afterwards (a replayed or wrong ack never becomes a base to skip pages on).
        assert second.status == "complete" and not second.acked and second.full
        assert second.sent == second.pages
        assert state.load(INTEGRATION) is None
        third = engine.sync(transport, state, names=[INTEGRATION]).integrations[INTEGRATION]
        assert third.full and third.sent == third.pages


def test_a_control_plane_that_lost_its_pages_gets_everything_again(
    pg: psycopg.Connection[Any], tmp_path: Path, small_pages: None
) -> None:
    cp = ControlPlane(PUBLIC, mode="lose")
    state = FileSyncState(tmp_path / "state.json")
    with serving(cp) as url:
        engine = _engine(url)
        transport = webhook_transport(engine.catalog, engine.secrets)
        assert engine.sync(transport, state, names=[INTEGRATION]).ok
        pg.execute(sql.SQL("CREATE TABLE {}.lost ()").format(sql.Identifier(SCHEMA)))
        again = engine.sync(transport, state, names=[INTEGRATION]).integrations[INTEGRATION]
        # The delta's manifest is refused (409: pages missing); the full resend is acknowledged.
        assert again.acked and again.full and again.sent == again.pages > 2
        assert "lost" in _table_names(cp)


def test_an_unreachable_target_fails_its_own_part_only(
    pg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    cp = ControlPlane(PUBLIC)
    with serving(cp) as url:
        engine = _engine(url)
        report = engine.sync(
            webhook_transport(engine.catalog, engine.secrets), FileSyncState(tmp_path / "s")
        )
    assert report.integrations[INTEGRATION].status == "complete"
    dead = report.integrations[DEAD]
    assert dead.status == "failed" and "cannot connect" in (dead.error or "")
    assert not report.ok and DEAD in cp.failed


class _StallingProxy:
    """TCP proxy to PostgreSQL that stops passing the server's bytes after `budget` of them:
    a target that hangs mid-read, the connection left open."""

    def __init__(self, port: int, budget: int) -> None:
        self.budget = budget
        self.target = port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = [self.listener]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            server = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, self), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, meter: Any) -> None:
        try:
            while data := src.recv(65536):
                if meter is not None:
                    if meter.budget <= 0:
                        continue  # swallowed: the client waits for ever
                    meter.budget -= len(data)
                dst.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def test_a_target_that_hangs_mid_read_fails_alone_within_the_stall_limit(
    pg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA + "_big")))
    for i in range(300):
        pg.execute(
            sql.SQL("CREATE TABLE {}.{} ()").format(
                sql.Identifier(SCHEMA + "_big"), sql.Identifier(f"t{i:04d}")
            )
        )
    port = int(conninfo_to_dict(PG_DSN).get("port", 5432))
    proxy = _StallingProxy(port, budget=12_000)
    cp = ControlPlane(PUBLIC)
    try:
        with serving(cp) as url:
            hung = catalog_doc()["integrations"][INTEGRATION]
            hung["connection"]["port"] = proxy.port
            engine = _engine(url, {f"hung-{RUN}": hung})
            started = time.monotonic()
            report = engine.sync(
                webhook_transport(engine.catalog, engine.secrets),
                FileSyncState(tmp_path / "s"),
                names=[f"hung-{RUN}", INTEGRATION],
                stall_seconds=2,
            )
            took = time.monotonic() - started
            # The next sync does not open another connection to a target still holding the
            # last one: a target hung for days costs one thread, not one per sync.
            accepted = proxy.accepted
            again = engine.sync(
                webhook_transport(engine.catalog, engine.secrets),
                FileSyncState(tmp_path / "s"),
                names=[f"hung-{RUN}"],
                stall_seconds=2,
            ).integrations[f"hung-{RUN}"]
            assert again.status == "failed" and "still waiting" in (again.error or "")
            assert proxy.accepted == accepted
    finally:
        proxy.close()
        pg.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA + "_big")))
    assert report.integrations[f"hung-{RUN}"].status == "failed"
    assert "did not answer" in (report.integrations[f"hung-{RUN}"].error or "")
    assert report.integrations[INTEGRATION].status == "complete"
    assert took < 30  # bounded by the stall limit, not by the target


@pytest.fixture
def redis_admin() -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=6379, decode_responses=True, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable: {exc}")
    command: Any = client.execute_command
    command(
        "ACL",
        "SETUSER",
        REDIS_ADMIN,
        "on",
        f">{REDIS_ADMIN_PASSWORD}",
        "resetkeys",
        "resetchannels",
        "-@all",
        "+acl",
        "+client|list",
        "+client|setname",
        "+ping",
        "+info",
    )
    made = [REDIS_ADMIN]
    try:
        yield client
    finally:
        for name in made + [u for u in command("ACL", "USERS") if u.startswith(f"t{RUN}")]:
            command("ACL", "DELUSER", name)


def test_hostile_names_travel_intact_or_marked_and_nothing_secret_or_of_data_leaves(
    pg: psycopg.Connection[Any], redis_admin: redis.Redis, tmp_path: Path
) -> None:
    command: Any = redis_admin.execute_command
    huge = f"t{RUN}" + "\u00e9" * 20_000 + '\x02"}]}'
    json_like = f't{RUN}{{"type":"inventory","inventory":{{"kind":"manifest"}}}}'
    for name in (huge, json_like, f"t{RUN}\x01ctl\x1b[31m\x7f"):
        command("ACL", "SETUSER", name, "off")
    redis_integration = {
        "kind": "redis",
        "connection": {
            "host": "127.0.0.1",
            "port": 6379,
            "user": REDIS_ADMIN,
            "user_prefix": f"t{RUN}g-",
            "tls": False,
            "acl_save": "never",
        },
        "credentials": "mem:redis",
        "permissions": {"read": {"template": "read-only", "resources": [f"t{RUN}:*"]}},
    }
    cp = ControlPlane(PUBLIC)
    with serving(cp) as url:
        engine = _engine(url, {REDIS: redis_integration})
        report = engine.sync(
            webhook_transport(engine.catalog, engine.secrets),
            FileSyncState(tmp_path / "s"),
            names=[INTEGRATION, REDIS],
        )
    assert report.integrations[REDIS].status == "complete", report.as_dict()
    users = [r for r in cp.records(REDIS) if r["kind"] == "user"]
    long = [r for r in users if r.get("truncated")]
    assert len(long) == 1 and len(long[0]["name"]) == 512 and len(long[0]["full_sha256"]) == 64
    assert json_like in {r["name"] for r in users}  # JSON-looking text is just a name
    assert f"t{RUN}\x01ctl\x1b[31m\x7f" in {r["name"] for r in users}
    assert set(HOSTILE_TABLES) <= _table_names(cp)
    # Every event is valid against the published schema (the control plane checked each) and
    # was signed; no body holds a secret or a value from a table.
    assert not cp.refused and cp.events
    everything = b"\n".join(cp.bodies)
    for secret in (ADMIN_PASSWORD, LABEL_KEY, PRIVATE, REDIS_ADMIN_PASSWORD, ROW_MARKER):
        assert secret.encode() not in everything
    for event in cp.events:
        InventoryEvent.model_validate_json(json.dumps(event))


def test_a_corrupt_or_forged_state_file_means_a_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    forged = {"version": "a" * 64, "pages": ["b" * 64], "sync_id": "c" * 32}
    for text in ("{not json", json.dumps({"integrations": {INTEGRATION: forged}})):
        path.write_text(text)
        assert FileSyncState(path).load(INTEGRATION) is None


def test_pages_are_cut_by_content_so_an_insert_changes_one_or_two_pages() -> None:
    base = [{"kind": "table", "name": f"t{i:06d}", "parent": "s"} for i in range(50_000)]
    before = [p.hash for p in paginate(base)]
    after = [
        p.hash for p in paginate([*base[:25_000], {"kind": "table", "name": "new"}, *base[25_000:]])
    ]
    assert len(set(after) - set(before)) <= 2
    assert all(len(p.records) <= inventory.PAGE_MAX for p in paginate(base))
    long = [{"kind": "user", "name": "n" * 512} for _ in range(5000)]
    assert all(
        len(json.dumps(p.records, separators=(",", ":"))) <= inventory.PAGE_BYTES_MAX + 1024
        for p in paginate(long)
    )


def test_jitc_sync_cli_writes_events_and_a_json_report(
    pg: psycopg.Connection[Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc = catalog_doc()
    doc["connector"] = {"label_key": f"file:{tmp_path / 'label'}"}
    doc["integrations"][INTEGRATION]["credentials"] = f"file:{tmp_path / 'admin'}"
    (tmp_path / "label").write_text(LABEL_KEY)
    (tmp_path / "admin").write_text(ADMIN_PASSWORD)
    (tmp_path / "catalog.json").write_text(json.dumps(doc))
    out = tmp_path / "events.jsonl"
    code = main(
        [
            "sync",
            "--catalog",
            str(tmp_path / "catalog.json"),
            "--out",
            str(out),
            "--state",
            str(tmp_path / "state.json"),
            "--json",
            "--events",
            str(tmp_path / "audit"),
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"], report
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {line["type"] for line in lines} == {"inventory"}
    assert lines[-1]["inventory"]["kind"] == "manifest"
    assert (out.stat().st_mode & 0o777) == 0o600
    assert ADMIN_PASSWORD not in out.read_text() and ROW_MARKER not in out.read_text()
    # Without a webhook and without --out there is nowhere to send: refused, naming the field.
    code = main(["sync", "--catalog", str(tmp_path / "catalog.json"), "--json"])
    assert code == 2 and json.loads(capsys.readouterr().out)["field"] == "catalog"


def test_jitc_serve_syncs_at_start_and_then_each_interval(
    pg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    import subprocess
    import sys

    from serveproc import ROOT, free_port

    cp = ControlPlane(PUBLIC)
    with serving(cp) as url:
        doc = catalog_doc()
        (tmp_path / "label").write_text(LABEL_KEY)
        (tmp_path / "signing").write_text(PRIVATE)
        doc["integrations"][INTEGRATION]["credentials"] = None
        doc["connector"] = {
            "label_key": f"file:{tmp_path / 'label'}",
            "signing_key": f"file:{tmp_path / 'signing'}",
            "webhook_url": url,
        }
        (tmp_path / "catalog.json").write_text(json.dumps(doc))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jitc.cli",
                "serve",
                "--catalog",
                str(tmp_path / "catalog.json"),
                "--port",
                str(free_port()),
                "--journal",
                str(tmp_path / "journal"),
                "--events",
                str(tmp_path / "events"),
                "--sync-interval",
                "1",
                "--sync-state",
                str(tmp_path / "state.json"),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with cp.lock:
                    manifests = [e for e in cp.events if e["kind"] == "manifest"]
                if len(manifests) >= 2:
                    break
                time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert len(manifests) >= 2, cp.events
    # The second sync was a delta on the first, acknowledged, version: of its pages only those
    # with cluster-wide names (which other suites change meanwhile) went again.
    assert manifests[1]["base_version"] == manifests[0]["version"]
    second = [
        e for e in cp.events if e["kind"] == "page" and e["sync_id"] == manifests[1]["sync_id"]
    ]
    assert _only_shared_pages(second)
    assert FileSyncState(tmp_path / "state.json").load(INTEGRATION) is not None


def test_names_a_driver_hands_over_as_bytes_or_with_lone_surrogates_still_encode() -> None:
    from jitc.inventory import canonical, target_record
    from jitc.templates.base import InventoryRecord

    for item in (
        InventoryRecord("table", b"caf\xe9\x00", b"s"),  # type: ignore[arg-type]
        InventoryRecord("table", "a\ud800b"),
    ):
        record = target_record(item)
        text = canonical(record)
        text.encode("utf-8")  # would raise on a lone surrogate
        InventoryEvent.model_validate_json(
            json.dumps(
                {
                    "kind": "page", "sync_id": "0" * 32, "integration": "x",
                    "target_kind": "postgresql", "time": "2026-01-01T00:00:00Z",
                    "records": [record],
                }
            )
        )  # fmt: skip
        assert isinstance(record["name"], str) and not record["name"].startswith("b'")
