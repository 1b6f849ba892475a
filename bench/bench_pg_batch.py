"""1,000 grants processed as one batch (Engine.execute_batch): grants per second.

For scale, the floor is the same grants' planned statements (real SCRAM verifier in place of the
mask, one transaction per grant) over one raw psycopg connection, measured in the same run, and
once more with one shared verifier computed up front, to show what the SCRAM hashing costs.
Roles are dropped between runs, outside the timing. Goal: >= 500 grants/s.

    python bench/bench_pg_batch.py [grants] [runs]
"""

from __future__ import annotations

import sys
import time

from _common import drop_roles, engine, machine, median, works
from bench_pg_latency import connect, floor_grant

from jitc.models import utcnow

INTEGRATION, PREFIX = "bench-batch", "benchb_"


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    eng, _ = engine(INTEGRATION, PREFIX)
    print(machine())
    rates: list[float] = []
    floors: list[float] = []
    db_only: list[float] = []
    retried: list[int] = []
    with connect() as conn:
        verifier = conn.pgconn.encrypt_password(b"shared", b"bench", b"scram-sha-256")
    try:
        for run in range(runs):
            retried.append(0)
            tag = f"{int(time.time())}-{run}"
            batch = works(INTEGRATION, [f"b-{tag}-{i}" for i in range(size)], utcnow())
            start = time.perf_counter()
            pending = batch
            while pending:  # a failed message is redelivered by the queue: do the same
                outcomes = eng.execute_batch(pending)
                assert all(o.status in ("granted", "failed") for o in outcomes), outcomes
                failed = {o.request_id for o in outcomes if o.status == "failed"}
                pending = [w for w in pending if w.request.request_id in failed]
                retried[-1] += len(pending)
            took = time.perf_counter() - start
            drop_roles(PREFIX)

            floor_batch = works(INTEGRATION, [f"f-{tag}-{i}" for i in range(size)], utcnow())
            plans = [eng.plan(w.request, w.issued_at).statements for w in floor_batch]
            start = time.perf_counter()
            with connect() as conn:
                for plan in plans:
                    floor_grant(conn, plan[0].split('"')[1], plan)
            floors.append(size / (time.perf_counter() - start))
            drop_roles(PREFIX)

            # The floor without the client-side SCRAM verifier (one computed up front, shared).
            with connect() as conn:
                start = time.perf_counter()
                for plan in plans:
                    floor_grant(conn, plan[0].split('"')[1], plan, verifier)
                db_only.append(size / (time.perf_counter() - start))
            drop_roles(PREFIX)
            rates.append(size / took)
            print(
                f"run {run}: engine {rates[-1]:.0f}/s, floor {floors[-1]:.0f}/s, "
                f"floor without SCRAM {db_only[-1]:.0f}/s; engine redeliveries {retried[-1]}"
            )
        r, f = median(rates), median(floors)
        print(
            f"{size} grants in one batch: engine {r:.0f} grants/s, floor {f:.0f} grants/s, "
            f"floor/engine {f / r:.2f}x, floor without SCRAM {median(db_only):.0f} grants/s, "
            f"median of {runs}; goal >= 500/s"
        )
    finally:
        drop_roles(PREFIX)


if __name__ == "__main__":
    main()
