"""Cold start of the Azure app's `function_app.py` (import + function indexing, and then the
first invocation's initialisation) vs. `import pydantic` plus the Azure clients the app needs,
in fresh interpreters.

A sample is a fresh `python -c` (bytecode already compiled) run from the app root as the host
would (`function_app.py` loaded by path, `jitc` importable), timing its own work with
time.perf_counter. "index" is what the host does before the first invocation: import the entry
file and list its functions with their bindings. "first call" adds what the worker's first
invocation builds before its first network call: the catalog read and validated, the managed
identity credential, the queue client, the engine, the catalog's template drivers and the
PostgreSQL driver. Peak memory is VmHWM from /proc/self/status. Cases alternate so noise hits
them alike; figures are medians. CPU time (time.process_time, all
threads) is reported beside wall time: on a loaded machine wall time mostly measures waiting
for a core, CPU time the work.

    python bench/bench_azure_coldstart.py [samples]
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, re, sys, time
start, cpu = time.perf_counter(), time.process_time()
{code}
took, used = time.perf_counter() - start, time.process_time() - cpu
hwm = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)
print(json.dumps([took, int(hwm), used]))
"""
APP = str(ROOT / "azure" / "function_app.py")
LOAD = (
    "import importlib.util\n"
    f"spec = importlib.util.spec_from_file_location('function_app', {APP!r})\n"
    "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
    "[f.get_function_json() for f in module.app.get_functions()]\n"
)
BASELINE = (
    "import pydantic, azure.functions, azure.identity, azure.keyvault.secrets, azure.storage.queue"
)
CASES = {
    "import pydantic + Azure clients": BASELINE,
    # The first call also loads the catalog's database driver; so does this baseline.
    "  + psycopg (the target's driver)": BASELINE + ", psycopg",
    "function_app.py: index": LOAD,
    "function_app.py: index + first call": LOAD
    + "from jitc.azure import runtime\nengine = runtime.engine()\nruntime.queue()\n"
    "[i.template for i in engine.catalog.integrations.values()]\nimport psycopg\n",
}
CATALOG = {
    "connector": {"label_key": "azure-kv:https://benchkv.vault.azure.net/secrets/label"},
    "integrations": {
        "orders-db": {
            "kind": "postgresql",
            "connection": {"host": "127.0.0.1", "dbname": "test", "user": "postgres"},
            "credentials": "azure-kv:https://benchkv.vault.azure.net/secrets/pg#password",
            "permissions": {"read-only": {"template": "read-only", "resources": ["public"]}},
        }
    },
}


def app_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JITC_", "AZURE_"))}
    # The warm-up writes the connector's bytecode, as pip did the libraries' (see the AWS
    # benchmark).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        {
            "JITC_CATALOG": json.dumps(CATALOG),
            "JITC_QUEUE_NAME": "bench-requests",
            "JitcQueue__queueServiceUri": "https://benchjitc.queue.core.windows.net/",
            "IDENTITY_ENDPOINT": "http://127.0.0.1:9/msi/token",
            "IDENTITY_HEADER": "bench",
            "AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000000",
            "PYDANTIC_DISABLE_PLUGINS": "__all__",
        }
    )
    return env


def sample(code: str, env: dict[str, str]) -> tuple[float, int, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code)],
        capture_output=True, text=True, check=True, env=env, cwd="/tmp",
    )  # fmt: skip
    took, hwm, used = json.loads(out.stdout.strip().splitlines()[-1])
    return float(took), int(hwm), float(used)


def main() -> None:
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    env = app_env()
    for code in CASES.values():  # warm the bytecode and the page cache
        sample(code, env)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    peaks: dict[str, list[int]] = {name: [] for name in CASES}
    cpus: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(samples):
        for name, code in CASES.items():
            took, hwm, used = sample(code, env)
            cpus[name].append(used)
            times[name].append(took)
            peaks[name].append(hwm)
    base = "import pydantic + Azure clients"
    base_t, base_m = statistics.median(times[base]), statistics.median(peaks[base])
    base_c = statistics.median(cpus[base])
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    print(f"machine: {os.cpu_count()} cpu {cpu!r}, Python {platform.python_version()}")
    print(f"samples: {samples} per case, medians")
    print(
        f"{'case':38} {'time ms':>8} {'ratio':>6} {'cpu ms':>7} {'ratio':>6} "
        f"{'peak MiB':>9} {'ratio':>6}"
    )
    driver = "  + psycopg (the target's driver)"
    for name in CASES:
        t, m = statistics.median(times[name]), statistics.median(peaks[name])
        u = statistics.median(cpus[name])
        print(
            f"{name:38} {t * 1000:8.1f} {t / base_t:5.2f}x {u * 1000:7.1f} {u / base_c:5.2f}x "
            f"{m / 1024:9.1f} {m / base_m:5.2f}x"
        )
    first = "function_app.py: index + first call"
    t, m = statistics.median(times[first]), statistics.median(peaks[first])
    dt_, dm = statistics.median(times[driver]), statistics.median(peaks[driver])
    print(f"first call vs. clients + psycopg: time {t / dt_:.2f}x, peak {m / dm:.2f}x")


if __name__ == "__main__":
    main()
