"""Property, on the real RabbitMQ: whatever order, duplication and crashes the queue delivers in,
after a final sweep no user keeps access past its expiry or its revoke, and every live, unrevoked
grant works. RabbitMQ has no expiry of its own, so here the sweep is the only thing that ends a
grant nobody revoked."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.local import MemorySink
from jitc.messages import Work, parse_request
from jitc.models import AccessRequest, derive_grant_id
from jitc.secrets import EnvSecretStore, SecretStores

GRANTS = 4
RUN = secrets.token_hex(3)
INTEGRATION = f"rabbitmq-h{RUN}"
PREFIX = f"h{RUN}-"
VHOST = f"h{RUN}"
ADMIN, ADMIN_PASSWORD = f"h{RUN}admin", secrets.token_urlsafe(16)
API = "http://127.0.0.1:15672"
LABEL_KEY = secrets.token_urlsafe(32)


class CrashingScheduler:
    """Schedules nothing (the sweep must cope), and can crash once, as a process would."""

    def __init__(self) -> None:
        self.crash_next = False
        self.crashed = False

    def arm(self, crash: bool) -> None:
        self.crash_next, self.crashed = crash, False

    def _maybe_crash(self) -> None:
        if self.crash_next:
            self.crash_next, self.crashed = False, True
            raise RuntimeError("worker died between steps")

    def schedule(self, grant_id: str, integration: str, at: datetime) -> None:
        self._maybe_crash()

    def cancel(self, grant_id: str) -> None:
        self._maybe_crash()


def drop_ours(client: httpx.Client) -> None:
    for user in client.get("/api/users").json():
        if user["name"].startswith(PREFIX):
            client.delete(f"/api/users/{user['name']}")


def catalog_doc() -> dict[str, Any]:
    return {
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


class Histories(RuleBasedStateMachine):
    root: httpx.Client

    @initialize()
    def setup(self) -> None:
        drop_ours(self.root)
        self.start = datetime.now(UTC)
        self.now = [self.start]
        self.scheduler = CrashingScheduler()
        self.engine = Engine(
            parse_catalog(catalog_doc()),
            SecretStores({"mem": EnvSecretStore({"label": LABEL_KEY, "admin": ADMIN_PASSWORD})}),
            self.scheduler,
            MemorySink(),
            clock=lambda: self.now[0],
        )
        self.durations = [timedelta(minutes=m) for m in (5, 20, 60, 120)]
        self.granted: set[int] = set()
        self.revoked: set[int] = set()

    def grant_request(self, i: int) -> Work:
        request = parse_request(
            json.dumps(
                {
                    "request_id": f"h{i}",
                    "action": "grant",
                    "integration": INTEGRATION,
                    "permission": "read-only",
                    "resources": [VHOST],
                    "identity": {"email": f"u{i}@example.com"},
                    "duration": f"{int(self.durations[i].total_seconds())}s",
                }
            )
        )
        return Work(request, self.start)  # the control plane signed every request at start

    def revoke_request(self, i: int) -> AccessRequest:
        return parse_request(
            json.dumps({"request_id": f"h{i}", "action": "revoke", "integration": INTEGRATION})
        )

    def expiry(self, i: int) -> datetime:
        return self.start + self.durations[i]

    def usable(self, i: int) -> bool:
        """The grant's user exists with a password and may read on the vhost, asked of the
        broker itself."""
        name = f"{PREFIX}{derive_grant_id(INTEGRATION, f'h{i}')}"
        user = self.root.get(f"/api/users/{name}")
        if user.status_code == 404 or not user.json().get("password_hash"):
            return False
        perms = self.root.get(f"/api/users/{name}/permissions").json()
        return any(p["vhost"] == VHOST and p["read"] for p in perms)

    def deliver(self, crash: bool, request: Work) -> tuple[Any, bool]:
        self.scheduler.arm(crash)
        outcome = self.engine.execute_batch([request], plain=True)[0]
        crashed = self.scheduler.crashed
        self.scheduler.arm(False)
        return outcome, crashed

    @rule(i=st.integers(0, GRANTS - 1), crash=st.booleans())
    def deliver_grant(self, i: int, crash: bool) -> None:
        outcome, crashed = self.deliver(crash, self.grant_request(i))
        if outcome.status == "granted":
            assert i not in self.revoked and self.now[0] < self.expiry(i)
            self.granted.add(i)
            assert outcome.credentials is not None and self.usable(i)
        elif outcome.status == "refused":
            assert i in self.revoked or self.now[0] >= self.expiry(i), outcome
        else:
            assert crashed, outcome.message

    @rule(i=st.integers(0, GRANTS - 1), crash=st.booleans())
    def deliver_revoke(self, i: int, crash: bool) -> None:
        outcome, crashed = self.deliver(crash, Work(self.revoke_request(i), self.now[0]))
        # The target was revoked before the crash, so access is gone either way.
        assert outcome.status == ("failed" if crashed else "revoked"), outcome
        self.revoked.add(i)

    @rule(minutes=st.sampled_from([1, 10, 30, 90]))
    def time_passes(self, minutes: int) -> None:
        self.now[0] += timedelta(minutes=minutes)

    @rule()
    def sweep(self) -> None:
        assert self.engine.sweep().ok

    @invariant()
    def revoked_means_gone(self) -> None:
        if not hasattr(self, "engine"):
            return
        for i in self.revoked:
            assert not self.usable(i), f"grant {i} still usable after revoke"

    def teardown(self) -> None:
        if hasattr(self, "engine"):
            assert self.engine.sweep().ok
            for i in range(GRANTS):
                live = i in self.granted and i not in self.revoked and self.now[0] < self.expiry(i)
                dead = i in self.revoked or self.now[0] >= self.expiry(i)
                if dead:
                    assert not self.usable(i), f"grant {i} outlived its expiry or revoke"
                if live:
                    assert self.usable(i), f"grant {i} is live but does not work"
        drop_ours(self.root)


@pytest.mark.slow
def test_delivery_histories_on_rabbitmq() -> None:
    root = httpx.Client(base_url=API, auth=("guest", "guest"), timeout=10)
    try:
        root.get("/api/overview").raise_for_status()
    except httpx.HTTPError as exc:
        pytest.skip(f"RabbitMQ management API is not reachable at {API}: {exc}")
    root.put(f"/api/vhosts/{VHOST}").raise_for_status()
    root.put(
        f"/api/users/{ADMIN}", json={"password": ADMIN_PASSWORD, "tags": "administrator"}
    ).raise_for_status()
    Histories.root = root
    try:
        Histories.TestCase.settings = settings(
            max_examples=20,
            stateful_step_count=12,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        Histories.TestCase().runTest()
    finally:
        drop_ours(root)
        root.delete(f"/api/users/{ADMIN}")
        root.delete(f"/api/vhosts/{VHOST}")
        root.close()
