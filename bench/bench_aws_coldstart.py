"""Cold start of each AWS handler module vs. `import boto3, pydantic`, in fresh interpreters.

A sample is a fresh `python -c` (bytecode already compiled) that, with the environment a Lambda
function of the module's default configuration has (AWS_LAMBDA_FUNCTION_NAME set, tracing off),
times its own work with time.perf_counter: importing the handler module and the first call's
initialisation (catalog read and validated, boto3 clients made, the catalog's template drivers
imported, and for the worker and sweep the database driver their first call connects with:
what the first invocation does before its first AWS call). Peak memory is VmHWM from
/proc/self/status (ru_maxrss would report the parent's mark, carried across fork+exec). Cases
alternate so noise hits them alike; figures are medians. CPU time (time.process_time, all
threads) is reported beside wall time: on a loaded machine wall time mostly measures waiting
for a core, CPU time the work.

    python bench/bench_aws_coldstart.py [samples]
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, re, sys, time
sys.path.insert(0, {root!r})
start, cpu = time.perf_counter(), time.process_time()
{code}
took, used = time.perf_counter() - start, time.process_time() - cpu
hwm = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)
print(json.dumps([took, int(hwm), used]))
"""
INIT = {
    "intake": "import jitc.aws.intake\nfrom jitc.aws import runtime\nruntime.intake()",
    # The worker and the sweep connect to the catalog's PostgreSQL on their first call, so its
    # driver is part of their cold start (the template imports it only then).
    "worker": (
        "import jitc.aws.worker\nfrom jitc.aws import runtime\nengine = runtime.engine()\n"
        "[i.template for i in engine.catalog.integrations.values()]\nimport psycopg"
    ),
    "sweep": (
        "import jitc.aws.sweep\nfrom jitc.aws import runtime\nengine = runtime.engine()\n"
        "[i.template for i in engine.catalog.integrations.values()]\nimport psycopg"
    ),
}
CASES = {
    "import boto3, pydantic": "import boto3, pydantic",
    # The worker's and the sweep's first call needs the target's driver; a second baseline with
    # it shows what the connector adds on top (ratios are still to the first line).
    "  + psycopg (the target's driver)": "import boto3, pydantic, psycopg",
    **INIT,
}
# The same handlers configured as before tracing became optional and the catalog JSON: X-Ray
# SDK imported and the catalog read as YAML (the worker's Powertools batch is gone in both).
BEFORE = {"POWERTOOLS_TRACE_DISABLED": "false", "JITC_CATALOG_PATH": "yaml"}
CASES.update({f"{name} (tracing on, YAML)": code for name, code in INIT.items()})
# As Terraform ships it: the catalog as JSON.
CATALOG = """{"connector": {"label_key": "aws-sm:jitc/label#key"},
  "integrations": {"orders-db": {"kind": "postgresql",
  "connection": {"host": "127.0.0.1", "dbname": "test", "user": "postgres"},
  "credentials": "aws-sm:jitc/pg-admin#password",
  "permissions": {"read-only": {"template": "read-only", "resources": ["public"]}}}}}"""


def lambda_env(catalog: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "JITC_", "POWERTOOLS_"))
    }
    # The warm-up writes the connector's bytecode, as pip did the libraries': with
    # PYTHONDONTWRITEBYTECODE inherited, every sample compiled the connector's source again
    # (~50 ms) and none of the baseline's.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        {
            "AWS_LAMBDA_FUNCTION_NAME": "jitc-bench",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "LAMBDA_TASK_ROOT": str(ROOT),
            "AWS_REGION": "eu-west-1",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_SESSION_TOKEN": "bench",
            "JITC_CATALOG_PATH": str(catalog),
            "JITC_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/jitc-requests.fifo",
            "JITC_QUEUE_ARN": "arn:aws:sqs:eu-west-1:123456789012:jitc-requests.fifo",
            "JITC_SCHEDULE_GROUP": "jitc-expiry",
            "JITC_SCHEDULER_ROLE_ARN": "arn:aws:iam::123456789012:role/jitc-scheduler",
            # The module's default: tracing off, so no X-Ray SDK (set `tracing = true` for it).
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_SERVICE_NAME": "jit-connector",
            "POWERTOOLS_METRICS_NAMESPACE": "JitConnector",
            "PYDANTIC_DISABLE_PLUGINS": "__all__",
        }
    )
    return env


def env_for(name: str, env: dict[str, str], yaml_catalog: Path) -> dict[str, str]:
    if not name.endswith("(tracing on, YAML)"):
        return env
    changed = {**env, **BEFORE}
    changed["JITC_CATALOG_PATH"] = str(yaml_catalog)
    return changed


def sample(code: str, env: dict[str, str]) -> tuple[float, int, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(root=str(ROOT), code=code)],
        capture_output=True, text=True, check=True, env=env, cwd=ROOT,
    )  # fmt: skip
    took, hwm, used = json.loads(out.stdout.strip().splitlines()[-1])
    return float(took), int(hwm), float(used)


def main() -> None:
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    with tempfile.TemporaryDirectory() as folder:
        catalog = Path(folder) / "catalog.json"
        catalog.write_text(CATALOG)
        yaml_catalog = Path(folder) / "catalog.yaml"
        yaml_catalog.write_text(json.dumps(json.loads(CATALOG), indent=1))  # JSON is YAML
        env = lambda_env(catalog)
        for name, code in CASES.items():  # warm the bytecode and the page cache
            sample(code, env_for(name, env, yaml_catalog))
        times: dict[str, list[float]] = {name: [] for name in CASES}
        peaks: dict[str, list[int]] = {name: [] for name in CASES}
        cpus: dict[str, list[float]] = {name: [] for name in CASES}
        for _ in range(samples):
            for name, code in CASES.items():
                took, hwm, used = sample(code, env_for(name, env, yaml_catalog))
                cpus[name].append(used)
                times[name].append(took)
                peaks[name].append(hwm)
    base_t = statistics.median(times["import boto3, pydantic"])
    base_m = statistics.median(peaks["import boto3, pydantic"])
    base_c = statistics.median(cpus["import boto3, pydantic"])
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    print(
        f"machine: {platform.node()} {os.cpu_count()} cpu {cpu!r}, "
        f"Python {platform.python_version()}"
    )
    print(f"samples: {samples} per case, medians")
    print(
        f"{'case':34} {'time ms':>8} {'ratio':>6} {'cpu ms':>7} {'ratio':>6} "
        f"{'peak MiB':>9} {'ratio':>6}"
    )
    for name in CASES:
        t = statistics.median(times[name])
        m = statistics.median(peaks[name])
        u = statistics.median(cpus[name])
        print(
            f"{name:34} {t * 1000:8.1f} {t / base_t:5.2f}x {u * 1000:7.1f} {u / base_c:5.2f}x "
            f"{m / 1024:9.1f} {m / base_m:5.2f}x"
        )


if __name__ == "__main__":
    main()
