"""Cold start from the AWS zip itself, as Lambda runs it, with and without its bytecode.

`bench_aws_coldstart.py` runs the handlers from the development environment, where pip compiled
every library's bytecode. Lambda runs the unpacked zip from a read-only folder: a module without
its .pyc in the zip is compiled at every cold start, and the result is never kept. This unpacks
the zip `jitc package aws` built twice, as built and with every .pyc removed, and runs each in
fresh interpreters that see only that folder and the standard library (`python -S`, nothing
written: PYTHONDONTWRITEBYTECODE), with bench_aws_coldstart.py's Lambda environment and cases.
Cases alternate; figures are medians, of wall and of CPU time (see bench_aws_coldstart.py). The
baseline imports boto3 and pydantic from the same folder, so it pays the same compilation when
the zip has no bytecode.

    python -m jitc.packaging aws --out dist && python bench/bench_aws_package_coldstart.py \
        dist/jit-connector-aws.zip [samples]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_aws_coldstart import CATALOG, INIT, lambda_env

PROBE = """
import json, re, sys, time
sys.path[:0] = [{folder!r}]
start, cpu = time.perf_counter(), time.process_time()
{code}
took, used = time.perf_counter() - start, time.process_time() - cpu
hwm = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)
print(json.dumps([took, int(hwm), used]))
"""
CASES = {"import boto3, pydantic": "import boto3, pydantic", **INIT}


def sample(folder: Path, code: str, env: dict[str, str]) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-S", "-c", PROBE.format(folder=str(folder), code=code)],
        capture_output=True, text=True, check=True, env=env, cwd=folder,
    )  # fmt: skip
    took, _, used = json.loads(out.stdout.strip().splitlines()[-1])
    return float(took), float(used)


def main() -> None:
    package = Path(sys.argv[1])
    samples = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        folders = {"with .pyc": root / "pyc", "sources only": root / "src"}
        for folder in folders.values():
            zipfile.ZipFile(package).extractall(folder)
        for path in list(folders["sources only"].rglob("*.pyc")):
            path.unlink()
        if not list(folders["with .pyc"].rglob("*.pyc")):
            raise SystemExit(f"{package} holds no bytecode: build it with Python 3.11")
        catalog = root / "catalog.json"
        catalog.write_text(CATALOG)
        env = {**lambda_env(catalog), "PYTHONDONTWRITEBYTECODE": "1"}
        for folder in folders.values():  # the page cache, not the bytecode: nothing is written
            for code in CASES.values():
                sample(folder, code, env)
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(samples):
            for label, folder in folders.items():
                for name, code in CASES.items():
                    times.setdefault((label, name), []).append(sample(folder, code, env))
    print(f"samples: {samples} per case, medians; load average {os.getloadavg()[0]:.1f}")
    print(f"{'zip':13} {'case':24} {'time ms':>8} {'ratio':>6} {'cpu ms':>7} {'ratio':>6}")
    for label in folders:
        base = times[(label, "import boto3, pydantic")]
        base_t = statistics.median(t for t, _ in base)
        base_c = statistics.median(c for _, c in base)
        for name in CASES:
            took = statistics.median(t for t, _ in times[(label, name)])
            used = statistics.median(c for _, c in times[(label, name)])
            print(
                f"{label:13} {name:24} {took * 1000:8.1f} {took / base_t:5.2f}x "
                f"{used * 1000:7.1f} {used / base_c:5.2f}x"
            )


if __name__ == "__main__":
    main()
