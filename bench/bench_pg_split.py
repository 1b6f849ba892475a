"""Where a kept grant+revoke's time goes: waiting on the server, or the rest (Python).

Each sample is one grant+revoke through the engine on a kept connection and one replay of the
engine's own statements (`bench_pg_latency`'s floor 'same'), interleaved; psycopg's
`Connection.wait` is timed apart, so what is left is each side's own Python. The replay's
check that it left what the engine's revoke leaves runs after its clock and is not counted.

    python bench/bench_pg_split.py [samples]
"""

from __future__ import annotations

import secrets
import statistics
import sys
import time
from typing import Any

import bench_pg_latency as latency
import psycopg
from _common import drop_roles, machine

WAITS: list[float] = []
_wait = psycopg.Connection.wait


def _timed_wait(self: Any, *args: Any, **kwargs: Any) -> Any:
    start = time.perf_counter()
    try:
        return _wait(self, *args, **kwargs)
    finally:
        WAITS.append(time.perf_counter() - start)


def sample(run: Any, request_id: str, counted: slice) -> tuple[float, float]:
    WAITS.clear()
    elapsed = run(request_id, "kept")
    assert elapsed is not None
    return elapsed, sum(WAITS[counted])


def main() -> None:
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 150
    print(machine())
    drop_roles(latency.PREFIX)
    psycopg.Connection.wait = _timed_wait  # type: ignore[method-assign]
    try:
        latency.RECORDED["kept"] = latency.record_engine("kept", secrets.token_hex(3))
        engine: list[tuple[float, float]] = []
        replay: list[tuple[float, float]] = []
        for i in range(samples + 10):  # the first 10 warm up
            tag = f"{i}-{secrets.token_hex(3)}"
            e = sample(latency.run_engine, f"e-{tag}", slice(None))
            # The replay's last wait is its check after the clock stopped.
            r = sample(latency.run_same, f"s-{tag}", slice(None, -1))
            if i >= 10:
                engine.append(e)
                replay.append(r)
        for name, runs in (("engine", engine), ("replay", replay)):
            total = statistics.median(t for t, _ in runs) * 1e3
            waited = statistics.median(w for _, w in runs) * 1e3
            rest = statistics.median(t - w for t, w in runs) * 1e3
            print(f"{name}: {total:.2f} ms, waiting {waited:.2f} ms, the rest {rest:.2f} ms")
    finally:
        psycopg.Connection.wait = _wait  # type: ignore[method-assign]
        print(f"dropped {drop_roles(latency.PREFIX)} roles")


if __name__ == "__main__":
    main()
