"""Grant+revoke latency through the engine vs. the floor: the same statements over raw psycopg.

The floor runs the grant's own statements from the template's plan (CREATE ROLE ... IN ROLE
bundle, and its label; the bundle exists already, as it does after a permission's first grant),
with a SCRAM verifier computed the same way, in one transaction, and ends access with the least
a revoke must do: terminate the sessions, DROP OWNED, DROP ROLE. Two shapes, each measured
interleaved in one run:
  per-op:  each grant and each revoke is its own batch with its own connection, as a queue
           delivers them (engine: keep_connection_seconds 0);
  kept:    each its own batch, on a connection kept from the batch before (engine: the
           default, connections kept across batches; floor: the engine's kept connection,
           between the engine's batches, so one server process serves both: see `kept`);
  shared:  grant and revoke on one new connection (engine: one execute_batch of both, nothing
           kept).
Two floors, each run interleaved with the engine:
  least:       the grant's own statements, and the least a revoke must do (terminate the
               sessions, DROP OWNED, DROP ROLE): engine / this floor adds the revoke's safety
               statements (cutting what the grantee handed out, cleaning what it left on its
               bundle, verifying) to the engine's own cost;
  same:        the statements the engine itself sent for a grant and a revoke of this shape,
               recorded once from an untimed engine run (bench/_pgreplay.py) and sent again
               over raw psycopg with the request's names, a fresh SCRAM verifier, and the same
               transactions, savepoints and pipeline syncs: engine / this floor is the cost
               of the connector's own work around its statements. The replay's own
               bookkeeping (putting names and learned oids in place) is timed apart and left
               out: a program sending these statements itself would have them at hand.
Goal: engine / floor of the same statements <= 1.2.

    python bench/bench_pg_latency.py [iterations]
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import sys
import time

import psycopg
from _common import DSN, drop_roles, engine, grant, machine, median, revoke
from _pgreplay import Recording, record, replay
from psycopg import sql

from jitc.engine import Engine
from jitc.messages import Work
from jitc.models import AccessRequest, Outcome, utcnow
from jitc.templates import postgresql_pool
from jitc.templates.postgresql import MASK
from jitc.templates.postgresql_scram import scram_verifier

# JITC_BENCH_PREFIX: runs side by side on one server each clean up only their own roles.
INTEGRATION, PREFIX = "bench-latency", os.environ.get("JITC_BENCH_PREFIX", "benchl") + "_"
ENGINE, _ = engine(INTEGRATION, PREFIX)
COLD, _ = engine(INTEGRATION, PREFIX)  # the same, but a connection per batch
_settings = COLD.catalog.integrations[INTEGRATION]
COLD.catalog.integrations[INTEGRATION] = _settings._replace(
    connection=_settings.connection.model_copy(update={"keep_connection_seconds": 0}),
)
COLD.secrets = ENGINE.secrets  # one label key: the engines share the bundle
KEPT: list[Conn] = []


Conn = psycopg.Connection[tuple[object, ...]]


def connect(dbname: str | None = None) -> Conn:
    # The same connection parameters as the template's session on a loopback host.
    return psycopg.connect(
        DSN if dbname is None else psycopg.conninfo.make_conninfo(DSN, dbname=dbname),
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


def kept(shape: str = "kept") -> Conn:
    """The floor's connection kept for the run. In the kept shape it is the engine's own kept
    connection, idle in the template's pool between the engine's batches: one server process
    then runs both sides' statements. On a connection of its own the floor ran the same
    statements 0.2-0.7 ms faster per grant+revoke than the engine's backend did (the server's
    per-wait times differed, not the clients'), and equally fast once the two shared it: a
    difference between two backends, not the connector's work."""
    if shape == "kept":
        for sessions in postgresql_pool.POOL._kept.values():
            for _, _, session in sessions:
                if not session.conn.closed:
                    return session.conn
    if not KEPT or KEPT[0].closed:
        KEPT[:] = [connect()]
    return KEPT[0]


def run_floor(request_id: str, shape: str) -> float:
    role, plan = floor_plan(request_id)
    conn = kept(shape)
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


@dataclasses.dataclass
class Recorded:
    """The engine's statements for one shape: grant and revoke apart, or one batch of both."""

    role: str
    grant_id: str
    verifier: str
    parts: list[Recording]


RECORDED: dict[str, Recorded] = {}


def _verifier_of(parts: list[Recording]) -> str:
    for part in parts:
        for event in part.events:
            if event[0] == "exec" and "SCRAM-SHA-256$" in event[2]:
                return event[2].split("'SCRAM-SHA-256$", 1)[1].split("'", 1)[0]
    raise RuntimeError("no SCRAM verifier among the recorded statements")


def record_engine(shape: str, tag: str) -> Recorded:
    """One untimed grant+revoke through the engine, its statements recorded (after one not
    recorded: the first grant of a run makes the bundle, which the timed ones find made)."""
    assert run_engine(f"warm-{shape}-{tag}", shape) is not None
    request_id = f"rec-{shape}-{tag}"
    g, r = grant(INTEGRATION, request_id), revoke(INTEGRATION, request_id)
    role, _ = floor_plan(request_id)
    parts: list[Recording] = []
    if shape == "shared":
        now = utcnow()
        with record() as both:
            outcomes = COLD.execute_batch([Work(g, now), Work(r, now)])
        parts.append(both)
    else:
        eng = ENGINE if shape == "kept" else COLD
        with record() as granted:
            first = eng.execute(g)
        with record() as revoked:
            second = eng.execute(r)
        outcomes = [first, second]
        parts += [granted, revoked]
    assert [o.status for o in outcomes] == ["granted", "revoked"], outcomes
    return Recorded(role, g.target_grant_id, _verifier_of(parts), parts)


def run_same(request_id: str, shape: str) -> float:
    """The engine's recorded statements for this shape, sent again for a new request."""
    recorded = RECORDED[shape]
    role, _ = floor_plan(request_id)
    grant_id = grant(INTEGRATION, request_id).target_grant_id
    conn = kept(shape)
    start = time.perf_counter()
    names = {
        recorded.role: role,
        recorded.grant_id: grant_id,
        # A fresh password per grant, as the template makes.
        recorded.verifier: scram_verifier(secrets.token_urlsafe(24)).removeprefix("SCRAM-SHA-256$"),
    }
    # The replay's own bookkeeping (names and learned oids put in place) is not the floor's:
    # a program sending these statements itself would have them at hand.
    bookkeeping = 0.0
    for part in recorded.parts:
        if shape == "kept":
            bookkeeping += replay(conn, part, names, connect)
        else:
            with connect() as own:
                bookkeeping += replay(own, part, names, connect)
    elapsed = time.perf_counter() - start - bookkeeping
    # What the engine's revoke leaves: the name kept by a NOLOGIN tombstone, in no role.
    left = conn.execute(
        "SELECT r.rolcanlogin, (SELECT count(*) FROM pg_auth_members m WHERE m.member = r.oid) "
        "FROM pg_roles r WHERE r.rolname = %s",
        (role,),
    ).fetchall()
    if left not in ([], [(False, 0)]):
        raise RuntimeError(f"the replayed revoke left {role} as {left}: not the same statements")
    return elapsed


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
            RECORDED[shape] = record_engine(shape, tag)
            took: dict[str, list[float]] = {"least": [], "same": [], "engine": []}
            for i in range(iterations + 3):  # the first 3 are warm-up
                runs = [("least", run_floor), ("same", run_same), ("engine", run_engine)]
                order = runs[i % 3 :] + runs[: i % 3]
                once = {name: fn(f"{name[0]}-{shape}-{tag}-{i}", shape) for name, fn in order}
                if i >= 3 and all(v is not None for v in once.values()):
                    for name, value in once.items():
                        assert value is not None
                        took[name].append(value)
            e = median(took["engine"])
            parts = [f"{shape}: engine {e * 1e3:.2f} ms"]
            for name in ("same", "least"):
                f = median(took[name])
                ratios = [a / b for a, b in zip(took["engine"], took[name], strict=True)]
                parts.append(
                    f"floor '{name}' {f * 1e3:.2f} ms, ratio {e / f:.2f}x "
                    f"(pairwise {median(ratios):.2f}x)"
                )
            events = sum(len(p.events) for p in RECORDED[shape].parts)
            print(
                "; ".join(parts) + f"; {events} recorded events; n={len(took['engine'])}; "
                "goal: engine / 'same' <= 1.2x"
            )
    finally:
        print(f"dropped {drop_roles(PREFIX)} roles (tombstones the revokes left, leftovers)")


if __name__ == "__main__":
    main()
