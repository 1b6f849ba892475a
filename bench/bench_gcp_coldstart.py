"""Cold start of each deployed GCP entry point vs. importing pydantic and the Google clients it
needs, in fresh interpreters, same run.

A sample is a fresh `python -c` (bytecode already compiled) with the environment Terraform
gives the function, timing its own work: functions-framework loading `gcp/main.py` (the file
`jitc package gcp` puts at the source root) and serving the first request through the real
Flask app: a signed request for the intake (a Cloud Task is created), an expiry task with the
invoker's OIDC token for the worker (Secret Manager read, PostgreSQL revoke), a scheduled call
for the sweep. The "(gcp_iam)" cases are the worker and the sweep of a catalog holding only a
GCP IAM integration: the worker's first request is the expiry of a grant whose conditional
binding the setup wrote into the loopback project's policy (as the template writes it,
untimed), and the sweep's finds one such grant past its expiry; each revokes it for real (a
tombstone object created, the policy read, written and read back), and the bench checks
afterwards that the binding is gone and the tombstone is there. They need no database driver,
only pydantic and Google's clients: "+ gcp_iam clients" adds to the baseline the two that the
template uses (the discovery client for the policies, google-cloud-storage for the tombstones).
The request is handed to the app as a WSGI server hands it (an environ and start_response), not
through Flask's test client, whose imports (flask.testing, click.testing and the pdb it pulls
in) and request building no deployed function pays; every case is driven the same way. The
Google APIs are the loopback GCP of tests/gcp. Peak memory is VmHWM from /proc/self/status.
Cases alternate so noise hits them alike; figures are medians. CPU time (time.process_time, all
threads) is reported beside wall time: on a loaded machine wall time mostly measures waiting
for a core, CPU time the work (the servers' work is in neither).

Each function finds its credentials in a service-account key file by default. With
`--metadata` it finds them as on Cloud Run instead: from a loopback metadata server (one per
function's service account) that hands out access tokens the loopback GCP accepts; no key is
parsed, and the first Google call fetches a token from that server.

With `--callgrind` each case runs once (after the warm-up) under `valgrind --tool=callgrind`
and the whole process's instructions are counted instead: the same code, inputs and server
answers give the same count whatever else runs on the machine, so a change can be measured
before/after on a loaded machine. PYTHONHASHSEED is fixed for those runs. `--keep=DIR` keeps
the callgrind files (for `callgrind_annotate`); `--cases=intake,worker-gcp_iam` runs only those
(named as in the callgrind files; the baseline always runs).

`import pydantic` loads almost nothing of pydantic 2: its machinery loads at the first use of
`BaseModel`, and the first model a program defines pays for the schema builder. With
`--model` every baseline also defines one model of one field, as any program that uses pydantic
does, so the ratios show what the connector adds over pydantic in use, not over its name.

    python bench/bench_gcp_coldstart.py [samples] [--metadata] [--model]
        [--callgrind [--keep=DIR]]
"""

from __future__ import annotations

import base64
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "gcp"))

from gcpfake import FakeGcp, MetadataServer  # noqa: E402

from jitc.labels import LabelKey  # noqa: E402
from jitc.signing import sign, signing_keypair  # noqa: E402
from jitc.templates.gcp_iam import expression, make_binding  # noqa: E402

PROBE = """
import json, re, sys, time
start, cpu = time.perf_counter(), time.process_time()
{code}
took, used = time.perf_counter() - start, time.process_time() - cpu
hwm = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)
print(json.dumps([took, int(hwm), status, used]), flush=True)
# Ended here, as an instance is not: interpreter shutdown (a full collection over all that is
# not frozen, the baseline's everything) is no part of a cold start, and counted by callgrind
# it made the baseline dearer and every ratio look better than it is.
import os
os._exit(0)
"""
BASELINE = (
    "import pydantic, flask, functions_framework, google.auth, google.cloud.tasks_v2, "
    "google.cloud.secretmanager_v1\nstatus = 0"
)
LAST_IMPORT = "google.cloud.secretmanager_v1"
A_MODEL = "\nclass Model(pydantic.BaseModel):\n    x: int\nstatus"
# The first request is handed to the app as a WSGI server (gunicorn, on Cloud Run) hands it:
# an environ and a start_response, the body read to its end. Flask's test client would add the
# import of flask.testing and click.testing (pdb, cmd, code, glob, shlex...) and its own
# request building to every function's cold start, which no deployed function does.
FIRST = """
import io
import functions_framework
app = functions_framework.create_app(target={target!r}, source={source!r})
request = json.loads({request!r})
body = request["body"].encode()
environ = {{
    "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
    "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8080", "CONTENT_LENGTH": str(len(body)),
    "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
    "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": False,
    "wsgi.run_once": False,
}}
for name, value in request["headers"].items():
    key = name.upper().replace("-", "_")
    environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key] = value
started = []
answer = app(environ, lambda line, headers, exc_info=None: started.append(line))
try:
    b"".join(answer)
finally:
    getattr(answer, "close", lambda: None)()
status = int(started[0].split()[0])
"""
PROJECT = "jitc-bench-gcp"
QUEUE = f"projects/{PROJECT}/locations/europe-west1/queues/jitc-requests"
# The gcp_iam cases: the project whose policy holds the grants, and the tombstones' bucket.
TARGET = "projects/jitc-bench-target"
TOMBSTONES = f"{PROJECT}-jitc-tombstones"
GRANTEE = "user:ana@example.com"
IAM_ROLE = "roles/bigquery.dataViewer"
LABEL_KEY = "label-key-" + "b" * 32




def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    samples = int(args[0]) if args else 9
    flags = sys.argv[1:]
    metadata = "--metadata" in flags
    callgrind = "--callgrind" in flags
    baseline = BASELINE.replace("\nstatus", A_MODEL, 1) if "--model" in flags else BASELINE
    keep = next((Path(f.split("=", 1)[1]) for f in flags if f.startswith("--keep=")), None)
    only = next((f.split("=", 1)[1].split(",") for f in flags if f.startswith("--cases=")), None)
    if callgrind and shutil.which("valgrind") is None:
        sys.exit("valgrind (callgrind) is not installed here")
    fake = FakeGcp(PROJECT)
    servers: dict[str, MetadataServer] = {}
    fake.queues.add(QUEUE)
    folder = Path(tempfile.mkdtemp(prefix="jitc-bench-gcp-"))
    try:
        emails, keys = {}, {}
        for name in ("intake", "worker", "sweep", "invoker"):
            emails[name], info = fake.service_account(f"jitc-{name}")
            keys[name] = folder / f"{name}.json"
            keys[name].write_text(json.dumps(info))
            if metadata and name != "invoker":
                servers[name] = MetadataServer(fake, emails[name])
        secret = fake.add_secret("pg", json.dumps({"password": "bench"}))
        label = fake.add_secret("label", LABEL_KEY)
        for name in ("worker", "sweep"):
            for granted in (secret, label):
                fake.bind(
                    granted, "roles/secretmanager.secretAccessor", f"serviceAccount:{emails[name]}"
                )
        fake.bind(QUEUE, "roles/cloudtasks.enqueuer", f"serviceAccount:{emails['intake']}")
        fake.custom_roles["sched"] = frozenset(
            {"cloudtasks.tasks.create", "cloudtasks.tasks.get", "cloudtasks.tasks.delete"}
        )
        fake.bind(QUEUE, "sched", f"serviceAccount:{emails['worker']}")
        fake.bind(QUEUE, "roles/cloudtasks.taskDeleter", f"serviceAccount:{emails['sweep']}")
        fake.bind(
            f"projects/-/serviceAccounts/{emails['invoker']}",
            "roles/iam.serviceAccountUser",
            f"serviceAccount:{emails['intake']}",
        )
        # The gcp_iam target as the Terraform module sets it up: the worker and the sweep may
        # read and write the target's policy and create and read tombstone objects.
        fake.buckets.add(TOMBSTONES)
        fake.custom_roles["iam_target"] = frozenset(
            {"resourcemanager.projects.getIamPolicy", "resourcemanager.projects.setIamPolicy"}
        )
        fake.custom_roles["tombstones"] = frozenset(
            {"storage.objects.create", "storage.objects.get"}
        )
        for name in ("worker", "sweep"):
            fake.bind(TARGET, "iam_target", f"serviceAccount:{emails[name]}")
            fake.bind(f"buckets/{TOMBSTONES}", "tombstones", f"serviceAccount:{emails[name]}")
        fake.bind(TARGET, IAM_ROLE, "user:neighbour@example.com")
        private, public = signing_keypair()
        catalog = {
            "control_plane": {"keys": {"cp1": public}},
            "connector": {"label_key": f"gcp-sm:{label}/versions/1"},
            "integrations": {"orders-db": {
                "kind": "postgresql",
                "connection": {"host": "127.0.0.1", "dbname": "test", "user": "postgres", "role_prefix": "jbgcp_"},  # noqa: E501
                "credentials": f"gcp-sm:{secret}/versions/latest#password",
                "permissions": {"read-only": {"template": "read-only", "resources": ["public"]}},
            }},
        }  # fmt: skip
        iam_catalog = {
            "connector": catalog["connector"],
            "integrations": {"analytics-iam": {
                "kind": "gcp_iam",
                "connection": {"resources": [TARGET], "allowed_members": ["user:*@example.com"]},
                "permissions": {"viewer": {"role": IAM_ROLE, "resources": [TARGET]}},
            }},
        }  # fmt: skip
        iam_env = {
            "JITC_CATALOG": json.dumps(iam_catalog), "JITC_GCP_TOMBSTONE_BUCKET": TOMBSTONES,
            "JITC_GCP_ENDPOINT_CLOUDRESOURCEMANAGER": fake.url + "/",
            "JITC_STORAGE_ENDPOINT": fake.url,
        }  # fmt: skip
        key = LabelKey.from_secret(LABEL_KEY)

        def plant(grant_id: str, expires_in: float) -> dict[str, object]:
            """A grant's binding as the template's grant writes it (its label MACed with the
            connector's label key), so that the timed request finds a grant to revoke."""
            expires_at = datetime.now(UTC) + timedelta(seconds=expires_in)
            label = {
                "v": 1, "g": grant_id, "i": "analytics-iam", "p": "viewer",
                "x": int(expires_at.timestamp()), "s": "a", "d": "",
            }  # fmt: skip
            binding = make_binding(
                key, TARGET, IAM_ROLE, GRANTEE, grant_id, label, expression(expires_at)
            )
            with fake.lock:
                policy = fake.policies[TARGET]
                policy["bindings"].append(binding)
                policy["version"] = 3
            return binding

        def tombstones() -> int:
            with fake.lock:
                return sum(1 for bucket, _ in fake.objects if bucket == TOMBSTONES)

        urls = {n: f"http://127.0.0.1:9/{n}" for n in ("worker", "sweep")}
        ours = ("JITC_", "GOOGLE_", "GCE_", "K_SERVICE")
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
        # The warm-up writes the connector's bytecode, as pip did the libraries' (see the AWS
        # benchmark).
        base_env.pop("PYTHONDONTWRITEBYTECODE", None)
        base_env.update({
            "JITC_PROJECT": PROJECT, "JITC_QUEUE": QUEUE, "JITC_WORKER_URL": urls["worker"],
            "JITC_SWEEP_URL": urls["sweep"], "JITC_INVOKER_EMAIL": emails["invoker"],
            "JITC_CATALOG": json.dumps(catalog), "JITC_CERTS_URL": f"{fake.url}/oauth2/v1/certs",
            "JITC_TASKS_ENDPOINT": fake.url, "JITC_SECRETS_ENDPOINT": fake.url,
            "PYDANTIC_DISABLE_PLUGINS": "__all__",
        })  # fmt: skip
        source = str(ROOT / "gcp" / "main.py")

        def request_for(name: str, n: int, grant_id: str = "g" + "a" * 24) -> str:
            integration = "analytics-iam" if name.endswith("(gcp_iam)") else "orders-db"
            if name == "intake":
                body = json.dumps(
                    {
                        "request_id": f"bench-{n}-{os.urandom(4).hex()}",
                        "action": "revoke",
                        "integration": "orders-db",
                    }
                )
                headers = {
                    "Content-Type": "application/json",
                    **sign(body.encode(), private, "cp1").headers(),
                }
            else:
                body = (
                    json.dumps({"kind": "expire", "grant_id": grant_id, "integration": integration})
                    if name.startswith("worker")
                    else ""
                )
                url = urls[name.split()[0]]
                headers = {"Authorization": "Bearer " + fake.oidc_token(url, emails["invoker"])}
            return json.dumps({"body": body, "headers": headers})

        # "+ psycopg": the worker's and the sweep's target driver added to the baseline, to show
        # what the connector adds on top of it (ratios are still to the first line).
        cases = [
            "baseline", "baseline + psycopg", "baseline + gcp_iam clients", "intake", "worker",
            "sweep", "worker (gcp_iam)", "sweep (gcp_iam)",
        ]  # fmt: skip
        if only:
            cases = [c for c in cases if c == "baseline" or c in only or slug(c) in only]

        def sample(name: str, n: int, counted: bool = False) -> tuple[float, int, float]:
            env = dict(base_env)
            if name == "baseline":
                code = baseline
            elif name == "baseline + psycopg":
                code = baseline.replace(LAST_IMPORT, f"{LAST_IMPORT}, psycopg", 1)
            elif name == "baseline + gcp_iam clients":
                clients = "googleapiclient.discovery, google.cloud.storage"
                code = baseline.replace(LAST_IMPORT, f"{LAST_IMPORT}, {clients}", 1)
            else:
                function = name.split()[0]
                if metadata:
                    env["GCE_METADATA_HOST"] = env["GCE_METADATA_IP"] = servers[function].host
                    env["K_SERVICE"] = f"jitc-{function}"  # as Cloud Run sets it
                else:
                    env["GOOGLE_APPLICATION_CREDENTIALS"] = str(keys[function])
                grant_id = "g" + base64.b32encode(os.urandom(15)).decode().lower()
                if name.endswith("(gcp_iam)"):
                    env.update(iam_env)
                    # The worker's expiry comes on time; the sweep's grant is past it.
                    binding = plant(grant_id, 3600 if function == "worker" else -60)
                    buried = tombstones()
                request = request_for(name, n, grant_id)
                code = FIRST.format(target=function, source=source, request=request)
            command = [sys.executable, "-c", PROBE.format(code=code)]
            if counted:
                env["PYTHONHASHSEED"] = "0"
                out_file = f"--callgrind-out-file={counts_of(name)}"
                command = ["valgrind", "--tool=callgrind", out_file, *command]
            out = subprocess.run(
                command, capture_output=True, text=True, check=True, env=env, cwd=folder,
            )  # fmt: skip
            took, hwm, status, used = json.loads(out.stdout.strip().splitlines()[-1])
            if not name.startswith("baseline") and status not in (200, 202):
                raise RuntimeError(f"{name}: HTTP {status}\n{out.stdout[-2000:]}")
            if name.endswith("(gcp_iam)"):
                with fake.lock:
                    left = binding in fake.policies[TARGET]["bindings"]
                if left or tombstones() != buried + 1:
                    raise RuntimeError(f"{name}: the grant was not revoked\n{out.stderr[-2000:]}")
            return float(took), int(hwm), float(used)

        def counts_of(name: str) -> Path:
            return (keep or folder) / f"callgrind.{slug(name)}.out"

        for name in cases:
            sample(name, -1)  # warm the bytecode and the page cache
        if callgrind:
            if keep:
                keep.mkdir(parents=True, exist_ok=True)
            for name in cases:
                sample(name, 0, counted=True)
            counted = {name: instructions(counts_of(name)) for name in cases}
            report_instructions(cases, counted, baseline)
            return
        times: dict[str, list[float]] = {n: [] for n in cases}
        peaks: dict[str, list[int]] = {n: [] for n in cases}
        cpus: dict[str, list[float]] = {n: [] for n in cases}
        for n in range(samples):
            for name in cases:
                took, hwm, used = sample(name, n)
                cpus[name].append(used)
                times[name].append(took)
                peaks[name].append(hwm)
    finally:
        for server in servers.values():
            server.close()
        fake.close()
    base_t, base_m = statistics.median(times["baseline"]), statistics.median(peaks["baseline"])
    base_c = statistics.median(cpus["baseline"])
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    python = platform.python_version()
    print(f"machine: {platform.node()} {os.cpu_count()} cpu {cpu!r}, Python {python}")
    print(f"samples: {samples} per case, medians; baseline: {baseline!r}")
    credentials = "metadata server (as on Cloud Run)" if metadata else "service-account key file"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"credentials: {credentials}; load average {load}")
    # The fastest CPU time of each case beside the median: on a shared VM a sample is slowed
    # by what else runs (other tenants, the loopback servers' work billed to it), never sped
    # up, so the least disturbed sample is the closest to the work itself.
    base_f = min(cpus["baseline"])
    print(
        f"{'case':30} {'time ms':>8} {'ratio':>6} {'cpu ms':>7} {'ratio':>6} "
        f"{'cpu min':>8} {'ratio':>6} {'peak MiB':>9} {'ratio':>6}"
    )
    for name in cases:
        t, m = statistics.median(times[name]), statistics.median(peaks[name])
        u, f = statistics.median(cpus[name]), min(cpus[name])
        print(
            f"{name:30} {t * 1000:8.1f} {t / base_t:5.2f}x {u * 1000:7.1f} {u / base_c:5.2f}x "
            f"{f * 1000:8.1f} {f / base_f:5.2f}x {m / 1024:9.1f} {m / base_m:5.2f}x"
        )
    for driver, names in (
        ("baseline + psycopg", ("worker", "sweep")),
        ("baseline + gcp_iam clients", ("worker (gcp_iam)", "sweep (gcp_iam)")),
    ):
        if driver not in cases or not any(name in cases for name in names):
            continue
        with_driver, peak = cpus[driver], statistics.median(peaks[driver])
        print(
            f"against the {driver} (their first request's clients), CPU median / fastest, "
            "peak: "
            + "; ".join(
                f"{name} {statistics.median(cpus[name]) / statistics.median(with_driver):.2f}x"
                f" / {min(cpus[name]) / min(with_driver):.2f}x"
                f", {statistics.median(peaks[name]) / peak:.2f}x"
                for name in names
                if name in cases
            )
        )


def slug(name: str) -> str:
    """A case's name in file names and --cases: "worker (gcp_iam)" is worker-gcp_iam."""
    return re.sub(r"[^a-z0-9_]+", "-", name).strip("-")


def instructions(out: Path) -> int:
    """The process's total instructions, from a callgrind file's `totals:` (or `summary:`)."""
    text = out.read_text()
    found = re.search(r"^totals:\s+(\d+)", text, re.M) or re.search(
        r"^summary:\s+(\d+)", text, re.M
    )
    if not found:
        raise RuntimeError(f"no totals in {out}")
    return int(found.group(1))


def report_instructions(cases: list[str], counts: dict[str, int], baseline: str) -> None:
    print(f"python {platform.python_version()}; baseline: {baseline!r}")
    print(f"{'case':27} {'instructions':>14} {'ratio':>6} {'vs + driver':>12}")
    base, with_pg = counts["baseline"], counts.get("baseline + psycopg")
    with_iam = counts.get("baseline + gcp_iam clients")
    for name in cases:
        n = counts[name]
        to_pg = f"{n / with_pg:11.3f}x" if with_pg and name in ("worker", "sweep") else ""
        if name.endswith("(gcp_iam)") and with_iam:
            to_pg = f"{n / with_iam:11.3f}x"
        print(f"{name:27} {n / 1e6:12,.1f}M {n / base:5.3f}x {to_pg:>12}")


if __name__ == "__main__":
    main()
