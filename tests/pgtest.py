"""What the PostgreSQL tests share: the server (named by environment variables), this run's
names, and helpers that read the target.

JITC_TEST_PG_DSN   admin DSN of the PostgreSQL the tests use (default: 127.0.0.1:5432, db test)
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from jitc.catalog import Catalog
from jitc.engine import Engine
from jitc.local import MemorySink, NullScheduler
from jitc.messages import parse_request
from jitc.models import AccessRequest
from jitc.sealing import box_keypair, unseal
from jitc.secrets import EnvSecretStore, SecretStores

PG_DSN = os.environ.get("JITC_TEST_PG_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")
# A distinct prefix and integration name per run keep concurrent runs on one server apart.
RUN = secrets.token_hex(3)
PREFIX = f"t{RUN}_"
INTEGRATION = f"pg-{RUN}"
SCHEMA = f"jt_{RUN}"
BOX_PRIVATE, BOX_PUBLIC = box_keypair()
LABEL_KEY = secrets.token_urlsafe(32)


def every_role(conn: psycopg.Connection[Any]) -> list[str]:
    """Every role of this run: grants, tombstones and bundles."""
    rows = conn.execute("SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (PREFIX,))
    return sorted(r[0] for r in rows.fetchall())


def our_roles(conn: psycopg.Connection[Any]) -> list[str]:
    """This run's grant roles that are not tombstones or bundles: what still is a grant."""
    rows = conn.execute(
        "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s) "
        "AND NOT starts_with(rolname, %s) "
        "AND coalesce(shobj_description(oid, 'pg_authid'), '') NOT LIKE '%%\"tombstone\"%%'",
        (PREFIX, PREFIX + "b_"),
    )
    return sorted(r[0] for r in rows.fetchall())


live_roles = our_roles


def all_roles(conn: psycopg.Connection[Any], *also: str) -> list[tuple[Any, ...]]:
    """This run's roles, and the named ones a test may touch, with their attributes, comment
    and memberships: the 'before and after' of bad-input tests. Only these: other suites on a
    shared server make and drop roles of their own at any moment."""
    return conn.execute(
        "SELECT rolname, rolcanlogin, rolsuper, rolvaliduntil, shobj_description(oid, 'pg_authid'), "
        "ARRAY(SELECT roleid::regrole::text FROM pg_auth_members WHERE member = r.oid ORDER BY 1) "
        "FROM pg_roles r WHERE starts_with(rolname, %s) OR rolname = ANY(%s) ORDER BY 1",
        (PREFIX, list(also)),
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
    for name in every_role(conn):
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
        )
        for db in ("test", "postgres"):
            params = {**conninfo_to_dict(PG_DSN), "dbname": db}
            with psycopg.connect(**params) as other, other.transaction():
                other.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


# -- What the cloud suites (tests/aws, tests/gcp, tests/azure) share: a schema and roles of
# their own run, under a prefix of their own, on the same server.


def drop_roles_under(conn: psycopg.Connection[Any], prefix: str) -> None:
    """Drop the roles under `prefix` (a run's own, and only those): each one's sessions ended
    and what it owns in `conn`'s database dropped first. Another suite changing the same ACLs
    at the same moment makes a collision, which is retried."""
    for attempt in range(5):
        try:
            rows = conn.execute(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (prefix,)
            ).fetchall()
            for (name,) in rows:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    (name,),
                )
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
            return
        except psycopg.errors.InternalError:
            if attempt == 4:
                raise
            time.sleep(0.2)


@contextmanager
def schema_admin(
    prefix: str, schema: str, names: tuple[str, ...] = ()
) -> Iterator[psycopg.Connection[Any]]:
    """An admin connection, with `schema` made and in it a table `items (name text)` holding
    `names`; afterwards the roles under `prefix` and the schema are dropped."""
    conn = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5)
    ident = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.items (name text)").format(ident))
    for name in names:
        conn.execute(sql.SQL("INSERT INTO {}.items VALUES (%s)").format(ident), (name,))
    try:
        yield conn
    finally:
        drop_roles_under(conn, prefix)
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))
        conn.close()


def cloud_integration(
    name: str, credentials: str, prefix: str, schema: str, max_duration: str
) -> dict[str, Any]:
    """The catalog entry `name` of a cloud suite's PostgreSQL integration: grants of read-only
    on `schema` to roles under `prefix`, its admin password read from `credentials`."""
    return {
        name: {
            "kind": "postgresql",
            "connection": connection(prefix),
            "credentials": credentials,
            "max_duration": max_duration,
            "permissions": {"read": {"template": "read-only", "resources": [schema]}},
        }
    }


def connection(prefix: str) -> dict[str, Any]:
    """The PostgreSQL template's connection to the test server, its grant roles under `prefix`."""
    params = conninfo_to_dict(PG_DSN)
    return {
        "host": params.get("host", "127.0.0.1"),
        "port": int(params.get("port", 5432)),
        "dbname": params.get("dbname", "test"),
        "user": params.get("user", "postgres"),
        "role_prefix": prefix,
        "terminate_wait_seconds": 5,
    }


def catalog_doc(**permissions: dict[str, Any]) -> dict[str, Any]:
    default_permissions: dict[str, Any] = {
        "read-only": {"template": "read-only", "resources": [SCHEMA]},
        "read-write": {"template": "read-write", "resources": [SCHEMA], "max_duration": "2h"},
        "owner": {"template": "owner", "resources": [SCHEMA]},
    }
    default_permissions.update(permissions)
    return {
        "connector": {"label_key": "mem:label"},
        "integrations": {
            INTEGRATION: {
                "kind": "postgresql",
                "connection": connection(PREFIX),
                "credentials": "mem:admin",
                "max_duration": "8h",
                "permissions": default_permissions,
            }
        },
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


def keyed(make_env: Any, doc: dict[str, Any] | None = None, key: str = LABEL_KEY) -> Env:
    """An Env whose label key (connector.label_key) is `key`."""
    doc = doc or catalog_doc()
    env: Env = make_env(doc)  # the fixture drops this run's roles afterwards
    store = SecretStores({"mem": EnvSecretStore({"admin": "", "label": key})})
    env.engine = Engine(env.catalog, store, NullScheduler(), env.sink, clock=env.engine.clock)
    return env


def pg_bindir() -> Path:
    """PostgreSQL binaries for a private cluster: JITC_TEST_PG_BINDIR, the system's, pgserver's."""
    configured = os.environ.get("JITC_TEST_PG_BINDIR")
    candidates = [configured] if configured else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    try:
        from pgserver._commands import POSTGRES_BIN_PATH  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        return Path(POSTGRES_BIN_PATH)
    raise RuntimeError(
        "no PostgreSQL binaries: set JITC_TEST_PG_BINDIR or install the demo extra (pgserver)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextmanager
def private_cluster(auth: str = "trust", password: str = "") -> Iterator[dict[str, Any]]:
    """A PostgreSQL cluster of our own on a free loopback port, removed afterwards: for tests
    that plant traps, need password checks or change settings a shared server must keep.
    Its superuser is `admin`; it yields connection parameters for database `postgres`."""
    bindir = pg_bindir()
    folder = Path(tempfile.mkdtemp(prefix="jitc-pg-"))
    data = folder / "data"
    run_as: list[str] = []
    (folder / "pw").write_text(password or "unused")
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as an unprivileged account
        user = next(u for u in ("postgres", "pgserver", "nobody") if _has_user(u))
        shutil.chown(folder, user)
        shutil.chown(folder / "pw", user)
        run_as = ["runuser", "-u", user, "--"]
    subprocess.run(
        [
            *run_as,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "admin",
            f"--auth={auth}",
            f"--pwfile={folder / 'pw'}",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    subprocess.run(
        [
            *run_as,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "log"),
            "-w",
            "-o",
            f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_prepared_transactions=4",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield {"host": "127.0.0.1", "port": port, "dbname": "postgres", "user": "admin"}
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)
