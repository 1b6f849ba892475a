"""RabbitMQ: grant+revoke latency through the engine vs. the raw client, and batch throughput.

The floor is raw httpx sending the template's own planned management API calls (a real salted
hash in place of the masked one and a stand-in MAC) and `DELETE /api/users/<user>`, on the same
broker in the same run, interleaved with the engine (see `_userbench` for the shapes).
Goal: engine / floor <= 1.3. Then N grants in one batch (engine) vs. the floor's same calls on
one client, and the sweep of those N: grants and revokes per second.

    python bench/bench_rabbitmq.py [iterations] [batch size]
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Callable
from typing import Any

import httpx
from _userbench import Target, batch, latency, machine

from jitc.templates.rabbitmq_session import password_hash

API = "http://127.0.0.1:15672"
PREFIX, VHOST = "benchq-", "benchq"
ADMIN, ADMIN_PASSWORD = "benchq-admin-x", secrets.token_urlsafe(16)
TARGET = Target(
    integration="bench-rabbitmq",
    kind="rabbitmq",
    connection={"api_url": API, "user": ADMIN, "user_prefix": PREFIX},
    resource=VHOST,
    secrets={"admin": ADMIN_PASSWORD},
)
PLANNER = TARGET.engine()
Call = tuple[str, str, Any]


def client() -> httpx.Client:
    # The same client settings as the template's session.
    return httpx.Client(base_url=API, auth=(ADMIN, ADMIN_PASSWORD), timeout=5.0)


def floor_calls(request_id: str) -> tuple[str, list[Call]]:
    """The template's plan for this grant, with a real password hash and a stand-in MAC."""
    calls = []
    for text in PLANNER.plan(TARGET.grant(request_id)).statements:
        method, path, body = text.rstrip(";").split(" ", 2)
        doc = json.loads(body)
        if "password_hash" in doc:
            doc["password_hash"] = password_hash(secrets.token_urlsafe(24))
            doc["tags"] = doc["tags"].replace("********", "M" * 43)
        calls.append((method, path, doc))
    return calls[0][1].rsplit("/", 1)[1], calls


def run_calls(c: httpx.Client, calls: list[Call]) -> None:
    for method, path, body in calls:
        c.request(method, path, json=body).raise_for_status()


def writes(request_id: str) -> Callable[[str], None]:
    name, calls = floor_calls(request_id)

    def run(shape: str) -> None:
        c = client()
        run_calls(c, calls)
        if shape == "per-op":
            c.close()
            c = client()
        c.delete(f"/api/users/{name}").raise_for_status()
        c.close()

    return run


def batch_floor(size: int) -> tuple[Callable[[], None], Callable[[], None]]:
    planned = [floor_calls(f"fl-{i}-{secrets.token_hex(3)}") for i in range(size)]
    c = client()

    def grants() -> None:
        for _, calls in planned:
            run_calls(c, calls)

    def revokes() -> None:
        for name, _ in planned:
            c.delete(f"/api/users/{name}").raise_for_status()
        c.close()

    return grants, revokes


def cleanup(root: httpx.Client) -> None:
    for user in root.get("/api/users").json():
        if user["name"].startswith(PREFIX) and user["name"] != ADMIN:
            root.delete(f"/api/users/{user['name']}")


def main() -> None:
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    root = httpx.Client(base_url=API, auth=("guest", "guest"), timeout=10)
    root.put(f"/api/vhosts/{VHOST}").raise_for_status()
    root.put(
        f"/api/users/{ADMIN}", json={"password": ADMIN_PASSWORD, "tags": "administrator"}
    ).raise_for_status()
    overview = root.get("/api/overview").json()
    print(
        machine(
            f"RabbitMQ {overview['rabbitmq_version']} (Erlang {overview['erlang_version']}), "
            "management API on 127.0.0.1:15672",
            f"httpx {httpx.__version__}",
        )
    )
    cleanup(root)
    try:
        latency(TARGET, iterations, {"writes": writes})
        batch(TARGET, size, batch_floor, "DELETE")
    finally:
        cleanup(root)
        root.delete(f"/api/users/{ADMIN}")
        root.delete(f"/api/vhosts/{VHOST}")
        root.close()


if __name__ == "__main__":
    main()
