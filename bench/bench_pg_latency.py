"""Grant+revoke latency through the engine vs. the floor: the same statements over raw psycopg.

The floor runs the grant's own statements from the template's plan (CREATE ROLE ... IN ROLE
bundle, and its label; the bundle exists already, as it does after a permission's first grant),
with a SCRAM verifier computed the same way, in one transaction, and ends access with the least
a revoke must do: terminate the sessions, DROP OWNED, DROP ROLE. Two shapes, each measured
interleaved in one run:
  per-op:  each grant and each revoke is its own batch with its own connection, as a queue
           delivers them (engine: keep_connection_seconds 0);
  kept:    each its own batch, on a connection kept from the batch before (floor: one
           connection for the whole run; engine: the default, connections kept across batches);
  shared:  grant and revoke on one new connection (engine: one execute_batch of both, nothing
           kept).
Goal: engine / floor <= 1.2.

    python bench/bench_pg_latency.py [iterations]
"""

from __future__ import annotations

import dataclasses
import secrets
import sys
import time

import psycopg
from _common import DSN, drop_roles, engine, grant, machine, median, revoke
from psycopg import sql

from jitc.engine import Engine
from jitc.messages import Work
from jitc.models import AccessRequest, Outcome, utcnow
from jitc.templates.postgresql import MASK
from jitc.templates.postgresql_scram import scram_verifier

INTEGRATION, PREFIX = "bench-latency", "benchl_"
ENGINE, _ = engine(INTEGRATION, PREFIX)
COLD, _ = engine(INTEGRATION, PREFIX)  # the same, but a connection per batch
_settings = COLD.catalog.integrations[INTEGRATION]
COLD.catalog.integrations[INTEGRATION] = dataclasses.replace(
    _settings,
    connection=_settings.connection.model_copy(update={"keep_connection_seconds": 0}),
)
COLD.secrets = ENGINE.secrets  # one label key: the engines share the bundle
KEPT: list[Conn] = []


Conn = psycopg.Connection[tuple[object, ...]]


def connect() -> Conn:
    # The same connection parameters as the template's session on a loopback host.
    return psycopg.connect(
        DSN,
        sslmode="disable",
        connect_timeout=5,
        application_name="jit-floor",
        options="-c search_path=pg_catalog,pg_temp -c lock_timeout=5s",
        autocommit=True,
    )


def retrying(conn: Conn, statements: list[bytes] | list[sql.Composed]) -> None:
    """One transaction, redone when a concurrent GRANT on the same schema (other tests, other
    workers) makes PostgreSQL fail it with 'tuple concurrently updated'."""
    for attempt in range(10):
        try:
            with conn.transaction():
                for statement in statements:
                    conn.execute(statement)
            return
        except psycopg.errors.InternalError_:
            if attempt == 9:
                raise


def floor_grant(conn: Conn, role: str, plan: list[str], verifier: bytes | None = None) -> None:
    if verifier is None:  # a real one, as the template makes: a fresh password per grant
        verifier = scram_verifier(secrets.token_urlsafe(24)).encode()
    literal = sql.Literal(verifier.decode()).as_string(conn)
    retrying(conn, [text.replace(MASK, literal).encode() for text in plan])


def floor_revoke(conn: Conn, role: str) -> None:
    ident = sql.Identifier(role)
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
    )
    retrying(
        conn,
        [sql.SQL("DROP OWNED BY {}").format(ident), sql.SQL("DROP ROLE {}").format(ident)],
    )


def floor_plan(request_id: str) -> tuple[str, list[str]]:
    outcome = ENGINE.plan(grant(INTEGRATION, request_id))
    role = outcome.statements[0].split('"')[1]
    return role, outcome.statements[:2]  # the role and its label; the rest is the bundle's


def kept() -> Conn:
    if not KEPT or KEPT[0].closed:
        KEPT[:] = [connect()]
    return KEPT[0]


def run_floor(request_id: str, shape: str) -> float:
    role, plan = floor_plan(request_id)
    conn = kept()
    start = time.perf_counter()
    if shape == "kept":
        floor_grant(conn, role, plan)
        floor_revoke(conn, role)
    elif shape == "shared":
        with connect() as conn:
            floor_grant(conn, role, plan)
            floor_revoke(conn, role)
    else:
        with connect() as conn:
            floor_grant(conn, role, plan)
        with connect() as conn:
            floor_revoke(conn, role)
    return time.perf_counter() - start


def deliver(request: AccessRequest, eng: Engine) -> Outcome:
    """As a queue does: a failed message is delivered again, a bounded number of times."""
    for _ in range(20):
        outcome = eng.execute(request)
        if outcome.status != "failed":
            return outcome
    raise RuntimeError(f"{request.request_id} still failing after 20 deliveries: {outcome.message}")


def run_engine(request_id: str, shape: str) -> float | None:
    g, r = grant(INTEGRATION, request_id), revoke(INTEGRATION, request_id)
    start = time.perf_counter()
    if shape == "shared":
        now = utcnow()
        outcomes = COLD.execute_batch([Work(g, now), Work(r, now)])
    else:
        eng = ENGINE if shape == "kept" else COLD
        outcomes = [deliver(g, eng), deliver(r, eng)]
    elapsed = time.perf_counter() - start
    if outcomes[0].status == "failed":  # the revoke then found nothing: not a sample
        return None
    assert [o.status for o in outcomes] == ["granted", "revoked"], outcomes
    return elapsed


def main() -> None:
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    tag = f"{int(time.time())}"
    print(machine())
    try:
        for shape in ("per-op", "kept", "shared"):
            floor: list[float] = []
            eng: list[float] = []
            for i in range(iterations + 3):  # the first 3 are warm-up
                runs = (("f", run_floor), ("e", run_engine))
                took = {
                    name: fn(f"{name}-{shape}-{tag}-{i}", shape)
                    for name, fn in (runs if i % 2 else runs[::-1])
                }
                f_took, e_took = took["f"], took["e"]
                if i >= 3 and f_took is not None and e_took is not None:
                    floor.append(f_took)
                    eng.append(e_took)
            f, e = median(floor), median(eng)
            ratios = [a / b for a, b in zip(eng, floor, strict=True)]
            print(
                f"{shape}: floor {f * 1e3:.2f} ms, engine {e * 1e3:.2f} ms, "
                f"ratio {e / f:.2f}x (median of pairwise ratios {median(ratios):.2f}x), "
                f"n={len(eng)}; goal <= 1.2x"
            )
    finally:
        print(f"dropped {drop_roles(PREFIX)} roles (tombstones the revokes left, leftovers)")


if __name__ == "__main__":
    main()
