"""`jitc demo`: plan, grant a short-lived user over a signed request, use it, watch the scheduled
revoke end the open session, refuse a new login, and sweep to find nothing left.

Safe on a shared server: each run has its own schema, integration, role prefix and request id,
drops only what it created, and revokes its grant when it is interrupted or fails.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import secrets
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
from jitc.models import Outcome, derive_grant_id
from jitc.runtime import LocalRuntime
from jitc.sealing import box_keypair, unseal
from jitc.secrets import EnvSecretStore, SecretStores
from jitc.signing import sign, signing_keypair
from jitc.templates.postgresql_session import connect_failure


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
        print(f"starting an embedded PostgreSQL in {folder} (takes a few seconds) ...", flush=True)
        began = time.monotonic()
        server = pgserver.get_server(folder, cleanup_mode="stop")
        print(f"  started in {time.monotonic() - began:.1f}s", flush=True)
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
    except KeyboardInterrupt:
        print("demo interrupted: what it had created was revoked and dropped")
        return 130
    print("demo passed: access was granted, used, revoked on time, and nothing was left behind")
    return 0


def _connect_admin(dsn: str, where: str) -> tuple[psycopg.Connection[Any], dict[str, Any]]:
    try:
        params: dict[str, Any] = conninfo_to_dict(dsn)
    except psycopg.Error:
        raise DemoFailed(f"{where} is not a valid PostgreSQL connection string") from None
    try:
        admin = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        reason = connect_failure(str(exc))
        raise DemoFailed(f"cannot connect to PostgreSQL ({where}): {reason}") from None
    return admin, params


def _story(dsn: str, where: str, seconds: int) -> None:
    admin, params = _connect_admin(dsn, where)
    password = params.pop("password", None)
    print(f"PostgreSQL: {where}")
    run = secrets.token_hex(3)
    schema, integration = f"jitc_demo_{run}", f"demo-{run}"
    sign_private, sign_public = signing_keypair()
    box_private, box_public = box_keypair()
    connection = {
        "host": params.get("host", "127.0.0.1"),
        "port": int(params.get("port", 5432)),
        "dbname": params.get("dbname", "postgres"),
        "user": params.get("user", "postgres"),
        "role_prefix": f"jd{run}_",
        "terminate_wait_seconds": 5,
    }
    catalog = parse_catalog(
        {
            "control_plane": {"keys": {"demo": sign_public}},
            "connector": {"label_key": "mem:label"},
            "integrations": {
                integration: {
                    "kind": "postgresql",
                    "connection": connection,
                    "credentials": "mem:admin" if password else None,
                    "max_duration": "1h",
                    "permissions": {
                        "read-only": {"template": "read-only", "resources": [schema]},
                    },
                }
            },
        },
        "demo catalog",
    )
    # Each run signs its labels with a fresh key (and has its own role prefix).
    label_key = secrets.token_urlsafe(32)
    store = SecretStores({"mem": EnvSecretStore({"admin": password or "", "label": label_key})})
    sink = MemorySink()
    fd, events_name = tempfile.mkstemp(prefix="jitc-demo-events-", suffix=".jsonl")
    os.close(fd)
    events_path = Path(events_name)
    request_id = f"demo-{run}-{int(time.time())}"
    grant_id = derive_grant_id(integration, request_id)
    body = json.dumps(
        {
            "request_id": request_id,
            "action": "grant",
            "integration": integration,
            "permission": "read-only",
            "resources": [schema],
            "identity": {"email": "demo@example.com", "username": "demo", "public_key": box_public},
            "duration": f"{seconds}s",
            "justification": "jitc demo",
        }
    ).encode()
    print(
        f"this run: schema {schema}, integration {integration}, roles {connection['role_prefix']}*"
    )
    steps = Steps()
    state: dict[str, Any] = {}
    runtime: LocalRuntime | None = None
    try:
        try:
            admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        except psycopg.Error as exc:
            raise DemoFailed(f"cannot create schema {schema}: {type(exc).__name__}") from None
        state["schema"] = schema
        state["role_prefix"] = connection["role_prefix"]
        admin.execute(
            sql.SQL("CREATE TABLE {}.greetings (word text)").format(sql.Identifier(schema))
        )
        admin.execute(
            sql.SQL("INSERT INTO {}.greetings VALUES ('hello'), ('world')").format(
                sql.Identifier(schema)
            )
        )
        runtime = LocalRuntime(
            catalog,
            store,
            FanOutSink(sink, JsonLinesSink(path=events_path)),
            port=0,
            sweep_interval=3600,
        ).start()
        url = runtime.url

        def plan() -> str:
            assert runtime is not None
            outcome = runtime.engine.plan(parse_request(body))
            for statement in outcome.statements:
                print(f"            {statement}")
            return f"{len(outcome.statements)} statements, nothing executed"

        def grant() -> str:
            envelope = sign(body, sign_private, "demo")
            request = urllib.request.Request(  # noqa: S310 - our own loopback runtime
                url + "/v1/requests", data=body, method="POST", headers=envelope.headers()
            )
            state["granting"] = True
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                json.loads(response.read())
            outcome = _wait(sink, request_id, 15)
            if outcome.status != "granted" or not outcome.sealed_credentials:
                raise DemoFailed(f"grant ended {outcome.status}: {outcome.message}")
            state["credentials"] = unseal(outcome.sealed_credentials, box_private)
            return f"HTTP 202, then {outcome.principal} until {outcome.expires_at:%H:%M:%S} UTC"

        def use() -> str:
            creds = state["credentials"]
            login = {**params, "user": creds["username"], "password": creds["password"]}
            user = psycopg.connect(**login, autocommit=True)
            state["session"] = user
            rows = user.execute(
                sql.SQL("SELECT word FROM {}.greetings ORDER BY 1").format(sql.Identifier(schema))
            ).fetchall()
            try:
                user.execute(
                    sql.SQL("INSERT INTO {}.greetings VALUES ('nope')").format(
                        sql.Identifier(schema)
                    )
                )
            except psycopg.errors.InsufficientPrivilege:
                pass
            else:
                raise DemoFailed("read-only user could INSERT")
            return f"SELECT gave {[r[0] for r in rows]}; INSERT refused (read-only)"

        def expire() -> str:
            outcome = _wait(sink, f"expire-{grant_id}", seconds + 90)
            if outcome.status != "revoked" or not outcome.verified:
                raise DemoFailed(f"scheduled revoke ended {outcome.status}: {outcome.message}")
            state["revoked"] = True
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
            assert runtime is not None
            report = runtime.engine.sweep()
            live = runtime.engine.live_grants([integration])[integration]
            if isinstance(live, str):
                raise DemoFailed(f"cannot list grants: {live}")
            left = [g for g in live if g.grant_id == grant_id and g.state != "tombstone"]
            if report.revoked or left or report.failed:
                raise DemoFailed(f"sweep found work: {report}")
            return "nothing left to revoke"

        steps.run("plan the grant (nothing runs)", plan)
        steps.run(f"grant a {seconds}s ephemeral user through the signed HTTP intake", grant)
        steps.run("connect as it and query", use)
        steps.run("wait for the scheduled revoke at expiry", expire)
        steps.run("check the open session is gone and a new login is refused", gone)
        steps.run("sweep", sweep)
        lines = events_path.read_text(encoding="utf-8").splitlines()
        print(f"audit trail: {len(lines)} events and outcomes recorded")
    finally:
        _clean_up(admin, runtime, state, grant_id, events_path)


def _clean_up(
    admin: psycopg.Connection[Any],
    runtime: LocalRuntime | None,
    state: dict[str, Any],
    grant_id: str,
    events_path: Path,
) -> None:
    """Leave the server as it was: whatever this run created, and only that, is removed."""
    session = state.get("session")
    if session is not None:
        with contextlib.suppress(psycopg.Error):
            session.close()
    if runtime is not None:
        runtime.stop()
        engine = runtime.engine
        if state.get("granting") and not state.get("revoked"):
            # Interrupted or failed before the scheduled revoke: revoke it now.
            revoke = parse_request(
                json.dumps(
                    {
                        "request_id": f"demo-cleanup-{grant_id}",
                        "action": "revoke",
                        "integration": next(iter(engine.catalog.integrations)),
                        "grant_id": grant_id,
                    }
                )
            )
            outcome = engine.execute(revoke)
            if outcome.status != "revoked":
                print(f"WARNING: could not revoke grant {grant_id}: {outcome.message}")
        with contextlib.suppress(Exception), engine._batch() as batch:
            # Nothing can deliver this run's grant again: its tombstone can go now.
            integration = next(iter(engine.catalog.integrations.values()))
            batch.session(integration).forget(grant_id)
    schema = state.get("schema")
    if schema is not None:
        with contextlib.suppress(psycopg.Error):
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    prefix = state.get("role_prefix")
    if prefix is not None:
        # The permission's bundle role outlives its members by design; this run's can go.
        with contextlib.suppress(psycopg.Error):
            rows = admin.execute(
                "SELECT rolname FROM pg_catalog.pg_roles WHERE NOT rolcanlogin "
                "AND pg_catalog.starts_with(rolname, %s)",
                (prefix,),
            ).fetchall()
            for (name,) in rows:
                role = sql.Identifier(name)
                # DROP OWNED revokes the bundle's CONNECT on the database: a concurrent GRANT on
                # that database's ACL (another demo, another client) fails it with "tuple
                # concurrently updated"; it is worth running again.
                for attempt in range(5):
                    try:
                        with admin.transaction():
                            admin.execute(sql.SQL("DROP OWNED BY {}").format(role))
                            admin.execute(sql.SQL("DROP ROLE {}").format(role))
                        break
                    except psycopg.errors.InternalError_:
                        if attempt == 4:
                            raise
                        time.sleep(0.05 * 2**attempt)
    admin.close()
    events_path.unlink(missing_ok=True)
