"""`jitc demo`: plan, grant a short-lived user over a signed request, use it, watch the scheduled
revoke end the open session, refuse a new login, and sweep to find nothing left."""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from jitc.catalog import parse_catalog
from jitc.local import FanOutSink, JsonLinesSink, MemorySink
from jitc.messages import parse_request
from jitc.models import Outcome
from jitc.runtime import LocalRuntime
from jitc.sealing import box_keypair, unseal
from jitc.secrets import EnvSecretStore, SecretStores
from jitc.signing import sign, signing_keypair

SCHEMA = "jitc_demo"


class DemoFailed(Exception):
    pass


class Steps:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.number = 0

    def run(self, title: str, action: Callable[[], str]) -> None:
        self.number += 1
        began = time.monotonic()
        print(f"[{began - self.start:6.2f}s] {self.number}. {title} ...", flush=True)
        detail = action()
        took = time.monotonic() - began
        print(f"          ok in {took:.2f}s: {detail}", flush=True)


def _reachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


@contextlib.contextmanager
def _postgres(embedded: bool) -> Iterator[tuple[str, str]]:
    """(dsn, where): JITC_PG_DSN, else 127.0.0.1:5432, else an embedded server in a temp folder."""
    dsn = os.environ.get("JITC_PG_DSN")
    if dsn and not embedded:
        yield dsn, "JITC_PG_DSN"
        return
    if not embedded and _reachable("127.0.0.1", 5432):
        yield "host=127.0.0.1 port=5432 dbname=test user=postgres", "local server 127.0.0.1:5432"
        return
    try:
        # untyped package: its API is one call, typed here
        pgserver: Any = importlib.import_module("pgserver")
    except ImportError:
        raise DemoFailed(
            "no PostgreSQL: set JITC_PG_DSN, run one on 127.0.0.1:5432, "
            "or install the demo extra (pip install 'jit-connector[demo]')"
        ) from None
    with tempfile.TemporaryDirectory(prefix="jitc-demo-pg-") as folder:
        server = pgserver.get_server(folder, cleanup_mode="stop")
        try:
            yield server.get_uri("postgres"), f"embedded PostgreSQL in {folder}"
        finally:
            server.cleanup()


def _wait(sink: MemorySink, request_id: str, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for outcome in list(sink.outcomes):
            if outcome.request_id == request_id and outcome.status != "failed":
                return outcome
        time.sleep(0.05)
    raise DemoFailed(f"no outcome for {request_id} within {timeout:.0f}s")


def run_demo(seconds: int = 20, embedded: bool = False) -> int:
    try:
        with _postgres(embedded) as (dsn, where):
            _story(dsn, where, seconds)
    except DemoFailed as exc:
        print(f"demo FAILED: {exc}")
        return 1
    print("demo passed: access was granted, used, revoked on time, and nothing was left behind")
    return 0


def _story(dsn: str, where: str, seconds: int) -> None:
    params: dict[str, Any] = conninfo_to_dict(dsn)
    password = params.pop("password", None)
    print(f"PostgreSQL: {where}")
    admin = psycopg.connect(dsn, autocommit=True)
    sign_private, sign_public = signing_keypair()
    box_private, box_public = box_keypair()
    prefix = f"jitd{os.urandom(3).hex()}_"
    connection = {
        "host": params.get("host", "127.0.0.1"),
        "port": int(params.get("port", 5432)),
        "dbname": params.get("dbname", "postgres"),
        "user": params.get("user", "postgres"),
        "terminate_wait_seconds": 5,
        # Each run signs with a fresh label key, so it takes a fresh prefix: an earlier run's
        # roles are not this run's and would be refused as such.
        "role_prefix": prefix,
    }
    catalog = parse_catalog(
        {
            "control_plane": {"keys": {"demo": sign_public}},
            "connector": {"label_key": "mem:label"},
            "integrations": {
                "demo-postgres": {
                    "kind": "postgresql",
                    "connection": connection,
                    "credentials": "mem:admin" if password else None,
                    "max_duration": "1h",
                    "permissions": {
                        "read-only": {"template": "read-only", "resources": [SCHEMA]},
                    },
                }
            },
        },
        "demo catalog",
    )
    label_key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    secrets = SecretStores({"mem": EnvSecretStore({"admin": password or "", "label": label_key})})
    sink = MemorySink()
    fd, events_path = tempfile.mkstemp(prefix="jitc-demo-events-", suffix=".jsonl")
    os.close(fd)
    runtime = LocalRuntime(
        catalog,
        secrets,
        FanOutSink(sink, JsonLinesSink(path=Path(events_path))),
        port=0,
        sweep_interval=3600,
    ).start()
    request_id = f"demo-{int(time.time())}"
    body = json.dumps(
        {
            "request_id": request_id,
            "action": "grant",
            "integration": "demo-postgres",
            "permission": "read-only",
            "resources": [SCHEMA],
            "identity": {"email": "demo@example.com", "username": "demo", "public_key": box_public},
            "duration": f"{seconds}s",
            "justification": "jitc demo",
        }
    ).encode()
    steps = Steps()
    state: dict[str, Any] = {}
    try:
        admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        admin.execute(
            sql.SQL("CREATE TABLE {}.greetings (word text)").format(sql.Identifier(SCHEMA))
        )
        admin.execute(
            sql.SQL("INSERT INTO {}.greetings VALUES ('hello'), ('world')").format(
                sql.Identifier(SCHEMA)
            )
        )

        def plan() -> str:
            outcome = runtime.engine.plan(parse_request(body))
            for statement in outcome.statements:
                print(f"            {statement}")
            return f"{len(outcome.statements)} statements, nothing executed"

        def grant() -> str:
            envelope = sign(body, sign_private, "demo")
            request = urllib.request.Request(  # noqa: S310 - our own loopback runtime
                runtime.url + "/v1/requests",
                data=body,
                method="POST",
                headers=envelope.headers(),
            )
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                accepted = json.loads(response.read())
            outcome = _wait(sink, request_id, 15)
            if outcome.status != "granted" or not outcome.sealed_credentials:
                raise DemoFailed(f"grant ended {outcome.status}: {outcome.message}")
            state["grant_id"] = accepted["grant_id"]
            state["credentials"] = unseal(outcome.sealed_credentials, box_private)
            state["expires_at"] = outcome.expires_at
            return f"HTTP 202, then {outcome.principal} until {outcome.expires_at:%H:%M:%S} UTC"

        def use() -> str:
            creds = state["credentials"]
            login = {**params, "user": creds["username"], "password": creds["password"]}
            user = psycopg.connect(**login, autocommit=True)
            state["session"] = user
            rows = user.execute(
                sql.SQL("SELECT word FROM {}.greetings ORDER BY 1").format(sql.Identifier(SCHEMA))
            ).fetchall()
            try:
                user.execute(
                    sql.SQL("INSERT INTO {}.greetings VALUES ('nope')").format(
                        sql.Identifier(SCHEMA)
                    )
                )
            except psycopg.errors.InsufficientPrivilege:
                pass
            else:
                raise DemoFailed("read-only user could INSERT")
            return f"SELECT gave {[r[0] for r in rows]}; INSERT refused (read-only)"

        def expire() -> str:
            outcome = _wait(sink, f"expire-{state['grant_id']}", seconds + 90)
            if outcome.status != "revoked" or not outcome.verified:
                raise DemoFailed(f"scheduled revoke ended {outcome.status}: {outcome.message}")
            return (
                f"scheduled revoke ran {outcome.revocation_lag_seconds:.2f}s after expiry, verified"
            )

        def gone() -> str:
            try:
                state["session"].execute("SELECT 1")
            except psycopg.OperationalError:
                pass
            else:
                raise DemoFailed("the open session survived the revoke")
            creds = state["credentials"]
            try:
                psycopg.connect(
                    **{**params, "user": creds["username"], "password": creds["password"]}
                )
            except psycopg.OperationalError:
                return "open session terminated; new login refused"
            raise DemoFailed("a new login succeeded after revoke")

        def sweep() -> str:
            report = runtime.engine.sweep()
            with runtime.engine._batch() as batch:
                left = [
                    g
                    for g in batch.session(catalog.integration("demo-postgres")).active_grants()
                    if g.grant_id == state["grant_id"] and g.state != "tombstone"
                ]
            if report.revoked or left or report.failed:
                raise DemoFailed(f"sweep found work: {report}")
            return "nothing left to revoke"

        steps.run("plan the grant (nothing runs)", plan)
        steps.run(f"grant a {seconds}s ephemeral user through the signed HTTP intake", grant)
        steps.run("connect as it and query", use)
        steps.run("wait for the scheduled revoke at expiry", expire)
        steps.run("check the open session is gone and a new login is refused", gone)
        steps.run("sweep", sweep)
        print(f"audit events: {events_path}")
    finally:
        runtime.stop()
        session = state.get("session")
        if session is not None:
            session.close()
        with contextlib.suppress(psycopg.Error):
            admin.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA))
            )
        with contextlib.suppress(psycopg.Error):
            rows = admin.execute(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (prefix,)
            ).fetchall()
            for (name,) in rows:  # this run's roles only: its own prefix
                role = sql.Identifier(name)
                admin.execute(sql.SQL("DROP OWNED BY {}").format(role))
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
        admin.close()
