"""Two checkouts' AWS cold starts, alternating within each round in one environment.

bench_aws_coldstart.py compares the handlers with a baseline in one checkout; on a shared
machine two of its runs differ by more than a change does. This runs its cases (its probe, its
Lambda environment) for checkout A and checkout B in turn, each with its own `.venv`, and
reports wall and CPU time (CPU less an empty interpreter's) as ratios to `import boto3, pydantic`.

    python bench/bench_aws_coldstart_paired.py CHECKOUT_A CHECKOUT_B [rounds] [--plugins-on]
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_aws_coldstart import CATALOG, INIT, PROBE, lambda_env


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    checkouts = {"A": Path(args[0]).resolve(), "B": Path(args[1]).resolve()}
    rounds = int(args[2]) if len(args) > 2 else 10
    with tempfile.TemporaryDirectory() as folder:
        catalog = Path(folder) / "catalog.json"
        catalog.write_text(CATALOG)
        env = lambda_env(catalog)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if "--plugins-on" in sys.argv:
            env.pop("PYDANTIC_DISABLE_PLUGINS", None)
        cases = [("empty", "B", "pass"), ("baseline", "B", "import boto3, pydantic")]
        cases.append(("  + psycopg", "B", "import boto3, pydantic, psycopg"))
        cases += [(name, side, INIT[name]) for name in INIT for side in checkouts]

        def run(side: str, code: str) -> tuple[float, float]:
            root = checkouts[side]
            before = cpu_of_children()
            out = subprocess.run(
                [str(root / ".venv/bin/python"), "-c", PROBE.format(root=str(root), code=code)],
                capture_output=True, text=True, check=True, cwd=root,
                env={**env, "LAMBDA_TASK_ROOT": str(root)},
            )  # fmt: skip
            return float(json.loads(out.stdout.strip().splitlines()[-1])[0]), (
                cpu_of_children() - before
            )

        for _, side, code in cases:  # bytecode and page cache
            run(side, code)
        wall: dict[tuple[str, str], list[float]] = {(n, s): [] for n, s, _ in cases}
        cpu: dict[tuple[str, str], list[float]] = {(n, s): [] for n, s, _ in cases}
        loads = []
        for _ in range(rounds):
            loads.append(os.getloadavg()[0])
            for name, side, code in cases:
                took, used = run(side, code)
                wall[(name, side)].append(took)
                cpu[(name, side)].append(used)
    med = statistics.median
    empty = med(cpu[("empty", "B")])
    base_w, base_c = med(wall[("baseline", "B")]), med(cpu[("baseline", "B")]) - empty
    print(f"A: {checkouts['A']}  B: {checkouts['B']}")
    print(f"{rounds} rounds, load average {min(loads):.1f}-{max(loads):.1f}")
    print(f"{'case':18} {'wall ms':>8} {'ratio':>6} {'cpu ms':>7} {'ratio':>6}")
    for name, side, _ in cases[1:]:
        w, c = med(wall[(name, side)]), med(cpu[(name, side)]) - empty
        label = name if name.startswith(("baseline", " ")) else f"{name} ({side})"
        print(f"{label:18} {w * 1000:8.1f} {w / base_w:5.2f}x {c * 1000:7.1f} {c / base_c:5.2f}x")


if __name__ == "__main__":
    main()
