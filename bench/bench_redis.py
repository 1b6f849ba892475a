"""Redis: grant+revoke latency through the engine vs. the raw client, and batch throughput.

The floor is raw redis-py sending the template's own planned `ACL SETUSER` (a real SHA-256 in
place of the masked password and the MAC) and `ACL DELUSER`, on the same server in the same
run, interleaved with the engine. Shapes:
  per-op:  the grant and the revoke each in their own batch (own connection), as a queue
           delivers them;
  shared:  both on one connection (engine: one execute_batch of both).
Goal: engine / floor <= 1.3. Then N grants in one batch (engine) vs. the floor's N `ACL SETUSER`
on one connection, and the sweep of those N: grants and revokes per second.

    python bench/bench_redis.py [iterations] [batch size]
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.local import MemorySink, NullScheduler
from jitc.messages import Work, parse_request
from jitc.models import AccessRequest, utcnow
from jitc.sealing import box_keypair
from jitc.secrets import EnvSecretStore, SecretStores

INTEGRATION, PREFIX, KEYS = "bench-redis", "benchr-", "benchr:*"
PUBLIC_KEY = box_keypair()[1]
LABEL_KEY = secrets.token_urlsafe(32)


def make_engine(clock: Any = utcnow) -> Engine:
    doc = {
        "connector": {"label_key": "mem:label"},
        "integrations": {
            INTEGRATION: {
                "kind": "redis",
                "connection": {
                    "host": "127.0.0.1",
                    "tls": False,
                    "user_prefix": PREFIX,
                    "acl_save": "never",  # the shared server has no ACL file
                },
                "max_duration": "8h",
                "permissions": {"read-only": {"template": "read-only", "resources": [KEYS]}},
            }
        },
    }
    stores = SecretStores({"mem": EnvSecretStore({"label": LABEL_KEY})})
    return Engine(parse_catalog(doc), stores, NullScheduler(), MemorySink(), clock=clock)


def grant(request_id: str, duration: str = "1h") -> AccessRequest:
    return parse_request(
        json.dumps(
            {
                "request_id": request_id,
                "action": "grant",
                "integration": INTEGRATION,
                "permission": "read-only",
                "resources": [KEYS],
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


def connect() -> redis.Redis:
    # The same client settings as the template's session.
    return redis.Redis(
        host="127.0.0.1", port=6379, decode_responses=True, protocol=2, client_name="jit-floor"
    )


def acl(client: redis.Redis, *args: str) -> Any:
    command: Any = client.execute_command
    return command("ACL", *args)


def floor_rules(engine: Engine, request_id: str) -> tuple[str, list[str]]:
    """The template's plan for this grant, with a real password hash and a stand-in MAC."""
    (text,) = engine.plan(grant(request_id)).statements
    parts = text.split()
    password = secrets.token_urlsafe(24)
    digest = hashlib.sha256(password.encode()).hexdigest()
    rules = [p.replace("********", digest if p.startswith("#") else "M" * 43) for p in parts[3:]]
    return parts[2], rules


def cleanup(client: redis.Redis) -> None:
    names = [n for n in acl(client, "USERS") if n.startswith(PREFIX)]
    if names:
        acl(client, "DELUSER", *names)


def machine(client: redis.Redis) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    version = client.info("server")["redis_version"]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{now}; nproc {nproc}; CPU {cpu}; Redis {version} on 127.0.0.1:6379; "
        f"Python {platform.python_version()}; redis-py {redis.__version__}"
    )


def latency(iterations: int) -> None:
    engine = make_engine()
    floors: dict[str, list[float]] = {"per-op": [], "shared": []}
    ours: dict[str, list[float]] = {"per-op": [], "shared": []}
    for i in range(iterations + 3):
        for shape in ("per-op", "shared"):
            rid = f"lat-{shape}-{i}-{secrets.token_hex(3)}"
            name, rules = floor_rules(engine, rid)
            start = time.perf_counter()
            if shape == "per-op":
                c = connect()
                acl(c, "SETUSER", name, *rules)
                c.close()
                c = connect()
                acl(c, "DELUSER", name)
                c.close()
            else:
                c = connect()
                acl(c, "SETUSER", name, *rules)
                acl(c, "DELUSER", name)
                c.close()
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
    root = connect()
    rules = [floor_rules(engine, f"fl-{i}") for i in range(size)]
    start = time.perf_counter()
    for name, r in rules:
        acl(root, "SETUSER", name, *r)
    floor_grant = time.perf_counter() - start
    start = time.perf_counter()
    for name, _ in rules:
        acl(root, "DELUSER", name)
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
        f"{size / floor_revoke:.0f}/s DELUSER one by one (ratio {swept / floor_revoke:.2f}x)"
    )
    root.close()


def server_costs(client: redis.Redis, n: int = 300) -> None:
    """What the server charges for each command the template sends, on its own: reading an
    existing user (`ACL GETUSER`) makes Redis 7.0 describe its command rules."""
    engine = make_engine()
    name, rules = floor_rules(engine, "costs")
    acl(client, "SETUSER", name, *rules)

    def median_ms(*command: str) -> float:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            client.execute_command(*command)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    print(
        f"server, one command per round trip: PING {median_ms('PING'):.3f} ms, "
        f"ACL GETUSER of a missing user {median_ms('ACL', 'GETUSER', 'nobody-here'):.3f} ms, "
        f"of a granted user {median_ms('ACL', 'GETUSER', name):.3f} ms, "
        f"ACL SETUSER {median_ms('ACL', 'SETUSER', name, *rules):.3f} ms"
    )
    acl(client, "DELUSER", name)


def main() -> None:
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    root = connect()
    print(machine(root))
    cleanup(root)
    try:
        server_costs(root)
        latency(iterations)
        batch(size)
    finally:
        cleanup(root)
        root.close()


if __name__ == "__main__":
    main()
