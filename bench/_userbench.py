"""Shared by the benchmarks of the one-user-per-grant targets (Redis, RabbitMQ): the engine on a
one-integration catalog, its requests, the machine line, and the latency and batch loops that
time the engine against raw-client floors in the same run, interleaved.

A floor prepares, untimed, what the raw client needs for one request id (its plan, a real
password hash) and returns the timed part, run with a shape:
  per-op:  the grant and the revoke each on its own new connection, as a queue delivers them
           (engine: keep_connection_seconds 0);
  kept:    each its own batch, on a connection kept from the batch before (floor: one
           connection for the whole run; engine: the default, the admin client kept);
  shared:  both on one new connection (engine: one batch of both, nothing kept).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import secrets
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.local import MemorySink, NullScheduler
from jitc.messages import Work, parse_request
from jitc.models import AccessRequest, derive_grant_id, utcnow
from jitc.sealing import box_keypair
from jitc.secrets import EnvSecretStore, SecretStores

PUBLIC_KEY = box_keypair()[1]
SHAPES = ("per-op", "kept", "shared")
Floor = Callable[[str], Callable[[str], None]]
# Prepares N grants untimed; returns the timed grants and the timed revokes.
BatchFloor = Callable[[int], tuple[Callable[[], None], Callable[[], None]]]


@dataclass(frozen=True)
class Target:
    """One integration with one `read-only` permission on one resource."""

    integration: str
    kind: str
    connection: dict[str, Any]
    resource: str
    secrets: dict[str, str]

    def engine(self, clock: Callable[[], dt.datetime] = utcnow, keep: bool = True) -> Engine:
        """`keep`: the template's default, admin clients kept across batches; else none kept."""
        connection = self.connection if keep else {**self.connection, "keep_connection_seconds": 0}
        doc: dict[str, Any] = {
            "connector": {"label_key": "mem:label"},
            "integrations": {
                self.integration: {
                    "kind": self.kind,
                    "connection": connection,
                    "max_duration": "8h",
                    "permissions": {
                        "read-only": {"template": "read-only", "resources": [self.resource]}
                    },
                }
            },
        }
        if "admin" in self.secrets:
            doc["integrations"][self.integration]["credentials"] = "mem:admin"
        stores = SecretStores(
            {"mem": EnvSecretStore({"label": secrets.token_urlsafe(32), **self.secrets})}
        )
        return Engine(parse_catalog(doc), stores, NullScheduler(), MemorySink(), clock=clock)

    def grant_message(self, request_id: str, duration: str = "1h") -> str:
        """A grant as the control plane sends it: the bench builds it before the clock starts."""
        return json.dumps(
            {
                "request_id": request_id,
                "action": "grant",
                "integration": self.integration,
                "permission": "read-only",
                "resources": [self.resource],
                "duration": duration,
                "identity": {"email": "bench@example.com", "public_key": PUBLIC_KEY},
            }
        )

    def revoke_message(self, request_id: str) -> str:
        return json.dumps(
            {
                "request_id": f"r-{request_id}",
                "action": "revoke",
                "integration": self.integration,
                "grant_id": derive_grant_id(self.integration, request_id),
            }
        )

    def grant(self, request_id: str, duration: str = "1h") -> AccessRequest:
        return parse_request(self.grant_message(request_id, duration))

    def revoke(self, request_id: str) -> AccessRequest:
        return parse_request(self.revoke_message(request_id))


def machine(server: str, client: str) -> str:
    """The line every figure is recorded with: time, cores, CPU, load average, software."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{now}; nproc {nproc}; CPU {cpu}; load average {load}; {server}; "
        f"Python {platform.python_version()}; {client}"
    )


def latency(target: Target, iterations: int, floors: dict[str, Floor]) -> None:
    """Grant+revoke through the engine against each floor, interleaved, after 3 warm-ups."""
    cold, warm = target.engine(keep=False), target.engine()
    took: dict[tuple[str, str], list[float]] = {}
    for i in range(iterations + 3):
        for shape in SHAPES:
            for name, floor in floors.items():
                run = floor(f"lat-{name.replace(' ', '-')}-{shape}-{i}-{secrets.token_hex(3)}")
                start = time.perf_counter()
                run(shape)
                if i >= 3:
                    took.setdefault((shape, name), []).append(time.perf_counter() - start)
            rid = f"lat-e-{shape}-{i}-{secrets.token_hex(3)}"
            engine = warm if shape == "kept" else cold
            # The messages come built, as from a queue; reading them is the connector's work.
            grant, revoke = target.grant_message(rid), target.revoke_message(rid)
            start = time.perf_counter()
            if shape in ("per-op", "kept"):
                outcomes = [
                    engine.execute(parse_request(grant)),
                    engine.execute(parse_request(revoke)),
                ]
            else:
                outcomes = engine.execute_batch(
                    [Work(parse_request(grant), utcnow()), Work(parse_request(revoke), utcnow())]
                )
            elapsed = time.perf_counter() - start
            assert [o.status for o in outcomes] == ["granted", "revoked"], outcomes
            if i >= 3:
                took.setdefault((shape, "engine"), []).append(elapsed)
    for shape in SHAPES:
        ours = took[(shape, "engine")]
        e = statistics.median(ours)
        parts = [f"{shape}: engine {e * 1000:.2f} ms"]
        for name in floors:
            theirs = took[(shape, name)]
            f = statistics.median(theirs)
            pairs = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
            parts.append(
                f"floor '{name}' {f * 1000:.2f} ms, ratio {e / f:.2f}x (pairwise {pairs:.2f}x)"
            )
        print("; ".join(parts) + f"; n={iterations}; goal <= 1.3x")


def batch(target: Target, size: int, floor: BatchFloor, floor_name: str) -> None:
    """N grants in one batch and the sweep of those N, against the floor doing the same number
    of grants and revokes on one connection."""
    clock = [utcnow()]
    engine = target.engine(lambda: clock[0])
    floor_grants, floor_revokes = floor(size)
    start = time.perf_counter()
    floor_grants()
    floor_grant = time.perf_counter() - start
    start = time.perf_counter()
    floor_revokes()
    floor_revoke = time.perf_counter() - start

    works = [
        Work(target.grant(f"b-{i}-{secrets.token_hex(3)}", "5m"), clock[0]) for i in range(size)
    ]
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
        f"{size / floor_revoke:.0f}/s {floor_name} one by one (ratio {swept / floor_revoke:.2f}x)"
    )
