"""Shared helpers for the benchmarks: catalog, requests, cleanup, machine description.

Every benchmark uses its own integration name and role prefix, so it never touches the roles of
tests running at the same time on the same server, and drops all it made when it ends.
"""

from __future__ import annotations

import datetime as dt
import platform
import secrets
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

from jitc.catalog import Catalog, parse_catalog
from jitc.engine import Engine
from jitc.local import MemorySink, NullScheduler
from jitc.messages import Work, parse_request
from jitc.models import AccessRequest, utcnow
from jitc.sealing import box_keypair
from jitc.secrets import EnvSecretStore, SecretStores

DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
PUBLIC_KEY = box_keypair()[1]


def catalog(integration: str, prefix: str, schema: str = "public") -> Catalog:
    return parse_catalog(
        {
            "connector": {"label_key": "mem:label"},
            "integrations": {
                integration: {
                    "kind": "postgresql",
                    "connection": {
                        "host": "127.0.0.1",
                        "dbname": "test",
                        "user": "postgres",
                        "role_prefix": prefix,
                    },
                    "max_duration": "8h",
                    "permissions": {
                        "read-only": {"template": "read-only", "resources": [schema]},
                    },
                }
            },
        },
        "bench",
    )


# One label key for the whole run: the engine that makes grants and the one that sweeps them
# must both recognise the labels.
LABEL_KEY = secrets.token_urlsafe(32)


def engine(
    integration: str,
    prefix: str,
    clock: Callable[[], dt.datetime] = utcnow,
    schema: str = "public",
) -> tuple[Engine, MemorySink]:
    sink = MemorySink()
    eng = Engine(
        catalog(integration, prefix, schema),
        SecretStores({"mem": EnvSecretStore({"label": LABEL_KEY})}),
        NullScheduler(),
        sink,
        clock=clock,
    )
    return eng, sink


def grant(
    integration: str, request_id: str, duration: str = "1h", schema: str = "public"
) -> AccessRequest:
    return parse_request(
        f'{{"request_id":"{request_id}","action":"grant","integration":"{integration}",'
        f'"permission":"read-only","resources":["{schema}"],"duration":"{duration}",'
        f'"identity":{{"email":"bench@example.com","public_key":"{PUBLIC_KEY}"}}}}'
    )


def make_schema(name: str, tables: int) -> None:
    """A schema of `tables` small tables, made again from scratch."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        with conn.transaction():
            for index in range(tables):
                conn.execute(
                    sql.SQL("CREATE TABLE {}.{} (id int)").format(
                        sql.Identifier(name), sql.Identifier(f"t{index}")
                    )
                )


def drop_schema(name: str) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def revoke(integration: str, request_id: str) -> AccessRequest:
    return parse_request(
        f'{{"request_id":"r-{request_id}","action":"revoke","integration":"{integration}",'
        f'"grant_id":"{grant(integration, request_id).target_grant_id}"}}'
    )


def works(
    integration: str, ids: list[str], at: dt.datetime, duration: str = "1h", schema: str = "public"
) -> list[Work]:
    return [Work(grant(integration, i, duration, schema), at) for i in ids]


def drop_roles(prefix: str) -> int:
    """Drop every role named with this benchmark's prefix (grants, tombstones, bundles)."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (prefix,)
            )
        ]
        for start in range(0, len(names), 500):
            for attempt in range(10):
                try:
                    with conn.transaction():
                        for name in names[start : start + 500]:
                            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
                    break
                except psycopg.errors.InternalError_:  # tuple concurrently updated: a GRANT
                    if attempt == 9:  # of someone else's on the same object; redo
                        raise
    return len(names)


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    with psycopg.connect(DSN) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    pg = row[0] if row else "?"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{now}; nproc {nproc}; CPU {cpu}; PostgreSQL {pg}; Python {platform.python_version()}"
