"""Property: whatever order, duplication and crashes the queue delivers in, after a final sweep no
principal keeps access past its expiry or its revoke, and every live, unrevoked grant works."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from pgtest import BOX_PUBLIC, INTEGRATION, LABEL_KEY, SCHEMA, catalog_doc, drop_our_roles

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.local import MemorySink
from jitc.messages import Work, parse_request
from jitc.models import AccessRequest, derive_grant_id
from jitc.secrets import EnvSecretStore, SecretStores

GRANTS = 4


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


def run_histories(admin: Any) -> None:
    class Histories(RuleBasedStateMachine):
        @initialize()
        def setup(self) -> None:
            drop_our_roles(admin)
            self.start = datetime.now(UTC)
            self.now = [self.start]
            self.scheduler = CrashingScheduler()
            self.engine = Engine(
                parse_catalog(catalog_doc()),
                SecretStores({"mem": EnvSecretStore({"admin": "", "label": LABEL_KEY})}),
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
                        "resources": [SCHEMA],
                        "identity": {
                            "email": f"u{i}@example.com",
                            "username": f"u{i}",
                            "public_key": BOX_PUBLIC,
                        },
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

        def access(self) -> dict[str, tuple[str, bool]]:
            """grant id -> (role, can log in and select), read from the target itself."""
            rows = admin.execute(
                "SELECT rolname, rolcanlogin, shobj_description(oid, 'pg_authid'), "
                "has_table_privilege(oid, %s, 'SELECT') FROM pg_roles "
                "WHERE shobj_description(oid, 'pg_authid') LIKE %s",
                (f"{SCHEMA}.items", f'jitc:%"integration":"{INTEGRATION}"%'),
            ).fetchall()
            found = {}
            for name, can_login, comment, can_select in rows:
                label = json.loads(comment[5:].partition(".")[2])  # jitc:<mac>.<json>
                if label["kind"] == "grant" and label["state"] != "tombstone":
                    found[label["grant_id"]] = (name, bool(can_login and can_select))
            return found

        def deliver(self, crash: bool, request: Work) -> tuple[Any, bool]:
            """One delivery; a crash, if armed, hits this delivery only."""
            self.scheduler.arm(crash)
            outcome = self.engine.execute_batch([request])[0]
            crashed = self.scheduler.crashed
            self.scheduler.arm(False)
            return outcome, crashed

        @rule(i=st.integers(0, GRANTS - 1), crash=st.booleans())
        def deliver_grant(self, i: int, crash: bool) -> None:
            outcome, crashed = self.deliver(crash, self.grant_request(i))
            if outcome.status == "granted":
                assert i not in self.revoked and self.now[0] < self.expiry(i)
                self.granted.add(i)
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
            access = self.access()
            for i in self.revoked:
                gid = derive_grant_id(INTEGRATION, f"h{i}")
                assert not access.get(gid, ("", False))[1], f"grant {i} still usable after revoke"

        def teardown(self) -> None:
            if hasattr(self, "engine"):
                self.engine.sweep()
                access = self.access()
                for i in range(GRANTS):
                    gid = derive_grant_id(INTEGRATION, f"h{i}")
                    usable = access.get(gid, ("", False))[1]
                    live = (
                        i in self.granted and i not in self.revoked and self.now[0] < self.expiry(i)
                    )
                    dead = i in self.revoked or self.now[0] >= self.expiry(i)
                    if dead:
                        assert not usable, f"grant {i} outlived its expiry or revoke"
                    if live:
                        assert usable, f"grant {i} is live but does not work"
            drop_our_roles(admin)

    run_state_machine_as_test(
        Histories,
        settings=settings(
            max_examples=60,
            stateful_step_count=15,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.slow
def test_delivery_histories(admin: Any) -> None:
    run_histories(admin)
