"""RabbitMQ: grant+revoke latency through the engine vs. the raw client, and batch throughput.

The floor is raw httpx sending the template's own planned management API calls (a real salted
hash in place of the masked one and a stand-in MAC) and `DELETE /api/users/<user>`, on the same
broker in the same run, interleaved with the engine. Shapes:
  per-op:  the grant and the revoke each in their own batch (own HTTP client), as a queue
           delivers them;
  shared:  both on one HTTP client (engine: one execute_batch of both).
Goal: engine / floor <= 1.3. Then N grants in one batch (engine) vs. the floor's same calls on
one client, and the sweep of those N: grants and revokes per second.

    python bench/bench_rabbitmq.py [iterations] [batch size]
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.local import MemorySink, NullScheduler
from jitc.messages import Work, parse_request
from jitc.models import AccessRequest, utcnow
from jitc.sealing import box_keypair
from jitc.secrets import EnvSecretStore, SecretStores
from jitc.templates.rabbitmq_session import password_hash

API = "http://127.0.0.1:15672"
INTEGRATION, PREFIX, VHOST = "bench-rabbitmq", "benchq-", "benchq"
ADMIN, ADMIN_PASSWORD = "benchq-admin-x", secrets.token_urlsafe(16)
PUBLIC_KEY = box_keypair()[1]
LABEL_KEY = secrets.token_urlsafe(32)


def make_engine(clock: Any = utcnow) -> Engine:
    doc = {
        "connector": {"label_key": "mem:label"},
        "integrations": {
            INTEGRATION: {
                "kind": "rabbitmq",
                "connection": {"api_url": API, "user": ADMIN, "user_prefix": PREFIX},
                "credentials": "mem:admin",
                "max_duration": "8h",
                "permissions": {"read-only": {"template": "read-only", "resources": [VHOST]}},
            }
        },
    }
    stores = SecretStores({"mem": EnvSecretStore({"label": LABEL_KEY, "admin": ADMIN_PASSWORD})})
    return Engine(parse_catalog(doc), stores, NullScheduler(), MemorySink(), clock=clock)


def grant(request_id: str, duration: str = "1h") -> AccessRequest:
    return parse_request(
        json.dumps(
            {
                "request_id": request_id,
                "action": "grant",
                "integration": INTEGRATION,
                "permission": "read-only",
                "resources": [VHOST],
                "duration": duration,
                "identity": {"email": "bench@example.com", "public_key": PUBLIC_KEY},
            }
        )
    )


def revoke(request_id: str) -> AccessRequest:
    return parse_request(
        json.dumps(
            {
                "request_id": f"r-{request_id}",
                "action": "revoke",
                "integration": INTEGRATION,
                "grant_id": grant(request_id).target_grant_id,
            }
        )
    )


def client() -> httpx.Client:
    # The same client settings as the template's session.
    return httpx.Client(base_url=API, auth=(ADMIN, ADMIN_PASSWORD), timeout=5.0)


def floor_calls(engine: Engine, request_id: str) -> tuple[str, list[tuple[str, str, Any]]]:
    """The template's plan for this grant, with a real password hash and a stand-in MAC."""
    calls = []
    for text in engine.plan(grant(request_id)).statements:
        method, path, body = text.rstrip(";").split(" ", 2)
        doc = json.loads(body)
        if "password_hash" in doc:
            doc["password_hash"] = password_hash(secrets.token_urlsafe(24))
            doc["tags"] = doc["tags"].replace("********", "M" * 43)
        calls.append((method, path, doc))
    return calls[0][1].rsplit("/", 1)[1], calls


def cleanup(root: httpx.Client) -> None:
    for user in root.get("/api/users").json():
        if user["name"].startswith(PREFIX) and user["name"] != ADMIN:
            root.delete(f"/api/users/{user['name']}")


def machine(root: httpx.Client) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    overview = root.get("/api/overview").json()
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{now}; nproc {nproc}; CPU {cpu}; RabbitMQ {overview['rabbitmq_version']} "
        f"(Erlang {overview['erlang_version']}), management API on 127.0.0.1:15672; "
        f"Python {platform.python_version()}; httpx {httpx.__version__}"
    )


def run_floor(c: httpx.Client, calls: list[tuple[str, str, Any]]) -> None:
    for method, path, body in calls:
        c.request(method, path, json=body).raise_for_status()


def latency(iterations: int) -> None:
    engine = make_engine()
    floors: dict[str, list[float]] = {"per-op": [], "shared": []}
    ours: dict[str, list[float]] = {"per-op": [], "shared": []}
    for i in range(iterations + 3):
        for shape in ("per-op", "shared"):
            name, calls = floor_calls(engine, f"lat-{shape}-{i}-{secrets.token_hex(3)}")
            start = time.perf_counter()
            if shape == "per-op":
                with client() as c:
                    run_floor(c, calls)
                with client() as c:
                    c.delete(f"/api/users/{name}").raise_for_status()
            else:
                with client() as c:
                    run_floor(c, calls)
                    c.delete(f"/api/users/{name}").raise_for_status()
            floor = time.perf_counter() - start

            rid = f"lat-e-{shape}-{i}-{secrets.token_hex(3)}"
            start = time.perf_counter()
            if shape == "per-op":
                outcomes = [engine.execute(grant(rid)), engine.execute(revoke(rid))]
            else:
                outcomes = engine.execute_batch(
                    [Work(grant(rid), utcnow()), Work(revoke(rid), utcnow())]
                )
            took = time.perf_counter() - start
            assert [o.status for o in outcomes] == ["granted", "revoked"], outcomes
            if i >= 3:
                floors[shape].append(floor)
                ours[shape].append(took)
    for shape in ("per-op", "shared"):
        f, e = statistics.median(floors[shape]), statistics.median(ours[shape])
        pairs = statistics.median(a / b for a, b in zip(ours[shape], floors[shape], strict=True))
        print(
            f"{shape}: floor {f * 1000:.2f} ms, engine {e * 1000:.2f} ms, ratio {e / f:.2f}x "
            f"(median of pairwise ratios {pairs:.2f}x), n={iterations}; goal <= 1.3x"
        )


def batch(size: int) -> None:
    clock = [utcnow()]
    engine = make_engine(lambda: clock[0])
    floors = [floor_calls(engine, f"fl-{i}") for i in range(size)]
    with client() as c:
        start = time.perf_counter()
        for _, calls in floors:
            run_floor(c, calls)
        floor_grant = time.perf_counter() - start
        start = time.perf_counter()
        for name, _ in floors:
            c.delete(f"/api/users/{name}").raise_for_status()
        floor_revoke = time.perf_counter() - start

    works = [Work(grant(f"b-{i}-{secrets.token_hex(3)}", "5m"), clock[0]) for i in range(size)]
    start = time.perf_counter()
    outcomes = engine.execute_batch(works)
    took = time.perf_counter() - start
    assert all(o.status == "granted" for o in outcomes)
    clock[0] += dt.timedelta(minutes=6)
    start = time.perf_counter()
    report = engine.sweep()
    swept = time.perf_counter() - start
    assert len(report.revoked) == size and report.ok, report
    print(
        f"batch of {size}: engine {size / took:.0f} grants/s, floor {size / floor_grant:.0f}/s "
        f"(ratio {took / floor_grant:.2f}x); sweep {size / swept:.0f} revokes/s, floor "
        f"{size / floor_revoke:.0f}/s DELETE one by one (ratio {swept / floor_revoke:.2f}x)"
    )


def main() -> None:
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    root = httpx.Client(base_url=API, auth=("guest", "guest"), timeout=10)
    root.put(f"/api/vhosts/{VHOST}").raise_for_status()
    root.put(
        f"/api/users/{ADMIN}", json={"password": ADMIN_PASSWORD, "tags": "administrator"}
    ).raise_for_status()
    print(machine(root))
    cleanup(root)
    try:
        latency(iterations)
        batch(size)
    finally:
        cleanup(root)
        root.delete(f"/api/users/{ADMIN}")
        root.delete(f"/api/vhosts/{VHOST}")
        root.close()


if __name__ == "__main__":
    main()
