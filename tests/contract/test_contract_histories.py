"""Property, on every template: whatever order, duplication and crashes the queue delivers in,
no principal keeps access past its revoke, and after a final sweep none past its expiry, while
every live, unrevoked grant works. Access is judged as the grantee would: log in with the
credentials the grant handed out and do the allowed operation; and as the target holds it: a
delivery that crashed after the target made the grant handed nothing out, so the target's own
ledger must not hold a revoked or expired grant as active either."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from contract_targets import ContractEnv, Target, make_env
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from jitc.messages import Work
from jitc.models import derive_grant_id

GRANTS = 3


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


def run_histories(target: Target) -> None:
    class Histories(RuleBasedStateMachine):
        @initialize()
        def setup(self) -> None:
            target.reset()
            self.scheduler = CrashingScheduler()
            self.env: ContractEnv = make_env(target, scheduler=self.scheduler)
            self.start = datetime.now(UTC)
            self.env.now[0] = self.start
            self.durations = [timedelta(minutes=m) for m in (5, 20, 120)]
            self.granted: set[int] = set()
            self.revoked: set[int] = set()
            self.issued: dict[int, list[Any]] = {}

        def expiry(self, i: int) -> datetime:
            return self.start + self.durations[i]

        def deliver(self, crash: bool, work: Work) -> tuple[str, bool]:
            self.scheduler.arm(crash)
            outcome = self.env.engine.execute_batch([work])[0]
            crashed = self.scheduler.crashed
            self.scheduler.arm(False)
            if outcome.status == "granted":
                holder = self.env.holder(outcome)
                self.issued.setdefault(int(work.request.request_id[1:]), []).append(holder)
            return outcome.status, crashed

        @rule(i=st.integers(0, GRANTS - 1), crash=st.booleans())
        def deliver_grant(self, i: int, crash: bool) -> None:
            seconds = int(self.durations[i].total_seconds())
            request = self.env.request(
                request_id=f"h{i}", duration=f"{seconds}s", identity=target.identity(i)
            )
            # The control plane signed every request at the start: every delivery computes the
            # same expiry.
            status, crashed = self.deliver(crash, Work(request, self.start))
            if status == "granted":
                assert i not in self.revoked and self.env.now[0] < self.expiry(i)
                self.granted.add(i)
            elif status == "refused":
                assert i in self.revoked or self.env.now[0] >= self.expiry(i)
            else:
                assert crashed, status

        @rule(i=st.integers(0, GRANTS - 1), crash=st.booleans())
        def deliver_revoke(self, i: int, crash: bool) -> None:
            request = self.env.request("revoke", request_id=f"h{i}")
            status, crashed = self.deliver(crash, Work(request, self.env.now[0]))
            # The target was revoked before the crash, so access is gone either way.
            assert status == ("failed" if crashed else "revoked"), status
            self.revoked.add(i)

        @rule(minutes=st.sampled_from([1, 10, 30, 90]))
        def time_passes(self, minutes: int) -> None:
            self.env.advance(timedelta(minutes=minutes))

        @rule()
        def sweep(self) -> None:
            assert self.env.engine.sweep().ok

        def held_active(self) -> set[int]:
            """The grants the target's own ledger holds as active, handed out or not."""
            found = self.env.engine.live_grants([target.integration])[target.integration]
            assert not isinstance(found, str), found
            active = {g.grant_id for g in found if g.state == "active"}
            return {
                i for i in range(GRANTS) if derive_grant_id(target.integration, f"h{i}") in active
            }

        @invariant()
        def revoked_means_gone(self) -> None:
            if not hasattr(self, "env"):
                return
            for i in self.revoked:
                for creds in self.issued.get(i, []):
                    assert not self.env.usable(creds), f"grant {i} still usable after revoke"
            held = self.held_active() & self.revoked
            assert not held, f"grants {held} still active in the target after their revoke"

        def teardown(self) -> None:
            if not hasattr(self, "env"):
                return
            try:
                assert self.env.engine.sweep().ok
                now = self.env.now[0]
                for i in range(GRANTS):
                    usable = [self.env.usable(c) for c in self.issued.get(i, [])]
                    if i in self.revoked or now >= self.expiry(i):
                        assert not any(usable), f"grant {i} outlived its expiry or revoke"
                    elif i in self.granted:
                        assert usable[-1], f"grant {i} is live but does not work"
                dead = {i for i in range(GRANTS) if i in self.revoked or now >= self.expiry(i)}
                held = self.held_active() & dead
                assert not held, f"grants {held} still active in the target after a final sweep"
            finally:
                target.reset()

    run_state_machine_as_test(
        Histories,
        settings=settings(
            # A target on a slow emulator (moto) may ask for fewer.
            max_examples=getattr(target, "history_examples", 20),
            stateful_step_count=10,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.slow
def test_delivery_histories(target: Target) -> None:
    run_histories(target)
