"""Client instructions per kept grant+revoke: the engine against the replay of its own
statements (`bench_pg_latency`'s floor 'same' in the kept shape), counted by valgrind's
callgrind, and split by the library that ran them.

Wall-clock ratios on a shared two-core machine move by a tenth from one run to the next; an
instruction count does not: the same code, inputs and server answers give the same count
whatever else the machine is doing. Only this process is counted (the server's work is in
neither side), and only the measured loop: collection is switched on inside
`itertools.starmap` (`--toggle-collect=starmap_next`), which nothing on these paths calls.
Each side runs in its own process under valgrind, after the same warm-up.

    python bench/bench_pg_instructions.py [iterations]
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIDES = ("engine", "replay")
_SOURCES = (("/libsodium/", "_sodium"), ("/Python-3", "libpython3"))


def child(side: str, iterations: int) -> None:
    """The measured loop, run under valgrind: warm-up, then `iterations` kept grant+revokes."""
    sys.argv = sys.argv[:1]
    import bench_pg_latency as latency
    from _common import drop_roles

    drop_roles(latency.PREFIX)
    try:
        latency.RECORDED["kept"] = latency.record_engine("kept", secrets.token_hex(3))
        run = latency.run_engine if side == "engine" else latency.run_same
        for i in range(5):
            run(f"w{i}-{secrets.token_hex(3)}", "kept")
        ids = [(f"c{i}-{secrets.token_hex(3)}", "kept") for i in range(iterations)]
        list(itertools.starmap(run, ids))
    finally:
        drop_roles(latency.PREFIX)


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
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    side = os.environ.get("JITC_INSTRUCTIONS_SIDE")
    if side is not None:
        child(side, iterations)
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
                    str(iterations),
                ],
                cwd=HERE,
                env={**os.environ, "JITC_INSTRUCTIONS_SIDE": name},
                capture_output=True,
                check=True,
            )
            counts[name] = by_library(out)
    (engine, ours), (replay, theirs) = counts["engine"], counts["replay"]
    per = iterations * 1000
    print(
        f"client instructions per kept grant+revoke, n={iterations}: engine {engine / per:.0f}k, "
        f"replay {replay / per:.0f}k, ratio {engine / replay:.2f}x"
    )
    print("where the engine's extra instructions run (k per grant+revoke):")
    extra = {lib: ours[lib] - theirs[lib] for lib in ours | theirs}
    for lib, more in sorted(extra.items(), key=lambda item: -item[1]):
        if abs(more) >= per // 100:  # 10k per grant+revoke or more
            print(f"  {lib:24} {more / per:+8.0f}k   (engine {ours[lib] / per:.0f}k)")


if __name__ == "__main__":
    main()
