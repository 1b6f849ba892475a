"""Client instructions per kept grant+revoke: the engine against the same calls over the raw
client (PostgreSQL: the replay of the engine's own statements, `bench_pg_latency`'s floor
'same'; Redis: `bench_redis`'s floor 'same calls'), counted by valgrind's callgrind, and split
by the library that ran them.

Wall-clock ratios on a shared two-core machine move by a tenth from one run to the next; an
instruction count does not: the same code, inputs and server answers give the same count
whatever else the machine is doing. Only this process is counted (the server's work is in
neither side), and only the measured loop: collection is switched on inside
`itertools.starmap` (`--toggle-collect=starmap_next`), which nothing on these paths calls.
Each side runs in its own process under valgrind, after the same warm-up.

    python bench/bench_instructions.py [postgresql|redis] [iterations]
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SIDES = ("engine", "floor")
TARGETS = ("postgresql", "redis")
FLOORS = {"postgresql": "'same'", "redis": "'same calls'"}  # as bench_pg_latency, bench_redis
_SOURCES = (("/libsodium/", "_sodium"), ("/Python-3", "libpython3"))


Step = tuple[Callable[..., object], list[tuple[Any, ...]]]


def loop(target: str, side: str, iterations: int) -> Step:
    """After a warm-up: what to run for each measured kept grant+revoke, and its arguments (made
    here, before the count starts, as a queue hands messages over ready)."""
    tag = secrets.token_hex(3)
    if target == "postgresql":
        import bench_pg_latency as pg

        pg.RECORDED["kept"] = pg.record_engine("kept", tag)
        run = pg.run_engine if side == "engine" else pg.run_same
        for i in range(5):
            run(f"w{i}-{tag}", "kept")
        return run, [(f"c{i}-{tag}", "kept") for i in range(iterations)]
    import bench_redis as rd

    from jitc.messages import parse_request

    if side == "engine":
        engine = rd.TARGET.engine()

        def grant_revoke(grant: str, revoke: str) -> object:
            return [engine.execute(parse_request(grant)), engine.execute(parse_request(revoke))]

        messages = [
            (rd.TARGET.grant_message(rid), rd.TARGET.revoke_message(rid))
            for rid in (f"c{i}-{tag}" for i in range(iterations + 5))
        ]
        for grant, revoke in messages[:5]:
            grant_revoke(grant, revoke)
        return grant_revoke, messages[5:]
    floors = [rd.same_calls(f"f{i}-{tag}") for i in range(iterations + 5)]
    for floor in floors[:5]:
        floor("kept")
    return (lambda floor: floor("kept")), [(floor,) for floor in floors[5:]]


def child(target: str, side: str, iterations: int) -> None:
    """The measured loop, run under valgrind."""
    sys.argv = sys.argv[:1]
    from _common import drop_roles

    if target == "postgresql":
        import bench_pg_latency as pg

        drop_roles(pg.PREFIX)
    try:
        run, args = loop(target, side, iterations)
        list(itertools.starmap(run, args))
    finally:
        if target == "postgresql":
            drop_roles(pg.PREFIX)
        else:
            import bench_redis as rd

            rd.cleanup(rd.connect())


def by_library(out: Path) -> tuple[int, Counter[str]]:
    """The total, and the instructions of each shared object, from callgrind_annotate."""
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", str(out)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = 0
    libraries: Counter[str] = Counter()
    for line in text.splitlines():
        found = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*)$", line)
        if not found:
            continue
        count = int(found.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in found.group(2):
            total = count
            continue
        where = found.group(2)
        obj = re.search(r"\[([^\]]+)\]\s*$", where)
        if obj:
            name = re.sub(r"[.-].*", "", obj.group(1).rsplit("/", 1)[-1])
        else:
            # Code inlined from a header is listed without its object: named by its source.
            name = next((lib for part, lib in _SOURCES if part in where), "(other)")
        libraries[name] += count
    return total, libraries


def main() -> None:
    target = sys.argv[1] if len(sys.argv) > 1 else "postgresql"
    iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    if target not in TARGETS:
        sys.exit(f"target: one of {', '.join(TARGETS)}")
    side = os.environ.get("JITC_INSTRUCTIONS_SIDE")
    if side is not None:
        child(target, side, iterations)
        return
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        sys.exit("valgrind (callgrind) is not installed here")
    from _common import machine

    print(machine())
    counts: dict[str, tuple[int, Counter[str]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in SIDES:
            out = Path(tmp) / f"{name}.out"
            subprocess.run(
                [
                    "valgrind",
                    "--tool=callgrind",
                    f"--callgrind-out-file={out}",
                    "--collect-atstart=no",
                    "--toggle-collect=starmap_next",
                    sys.executable,
                    str(Path(__file__).resolve()),
                    target,
                    str(iterations),
                ],
                cwd=HERE,
                env={**os.environ, "JITC_INSTRUCTIONS_SIDE": name},
                capture_output=True,
                check=True,
            )
            counts[name] = by_library(out)
    (engine, ours), (floor, theirs) = counts["engine"], counts["floor"]
    per = iterations * 1000
    print(
        f"{target}: client instructions per kept grant+revoke, n={iterations}: engine "
        f"{engine / per:.0f}k, floor {FLOORS[target]} {floor / per:.0f}k, "
        f"ratio {engine / floor:.2f}x"
    )
    print("where the engine's extra instructions run (k per grant+revoke):")
    extra = {lib: ours[lib] - theirs[lib] for lib in ours | theirs}
    for lib, more in sorted(extra.items(), key=lambda item: -item[1]):
        if abs(more) >= per // 100:  # 10k per grant+revoke or more
            print(f"  {lib:24} {more / per:+8.0f}k   (engine {ours[lib] / per:.0f}k)")


if __name__ == "__main__":
    main()
