"""Inventory sync of large targets on the real PostgreSQL: seconds and peak memory.

Makes a private database holding N tables (in schemas of 1,000) and M login roles (cluster-wide,
under a private prefix), then syncs two integrations to a control plane on loopback that
verifies every signature and page hash and acknowledges what it could rebuild:

  tables  connects to the database with N tables
  roles   connects to a second private database (few tables): its inventory is the M roles

Each sync runs in a fresh child process, so its peak RSS (VmHWM) is the sync's alone; the
control plane (which keeps every page) stays in this process. Runs, in order: a full sync; an
unchanged sync (only manifests); one table added, then a delta; and, for the memory ratio, a full
sync of a database with N/100 tables in the same run. Everything made is dropped at the end.

    python bench/bench_sync.py [tables, default 100000] [roles, default 10000]
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from _common import machine
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from inventory_cp import ControlPlane, serving

from jitc.signing import signing_keypair

RUN = secrets.token_hex(3)
DB_TABLES, DB_ROLES, DB_SMALL = f"jsb_{RUN}_tables", f"jsb_{RUN}_roles", f"jsb_{RUN}_small"
ROLE_PREFIX = f"jsb_{RUN}_r"
ADMIN = "host=127.0.0.1 port=5432 user=postgres"


def _conn(dbname: str) -> psycopg.Connection[Any]:
    return psycopg.connect(f"{ADMIN} dbname={dbname}", autocommit=True)


def make_tables(dbname: str, count: int) -> None:
    with _conn("postgres") as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    with _conn(dbname) as conn:
        # Batches of 1,000 per transaction: one transaction holding 100,000 new tables' locks
        # would exhaust the lock table.
        for schema in range(0, count, 1000):
            last = min(999, count - schema - 1)
            conn.execute(
                f"DO $$ BEGIN EXECUTE format('CREATE SCHEMA %I', 's' || {schema}); "
                f"FOR i IN 0..{last} LOOP "
                f"EXECUTE format('CREATE TABLE %I.%I ()', 's' || {schema}, 't' || i); "
                "END LOOP; END $$"
            )


def make_roles(count: int) -> None:
    with _conn("postgres") as conn:
        for start in range(0, count, 1000):
            conn.execute(
                f"DO $$ BEGIN FOR i IN {start}..{min(start + 999, count - 1)} LOOP "
                f"EXECUTE format('CREATE ROLE %I LOGIN', '{ROLE_PREFIX}' || i); END LOOP; END $$"
            )


def cleanup() -> None:
    with _conn("postgres") as conn:
        for db in (DB_TABLES, DB_ROLES, DB_SMALL):
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
            )
        while True:
            rows = conn.execute(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s) LIMIT 1000",
                (ROLE_PREFIX,),
            ).fetchall()
            if not rows:
                break
            with conn.transaction():
                for (name,) in rows:
                    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def catalog(url: str, dbs: dict[str, str], folder: Path) -> Path:
    integrations = {
        name: {
            "kind": "postgresql",
            "connection": {
                "host": "127.0.0.1",
                "dbname": db,
                "user": "postgres",
                "role_prefix": f"jg{RUN}_",
            },
            "permissions": {"read-only": {"template": "read-only", "resources": ["public"]}},
        }
        for name, db in dbs.items()
    }
    doc = {
        "connector": {
            "label_key": f"file:{folder / 'label'}",
            "signing_key": f"file:{folder / 'signing'}",
            "webhook_url": url,
        },
        "integrations": integrations,
    }
    path = folder / f"catalog-{len(dbs)}-{secrets.token_hex(2)}.json"
    path.write_text(json.dumps(doc))
    return path


def _status_kib(field: str) -> int:
    """From /proc/self/status: unlike ru_maxrss, which Linux carries over from the parent
    through fork and exec, VmHWM is this process's own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(catalog_path: str, state: str, full: str) -> None:
    """One sync in this process: prints its seconds and peak RSS as JSON."""
    from jitc.catalog import load_catalog
    from jitc.engine import Engine
    from jitc.inventory import FileSyncState, webhook_transport
    from jitc.local import MemorySink, NullScheduler
    from jitc.secrets import local_stores

    engine = Engine(load_catalog(Path(catalog_path)), local_stores(), NullScheduler(), MemorySink())
    transport = webhook_transport(engine.catalog, engine.secrets)
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    report = engine.sync(transport, FileSyncState(Path(state)), full=full == "full")
    took = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    print(
        json.dumps(
            {
                "seconds": took,
                "rss_before_mib": before / 1024,
                "rss_peak_mib": peak / 1024,
                "report": report.as_dict(),
            }
        )
    )


def sync(catalog_path: Path, state: Path, full: bool = False) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            str(catalog_path),
            str(state),
            "full" if full else "delta",
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"sync failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout))


def show(label: str, result: dict[str, Any]) -> None:
    parts = ", ".join(
        f"{name}: {p['status']} {p.get('records', 0)} records, {p.get('pages', 0)} pages, "
        f"{p.get('sent', 0)} sent{' (acked)' if p.get('acked') else ''}"
        for name, p in result["report"]["integrations"].items()
    )
    print(
        f"{label:<28} {result['seconds']:7.2f} s   peak RSS {result['rss_peak_mib']:6.1f} MiB "
        f"(at start {result['rss_before_mib']:5.1f})   {parts}"
    )


def main() -> None:
    tables = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    roles = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    private, _public = signing_keypair()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "label").write_text(secrets.token_urlsafe(32))
        (folder / "signing").write_text(private)
        os.chmod(folder / "signing", 0o600)
        try:
            started = time.perf_counter()
            make_tables(DB_TABLES, tables)
            make_tables(DB_ROLES, 10)
            make_tables(DB_SMALL, max(1, tables // 100))
            make_roles(roles)
            print(f"setup: {tables} tables, {roles} roles in {time.perf_counter() - started:.0f} s")
            cp = ControlPlane(_public)
            with serving(cp) as url:
                big = catalog(url, {"tables": DB_TABLES, "roles": DB_ROLES}, folder)
                small = catalog(url, {"small": DB_SMALL}, folder)
                state = folder / "state.json"
                show("full sync", sync(big, state, full=True))
                show("unchanged (delta)", sync(big, state))
                with _conn(DB_TABLES) as conn:
                    conn.execute(
                        "CREATE TABLE s50000.added ()"
                        if tables > 50_000
                        else "CREATE TABLE s0.added ()"
                    )
                show("one table added (delta)", sync(big, state))
                show(
                    f"full sync, {max(1, tables // 100)} tables",
                    sync(small, folder / "s2", full=True),
                )
                print(f"control plane: {len(cp.refused)} refused events, {len(cp.bodies)} bodies")
        finally:
            cleanup()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:5])
    else:
        main()
