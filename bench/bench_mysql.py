"""MySQL/MariaDB: grant+revoke latency through the engine vs. the raw client, and batch throughput.

The floor is raw PyMySQL running the template's own planned grant statements (a real
mysql_native_password hash in place of the mask) and the least a revoke must do (lock the
account, look for its connections, drop the user and its expiry event), on the same server in
the same run, interleaved with the engine. Shapes:
  per-op:  the grant and the revoke each in their own batch (own connection), as a queue
           delivers them;
  shared:  both on one connection (engine: one execute_batch of both).
Goal: engine / floor <= 1.3. Then N grants in one batch, engine vs. the floor's same statements
on one connection: grants per second.

    python bench/bench_mysql.py [iterations] [batch size]
"""

from __future__ import annotations

import secrets
import statistics
import sys
import time
from typing import Any

import pymysql
from _userbench import machine as host_line

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.local import MemorySink, NullScheduler
from jitc.messages import Work, parse_request
from jitc.models import AccessRequest, utcnow
from jitc.sealing import box_keypair
from jitc.secrets import EnvSecretStore, SecretStores
from jitc.templates.mysql import MASK, literal
from jitc.templates.mysql_session import native_password_hash

INTEGRATION, PREFIX, LEDGER, DATABASE = "bench-mysql", "benchm_", "benchm_ledger", "benchm_db"
PUBLIC_KEY = box_keypair()[1]
Conn = pymysql.connections.Connection  # generic only in the type stubs


def connect() -> Conn:
    return pymysql.connect(host="127.0.0.1", user="root", autocommit=True, charset="utf8mb4")


def execute(conn: Conn, statement: str, args: Any = None) -> list[Any]:
    with conn.cursor() as cursor:
        cursor.execute(statement, args)
        return list(cursor.fetchall())


ENGINE = Engine(
    parse_catalog(
        {
            "connector": {"label_key": "mem:label"},
            "integrations": {
                INTEGRATION: {
                    "kind": "mysql",
                    "connection": {
                        "user": "root",
                        "user_prefix": PREFIX,
                        "ledger_database": LEDGER,
                    },
                    "permissions": {
                        "read-only": {"template": "read-only", "resources": [DATABASE]}
                    },
                }
            }
        }
    ),
    SecretStores({"mem": EnvSecretStore({"label": secrets.token_urlsafe(32)})}),
    NullScheduler(),
    MemorySink(),
)


def grant(request_id: str) -> AccessRequest:
    return parse_request(
        f'{{"request_id":"{request_id}","action":"grant","integration":"{INTEGRATION}",'
        f'"permission":"read-only","resources":["{DATABASE}"],"duration":"1h",'
        f'"identity":{{"email":"bench@example.com","public_key":"{PUBLIC_KEY}"}}}}'
    )


def revoke(request_id: str) -> AccessRequest:
    return parse_request(
        f'{{"request_id":"r-{request_id}","action":"revoke","integration":"{INTEGRATION}",'
        f'"grant_id":"{grant(request_id).target_grant_id}"}}'
    )


def floor_grant(conn: Conn, plan: list[str]) -> None:
    hashed = literal(native_password_hash(secrets.token_urlsafe(24)))
    for statement in plan:
        execute(conn, statement.replace(MASK, hashed))


def floor_revoke(conn: Conn, name: str, grant_id: str) -> None:
    who = f"'{name}'@'%'"
    execute(conn, f"ALTER USER IF EXISTS {who} ACCOUNT LOCK")
    execute(conn, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (name,))
    execute(conn, f"DROP USER IF EXISTS {who}")
    execute(conn, f"DROP EVENT IF EXISTS `{LEDGER}`.`jitc_expire_{grant_id}`")


def run_floor(request_id: str, shared: bool) -> float:
    outcome = ENGINE.plan(grant(request_id))
    plan = outcome.statements
    name, grant_id = plan[0].split("'")[1], str(outcome.grant_id)
    start = time.perf_counter()
    if shared:
        with connect() as conn:
            floor_grant(conn, plan)
            floor_revoke(conn, name, grant_id)
    else:
        with connect() as conn:
            floor_grant(conn, plan)
        with connect() as conn:
            floor_revoke(conn, name, grant_id)
    return time.perf_counter() - start


def run_engine(request_id: str, shared: bool) -> float:
    g, r = grant(request_id), revoke(request_id)
    start = time.perf_counter()
    if shared:
        now = utcnow()
        outcomes = ENGINE.execute_batch([Work(g, now), Work(r, now)])
    else:
        outcomes = [ENGINE.execute(g), ENGINE.execute(r)]
    elapsed = time.perf_counter() - start
    assert [o.status for o in outcomes] == ["granted", "revoked"], outcomes
    return elapsed


def latency(iterations: int, tag: str) -> None:
    for shared in (False, True):
        shape = "shared" if shared else "per-op"
        floor: list[float] = []
        eng: list[float] = []
        for i in range(iterations + 3):  # the first 3 are warm-up
            runs = (("f", run_floor), ("e", run_engine))
            took = {
                name: fn(f"{name}-{shape}-{tag}-{i}", shared)
                for name, fn in (runs if i % 2 else runs[::-1])
            }
            if i >= 3:
                floor.append(took["f"])
                eng.append(took["e"])
        f, e = statistics.median(floor), statistics.median(eng)
        ratios = [a / b for a, b in zip(eng, floor, strict=True)]
        print(
            f"{shape}: floor {f * 1e3:.2f} ms, engine {e * 1e3:.2f} ms, ratio {e / f:.2f}x "
            f"(median of pairwise ratios {statistics.median(ratios):.2f}x), n={len(eng)}; "
            "goal <= 1.3x"
        )


def batch(size: int, tag: str, rounds: int = 5) -> None:
    """`rounds` batches of `size` grants each, engine and floor alternating, so that a noisy
    neighbour on the machine weighs on both alike."""
    engine_rates: list[float] = []
    floor_rates: list[float] = []
    for r in range(rounds):
        ids = [f"b-{tag}-{r}-{i}" for i in range(size)]
        plans = [ENGINE.plan(grant(f"f-{i}")).statements for i in ids]

        def run_engine_batch(ids: list[str] = ids) -> None:
            now = utcnow()
            start = time.perf_counter()
            outcomes = ENGINE.execute_batch([Work(grant(i), now) for i in ids])
            engine_rates.append(size / (time.perf_counter() - start))
            assert all(o.status == "granted" for o in outcomes)

        def run_floor_batch(plans: list[list[str]] = plans) -> None:
            with connect() as conn:
                start = time.perf_counter()
                for plan in plans:
                    floor_grant(conn, plan)
                floor_rates.append(size / (time.perf_counter() - start))

        for step in (
            (run_engine_batch, run_floor_batch) if r % 2 else (run_floor_batch, run_engine_batch)
        ):
            step()
    e, f = statistics.median(engine_rates), statistics.median(floor_rates)
    print(
        f"batches of {size} grants (median of {rounds}): engine {e:.0f} grants/s, "
        f"floor {f:.0f} grants/s, floor / engine {f / e:.2f}x"
    )


def cleanup() -> int:
    with connect() as conn:
        users = execute(conn, "SELECT User, Host FROM mysql.user WHERE User LIKE 'benchm\\_%'")
        for user, host in users:
            execute(conn, "DROP USER IF EXISTS %s@%s", (user, host))
        execute(conn, f"DROP DATABASE IF EXISTS `{LEDGER}`")
        execute(conn, f"DROP DATABASE IF EXISTS `{DATABASE}`")
    return len(users)


def machine() -> str:
    with connect() as conn:
        version = execute(conn, "SELECT VERSION()")[0][0]
    return host_line(str(version), f"PyMySQL {pymysql.__version__}")


def main() -> None:
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    tag = f"{int(time.time())}"
    print(machine())
    with connect() as conn:
        execute(conn, f"CREATE DATABASE IF NOT EXISTS `{DATABASE}`")
    try:
        latency(iterations, tag)
        batch(size, tag)
    finally:
        print(f"dropped {cleanup()} users (grants the batch left, leftovers)")


if __name__ == "__main__":
    main()
