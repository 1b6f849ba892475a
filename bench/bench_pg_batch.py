"""1,000 grants processed as one batch (Engine.execute_batch), with 10 and with 1,000 tables in
the granted schema: grants per second.

For scale, the floor is the same grants' own statements (CREATE ROLE ... IN ROLE bundle and its
label, a SCRAM verifier computed the same way) over one raw psycopg connection, measured in the
same run: one transaction per grant, and all in one transaction. The bundle exists before
either is timed (the engine makes it on a permission's first grant). Roles are dropped between
runs, outside the timing. Goal: >= 1,000 grants/s with 10 and with 1,000 tables.

    python bench/bench_pg_batch.py [grants] [runs] [table counts, default 10,1000]
"""

from __future__ import annotations

import sys
import time

from _common import drop_roles, drop_schema, engine, machine, make_schema, median, works
from bench_pg_latency import connect, floor_grant, retrying
from psycopg import sql

from jitc.models import utcnow
from jitc.templates.postgresql import MASK
from jitc.templates.postgresql_scram import scram_verifier

INTEGRATION, PREFIX, FLOOR_PREFIX = "bench-batch", "benchb_", "benchf_"


def one_size(size: int, runs: int, tables: int) -> None:
    schema = f"bench_batch_{tables}"
    make_schema(schema, tables)
    eng, _ = engine(INTEGRATION, PREFIX, schema=schema)
    rates: list[float] = []
    floors: list[float] = []
    one_txn: list[float] = []
    try:
        # The first grant makes the bundle; it is not timed, as in a deployment it happens once.
        assert eng.execute(works(INTEGRATION, ["warm"], utcnow(), schema=schema)[0].request)
        for run in range(runs):
            tag = f"{int(time.time())}-{run}"
            batch = works(
                INTEGRATION, [f"b-{tag}-{i}" for i in range(size)], utcnow(), "1h", schema
            )
            start = time.perf_counter()
            outcomes = eng.execute_batch(batch)
            took = time.perf_counter() - start
            assert all(o.status == "granted" for o in outcomes), {o.status for o in outcomes}
            rates.append(size / took)

            plans = []
            for i in range(size):
                request = works(INTEGRATION, [f"f-{tag}-{i}"], utcnow(), "1h", schema)[0].request
                statements = eng.plan(request).statements[:2]  # the role and its label
                role = statements[0].split('"')[1]
                floor_role = FLOOR_PREFIX + role[len(PREFIX) :]  # dropped apart from the engine's
                plans.append(
                    (floor_role, [t.replace(f'"{role}"', f'"{floor_role}"') for t in statements])
                )
            with connect() as conn:
                start = time.perf_counter()
                for role, plan in plans:
                    floor_grant(conn, role, plan)
                floors.append(size / (time.perf_counter() - start))
            drop_roles(FLOOR_PREFIX)
            with connect() as conn:
                start = time.perf_counter()
                statements = []
                for _, plan in plans:
                    literal = sql.Literal(scram_verifier("x" * 32)).as_string(conn)
                    statements += [text.replace(MASK, literal) for text in plan]
                retrying(conn, [text.encode() for text in statements])
                one_txn.append(size / (time.perf_counter() - start))
            drop_roles(FLOOR_PREFIX)
            print(
                f"{tables} tables, run {run}: engine {rates[-1]:.0f}/s, floor one transaction "
                f"per grant {floors[-1]:.0f}/s, floor all in one transaction {one_txn[-1]:.0f}/s"
            )
        r = median(rates)
        print(
            f"{size} grants in one batch, {tables} tables: engine {r:.0f} grants/s; floor "
            f"{median(floors):.0f}/s (transaction per grant), {median(one_txn):.0f}/s (one "
            f"transaction); engine/floor {r / median(floors):.2f}x and "
            f"{r / median(one_txn):.2f}x; median of {runs}; goal >= 1000/s"
        )
    finally:
        drop_roles(FLOOR_PREFIX)
        drop_roles(PREFIX)
        drop_schema(schema)


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    counts = [int(c) for c in (sys.argv[3] if len(sys.argv) > 3 else "10,1000").split(",")]
    print(machine())
    for tables in counts:
        one_size(size, runs, tables)


if __name__ == "__main__":
    main()
