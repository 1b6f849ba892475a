"""Sweep of N expired grants: seconds, and growth from 1,000 to 10,000. Goal: 10,000 in < 5 s.

The expired grants are made by the engine itself, with its clock two hours back (so each grant
expired 1 h 45 min ago), in batches of 500. Then a real-clock Engine.sweep() is timed: it must
leave no role of the benchmark behind but the permission's bundle and one NOLOGIN tombstone per
grant (a copy of a request signed before the sweep may still arrive, asking for a later expiry).

    python bench/bench_pg_sweep.py [sizes, default 1000,10000] [runs of the smallest, default 3]
"""

from __future__ import annotations

import datetime as dt
import sys
import time

from _common import drop_roles, engine, machine, median, works
from bench_pg_latency import connect
from psycopg import sql

from jitc.models import utcnow

INTEGRATION, PREFIX, FLOOR_PREFIX = "bench-sweep", "benchs_", "benchsf_"


def make_expired(count: int, tag: str) -> None:
    """Grants made through the engine with its clock two hours back: each expired 1 h 45 min
    ago, labelled exactly as a real grant is."""
    past = utcnow() - dt.timedelta(hours=2)
    eng, _ = engine(INTEGRATION, PREFIX, clock=lambda: past)
    batch = works(INTEGRATION, [f"s-{tag}-{i}" for i in range(count)], past, duration="15m")
    for start in range(0, count, 500):
        pending = batch[start : start + 500]
        while pending:  # a failed message is redelivered by the queue: do the same
            outcomes = eng.execute_batch(pending)
            failed = {o.request_id for o in outcomes if o.status != "granted"}
            pending = [w for w in pending if w.request.request_id in failed]


def floor(count: int, tag: str) -> float:
    """The least a sweep must do for as many roles made as a grant makes them (a member of the
    bundle, with a comment): end their sessions, DROP OWNED, DROP ROLE, 1,000 names at a time."""
    names = [f"{FLOOR_PREFIX}{tag}_{i}" for i in range(count)]
    with connect() as conn:
        row = conn.execute(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s) LIMIT 1",
            (PREFIX + "b_",),
        ).fetchone()
        assert row is not None, "the sweep's bundle is gone"
        bundle = sql.Identifier(row[0])
        for start in range(0, count, 1000):
            with conn.transaction():
                for name in names[start : start + 1000]:
                    role = sql.Identifier(name)
                    conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(role, bundle))
                    conn.execute(sql.SQL("COMMENT ON ROLE {} IS 'jitc:x'").format(role))
        start_time = time.perf_counter()
        for start in range(0, count, 1000):
            chunk = names[start : start + 1000]
            listed = sql.SQL(", ").join(map(sql.Identifier, chunk))
            conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE usename = ANY(%s)",
                (chunk,),
            )
            with conn.transaction():
                conn.execute(sql.SQL("DROP OWNED BY {}").format(listed))
                conn.execute(sql.SQL("DROP ROLE {}").format(listed))
        return time.perf_counter() - start_time


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
    with connect() as conn:  # the sweep alone leaves nothing behind but the tombstones
        left = conn.execute(
            "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles "
            "WHERE starts_with(rolname, %s) AND NOT starts_with(rolname, %s)",
            (PREFIX, PREFIX + "b_"),
        ).fetchall()
        # Each swept grant leaves a NOLOGIN tombstone (until no copy of its request signed
        # before the sweep could still ask for access): dropped here, untimed, for the next run.
        granted = [name for name, label in left if '"state":"tombstone"' not in (label or "")]
        assert not granted, f"roles left after the sweep: {granted[:5]}"
        assert len(left) == count, (len(left), count)
        names = [name for name, _ in left]
        for start in range(0, len(names), 1000):
            listed = sql.SQL(", ").join(map(sql.Identifier, names[start : start + 1000]))
            conn.execute(sql.SQL("DROP ROLE {}").format(listed))
    return took


def measure(count: int, tag: str) -> tuple[float, float]:
    """The sweep, then its floor, in the same run."""
    took = sweep_once(count, tag)
    return took, floor(count, tag.replace("-", "_"))


def main() -> None:
    sizes = [int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "1000,10000").split(",")]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    print(machine())
    results: dict[int, float] = {}
    try:
        for size in sizes:
            n = runs if size == min(sizes) else 1
            pairs = [measure(size, f"{int(time.time())}-{r}") for r in range(n)]
            results[size] = median([took for took, _ in pairs])
            floors = median([f for _, f in pairs])
            print(
                f"sweep of {size} expired grants: {results[size]:.2f} s "
                f"({size / results[size]:.0f} grants/s), median of {n}; floor (terminate, "
                f"DROP OWNED, DROP ROLE of as many bundle members) {floors:.2f} s; "
                f"sweep/floor {results[size] / floors:.2f}x"
            )
        low, high = min(sizes), max(sizes)
        if low != high:
            print(
                f"growth {low} -> {high}: {results[high] / results[low]:.1f}x time for "
                f"{high / low:.0f}x grants; goal: {high} in < 5 s, linear"
            )
    finally:
        drop_roles(FLOOR_PREFIX)
        drop_roles(PREFIX)


if __name__ == "__main__":
    main()
