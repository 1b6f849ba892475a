"""RabbitMQ: grant+revoke latency through the engine vs. the raw client, and batch throughput.

Two floors, both raw httpx with the session's client settings, on the same broker in the same
run, interleaved with the engine (see `_userbench` for the shapes: per-op, kept, shared):
  writes:     only the writes: the template's own planned calls (a real salted hash in place of
              the masked one and a stand-in MAC) and `DELETE /api/users/<user>`;
  same calls: every HTTP call the engine's session made for a grant and a revoke of this shape,
              recorded once from an untimed engine run and sent again in the same order, with the
              request's names, on one client per batch as the session has; each answer's status
              must be the one the engine got, so the replay cannot do less. Engine / this floor is
              the connector's own cost; engine / writes adds the reads its safety needs.
Goal: engine / floor <= 1.3. Then N grants in one batch (engine) vs. the floor's same calls on
one client, and the sweep of those N: grants and revokes per second.

    python bench/bench_rabbitmq.py [iterations] [batch size]

JITC_BENCH_RABBITMQ_API names another management API (default http://127.0.0.1:15672, guest).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from _userbench import Target, batch, latency, machine

from jitc.messages import Work
from jitc.models import utcnow
from jitc.templates.rabbitmq_session import password_hash

API = os.environ.get("JITC_BENCH_RABBITMQ_API", "http://127.0.0.1:15672")
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
# A recorded call: method, path, JSON body, the status the engine got; the grant id as {gid}.
Recorded = tuple[str, str, str, int]
KEPT: list[httpx.Client] = []
# Per shape, the engine's calls per batch: per-op (and kept) two batches, shared one.
RECORDED: dict[str, list[list[Recorded]]] = {}


def client() -> httpx.Client:
    # The same client settings as the template's session.
    return httpx.Client(base_url=API, auth=(ADMIN, ADMIN_PASSWORD), timeout=5.0)


def floor_calls(request_id: str) -> tuple[str, list[Call]]:
    """The template's plan for this grant, with a real password hash and a stand-in MAC."""
    calls = []
    for text in PLANNER.plan(TARGET.grant(request_id)).statements:
        method, path, body = text.rstrip(";").split(" ", 2)
        doc = json.loads(body)
        if doc.get("password_hash") == "********":
            doc["password_hash"] = password_hash(secrets.token_urlsafe(24))
        if "exchange" in doc:  # the label, in the ledger vhost's topic permission
            doc["exchange"] = doc["exchange"].replace("********", "M" * 43)
        calls.append((method, path, doc))
    return calls[0][1].rsplit("/", 1)[1], calls


def opened(shape: str) -> httpx.Client:
    """The floor's client for a batch: kept for the whole run in the kept shape."""
    if shape != "kept":
        return client()
    if not KEPT:
        KEPT.append(client())
    return KEPT[0]


def done(c: httpx.Client, shape: str) -> None:
    if shape != "kept":
        c.close()


@contextmanager
def recording() -> Iterator[list[tuple[str, str, Any, int]]]:
    """Every call any httpx client makes meanwhile, with the status it got."""
    calls: list[tuple[str, str, Any, int]] = []
    request = httpx.Client.request

    def recorded(self: httpx.Client, method: str, url: Any, **kwargs: Any) -> httpx.Response:
        response = request(self, method, url, **kwargs)
        calls.append((method, str(url), kwargs.get("json"), response.status_code))
        return response

    httpx.Client.request = recorded  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        httpx.Client.request = request  # type: ignore[method-assign]


def record() -> None:
    """The engine's calls for one grant and its revoke, per shape, from untimed runs."""
    engine = TARGET.engine(keep=False)
    for shape in ("per-op", "shared"):
        rid = f"rec-{shape}-{secrets.token_hex(3)}"
        gid = str(TARGET.grant(rid).target_grant_id)
        batches = []
        works = [Work(TARGET.grant(rid), utcnow()), Work(TARGET.revoke(rid), utcnow())]
        for group in [works[:1], works[1:]] if shape == "per-op" else [works]:
            with recording() as calls:
                outcomes = engine.execute_batch(group)
            assert all(o.status in ("granted", "revoked") for o in outcomes), outcomes
            batches.append(
                [
                    (m, path.replace(gid, "{gid}"), json.dumps(body).replace(gid, "{gid}"), st)
                    for m, path, body, st in calls
                ]
            )
        RECORDED[shape] = batches
    RECORDED["kept"] = RECORDED["per-op"]
    for shape, batches in RECORDED.items():
        print(f"same calls, {shape}: " + " | ".join(" ".join(c[0] for c in b) for b in batches))


def same_calls(request_id: str) -> Callable[[str], None]:
    gid = str(TARGET.grant(request_id).target_grant_id)
    planned = {
        shape: [
            [
                (m, path.replace("{gid}", gid), json.loads(body.replace("{gid}", gid)), st)
                for m, path, body, st in b
            ]
            for b in batches
        ]
        for shape, batches in RECORDED.items()
    }

    def run(shape: str) -> None:
        for calls in planned[shape]:
            c = opened(shape)
            for method, path, body, status in calls:
                got = c.request(method, path, json=body).status_code
                assert got == status, (method, path, got, status)
            done(c, shape)

    return run


def run_calls(c: httpx.Client, calls: list[Call]) -> None:
    for method, path, body in calls:
        c.request(method, path, json=body).raise_for_status()


def writes(request_id: str) -> Callable[[str], None]:
    name, calls = floor_calls(request_id)

    def run(shape: str) -> None:
        c = opened(shape)
        run_calls(c, calls)
        if shape == "per-op":
            c.close()
            c = client()
        c.delete(f"/api/users/{name}").raise_for_status()
        done(c, shape)

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
            f"management API on {API.removeprefix('http://')}",
            f"httpx {httpx.__version__}",
        )
    )
    cleanup(root)
    try:
        record()
        latency(TARGET, iterations, {"writes": writes, "same calls": same_calls})
        batch(TARGET, size, batch_floor, "DELETE")
    finally:
        for kept in KEPT:
            kept.close()
        cleanup(root)
        root.delete(f"/api/users/{ADMIN}")
        root.delete(f"/api/vhosts/{VHOST}")
        root.close()


if __name__ == "__main__":
    main()
