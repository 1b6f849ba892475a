"""Sweep of N expired grants: seconds, and growth from 1,000 to 10,000. Goal: 10,000 in < 20 s.

The expired grants are made with exactly the statements the template's grant runs (its plan for
an engine whose clock is two hours back, so each grant expired 1 h 45 min ago; one real SCRAM
verifier of a random password, shared), sent in pipelined transactions of 250 grants so that
setting up 10,000 takes seconds. Then a real-clock Engine.sweep() is timed.

    python bench/bench_pg_sweep.py [sizes, default 1000,10000] [runs of the smallest, default 3]
"""

from __future__ import annotations

import datetime as dt
import secrets
import sys
import time

import psycopg
from _common import drop_roles, engine, machine, median, works
from bench_pg_latency import connect
from psycopg import sql

from jitc.models import utcnow
from jitc.templates.postgresql import MASK

INTEGRATION, PREFIX = "bench-sweep", "benchs_"


def make_expired(count: int, tag: str) -> None:
    past = utcnow() - dt.timedelta(hours=2)
    eng, _ = engine(INTEGRATION, PREFIX, clock=lambda: past)
    batch = works(INTEGRATION, [f"s-{tag}-{i}" for i in range(count)], past, duration="15m")
    with connect() as conn:
        verifier = conn.pgconn.encrypt_password(
            secrets.token_urlsafe(24).encode(), b"bench", b"scram-sha-256"
        )
        literal = sql.Literal(verifier.decode()).as_string(conn)
        for start in range(0, count, 250):
            chunk = [
                text.replace(MASK, literal).encode()
                for work in batch[start : start + 250]
                for text in eng.plan(work.request, work.issued_at).statements
            ]
            for attempt in range(10):
                try:
                    with conn.pipeline(), conn.transaction():
                        for statement in chunk:
                            conn.execute(statement)
                    break
                except psycopg.errors.InternalError_:  # tuple concurrently updated: other
                    if attempt == 9:  # tests change the same schema's ACL; roll back, redo
                        raise


def sweep_once(count: int, tag: str) -> float:
    make_expired(count, tag)
    eng, _ = engine(INTEGRATION, PREFIX)
    start = time.perf_counter()
    report = eng.sweep()
    took = time.perf_counter() - start
    assert len(report.revoked) == count and report.ok, (len(report.revoked), report.failed)
    if report.residual:  # access ended; the drop is left to the next sweep, as designed
        reasons = {r for rs in report.residual.values() for r in rs}
        print(f"  {len(report.residual)} residual, e.g. {sorted(reasons)[0]!r}")
        for _ in range(10):
            if not (again := eng.sweep()).residual:
                break
        assert again.ok and not again.residual, again
    with connect() as conn:  # the sweep alone must leave nothing behind
        left = conn.execute(
            "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles "
            "WHERE starts_with(rolname, %s)",
            (PREFIX,),
        ).fetchall()
    assert not left, f"roles left after the sweep: {left}"
    return took


def main() -> None:
    sizes = [int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "1000,10000").split(",")]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    print(machine())
    results: dict[int, float] = {}
    try:
        for size in sizes:
            n = runs if size == min(sizes) else 1
            times = [sweep_once(size, f"{int(time.time())}-{r}") for r in range(n)]
            results[size] = median(times)
            print(
                f"sweep of {size} expired grants: {results[size]:.2f} s "
                f"({size / results[size]:.0f} grants/s), median of {n}"
            )
        low, high = min(sizes), max(sizes)
        if low != high:
            print(
                f"growth {low} -> {high}: {results[high] / results[low]:.1f}x time for "
                f"{high / low:.0f}x grants; goal: {high} in < 20 s"
            )
    finally:
        drop_roles(PREFIX)


if __name__ == "__main__":
    main()
