"""What the PostgreSQL tests share: the server (named by environment variables), this run's
names, and helpers that read the target.

JITC_TEST_PG_DSN   admin DSN of the PostgreSQL the tests use (default: 127.0.0.1:5432, db test)
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from jitc.catalog import Catalog
from jitc.engine import Engine
from jitc.local import MemorySink
from jitc.messages import parse_request
from jitc.models import AccessRequest
from jitc.sealing import box_keypair, unseal
from jitc.templates.postgresql import ACL_LOCK_KEY

PG_DSN = os.environ.get("JITC_TEST_PG_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")
# A distinct prefix and integration name per run keep concurrent runs on one server apart.
RUN = secrets.token_hex(3)
PREFIX = f"t{RUN}_"
INTEGRATION = f"pg-{RUN}"
SCHEMA = f"jt_{RUN}"
BOX_PRIVATE, BOX_PUBLIC = box_keypair()


def our_roles(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute("SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (PREFIX,))
    return sorted(r[0] for r in rows.fetchall())


def all_roles(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Every role with its attributes and comment: the 'before and after' of bad-input tests."""
    return conn.execute(
        "SELECT rolname, rolcanlogin, rolsuper, rolvaliduntil, shobj_description(oid, 'pg_authid'), "
        "ARRAY(SELECT roleid::regrole::text FROM pg_auth_members WHERE member = r.oid ORDER BY 1) "
        "FROM pg_roles r WHERE rolname NOT LIKE 'pg\\_%' AND NOT starts_with(rolname, 'jit_') "
        # other runs' grants on a shared server come and go; they are not this test's business
        "AND coalesce(shobj_description(oid, 'pg_authid'), '') NOT LIKE 'jitc:%%' "
        "ORDER BY 1"
    ).fetchall()


def drop_our_roles(conn: psycopg.Connection[Any]) -> None:
    # Other clients of a shared server may change the same ACLs at the same moment.
    for attempt in range(5):
        try:
            return _drop_our_roles(conn)
        except psycopg.errors.InternalError_:
            if attempt == 4:
                raise
            time.sleep(0.1 * 2**attempt)


def _drop_our_roles(conn: psycopg.Connection[Any]) -> None:
    for name in our_roles(conn):
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
        )
        for db in ("test", "postgres"):
            params = {**conninfo_to_dict(PG_DSN), "dbname": db}
            with psycopg.connect(**params) as other, other.transaction():
                other.execute("SELECT pg_advisory_xact_lock(%s)", (ACL_LOCK_KEY,))
                other.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def catalog_doc(**permissions: dict[str, Any]) -> dict[str, Any]:
    params = conninfo_to_dict(PG_DSN)
    default_permissions: dict[str, Any] = {
        "read-only": {"template": "read-only", "resources": [SCHEMA]},
        "read-write": {"template": "read-write", "resources": [SCHEMA], "max_duration": "2h"},
        "owner": {"template": "owner", "resources": [SCHEMA]},
    }
    default_permissions.update(permissions)
    return {
        "integrations": {
            INTEGRATION: {
                "kind": "postgresql",
                "connection": {
                    "host": params.get("host", "127.0.0.1"),
                    "port": int(params.get("port", 5432)),
                    "dbname": params.get("dbname", "test"),
                    "user": params.get("user", "postgres"),
                    "role_prefix": PREFIX,
                    "terminate_wait_seconds": 5,
                },
                "credentials": "mem:admin",
                "max_duration": "8h",
                "permissions": default_permissions,
            }
        }
    }


@dataclass
class Env:
    """An engine on the real PostgreSQL, with helpers to make requests and log in."""

    catalog: Catalog
    engine: Engine
    sink: MemorySink
    admin: psycopg.Connection[Any]
    now: list[datetime]

    def request(self, action: str = "grant", **fields: Any) -> AccessRequest:
        doc: dict[str, Any] = {
            "request_id": fields.pop("request_id", f"r-{secrets.token_hex(4)}"),
            "action": action,
            "integration": fields.pop("integration", INTEGRATION),
        }
        if action == "grant":
            doc.update(
                permission="read-only",
                resources=[SCHEMA],
                identity={
                    "email": "alice@example.com",
                    "username": "alice",
                    "public_key": BOX_PUBLIC,
                },
                duration="15m",
            )
        doc.update(fields)
        return parse_request(json.dumps(doc))

    def credentials(self, sealed: str | None) -> dict[str, str]:
        assert sealed is not None
        return unseal(sealed, BOX_PRIVATE)

    def login(self, credentials: dict[str, str]) -> psycopg.Connection[Any]:
        params = {**conninfo_to_dict(PG_DSN), "user": credentials["username"]}
        params["password"] = credentials["password"]
        return psycopg.connect(**params, autocommit=True, connect_timeout=3)

    def can_login(self, name: str) -> bool:
        params = {**conninfo_to_dict(PG_DSN), "user": name}
        try:
            psycopg.connect(**params, connect_timeout=3).close()
        except psycopg.OperationalError:
            return False
        return True

    def advance(self, delta: timedelta) -> None:
        self.now[0] += delta
