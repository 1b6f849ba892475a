"""Cold import of `core` with the PostgreSQL template vs. `import pydantic`. The template's
driver (psycopg) loads only when a plan is made or a connection opened, so it is a case apart.

Each sample is a fresh interpreter (`python -c`; .pyc files already compiled) that times its
own imports with time.perf_counter and reports its peak RSS. The peak is VmHWM from
/proc/self/status: resource.getrusage's ru_maxrss is printed too but not used, because Linux
carries the parent's high-water mark across fork+exec, so every child reported this script's RSS.
The cases alternate, so machine noise hits them alike; figures are medians.

    python bench/bench_import.py [samples]
"""

from __future__ import annotations

import json
import subprocess
import sys

from _common import machine, median

PROBE = """
import json, re, resource, time
start = time.perf_counter()
{code}
took = time.perf_counter() - start
hwm = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)
print(json.dumps([took, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, int(hwm)]))
"""
CASES = {
    "baseline (empty)": "pass",
    "import pydantic": "import pydantic",
    "pydantic BaseModel": "from pydantic import BaseModel",
    "core + PostgreSQL template": (
        "import jitc.engine, core.catalog, core.messages, core.local\n"
        "from jitc.templates import get_template\n"
        "get_template('postgresql')"
    ),
    "... + psycopg (what a worker loads)": (
        "import jitc.engine, core.catalog, core.messages, core.local\n"
        "from jitc.templates import get_template\n"
        "get_template('postgresql')\n"
        "import jitc.templates.postgresql_session"
    ),
}


def sample(code: str) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code)], capture_output=True, text=True, check=True
    ).stdout
    took, _maxrss_kib, hwm_kib = json.loads(out)
    return float(took), float(hwm_kib) / 1024


def main() -> None:
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    print(machine())
    times: dict[str, list[float]] = {name: [] for name in CASES}
    rss: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(samples + 1):  # the first round only warms the file cache
        for name, code in CASES.items():
            took, mib = sample(code)
            times[name].append(took)
            rss[name].append(mib)
    ref_t, ref_m = median(times["import pydantic"][1:]), median(rss["import pydantic"][1:])
    for name in CASES:
        t, m = median(times[name][1:]), median(rss[name][1:])
        print(
            f"{name:28s} {t * 1e3:7.1f} ms ({t / ref_t:5.2f}x pydantic)  "
            f"peak RSS {m:6.1f} MiB ({m / ref_m:4.2f}x)"
        )
    print(f"median of {samples} fresh interpreters each")


if __name__ == "__main__":
    main()
