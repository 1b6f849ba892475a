"""Names under two prefixes, for the templates whose grant is a user and whose tombstone is
another user (Redis, RabbitMQ): prefix `P`'s tombstone of a grant, `Px-<grant>`, is that
grant's user under prefix `Px-`. A name is read as what the look by name expects there: a user
is never taken for a tombstone, nor a tombstone for a user."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from contract_targets import ContractEnv, Target, catalog_doc, make_env


def _env(target: Target, prefix: str) -> ContractEnv:
    return make_env(target, catalog_doc(target, connection=target.connection(user_prefix=prefix)))


def _prefix(target: Target) -> str:
    return str(target.connection()["user_prefix"])


def test_a_user_under_a_prefix_x_longer_is_ended_by_its_revoke_not_taken_for_its_tombstone(
    user_target: Target,
) -> None:
    prefix = _prefix(user_target)
    before = _env(user_target, f"{prefix}x-")
    outcome = before.engine.execute(before.request(request_id="u-longer"))
    assert outcome.status == "granted", outcome
    holder = before.holder(outcome)
    after = _env(user_target, prefix)  # the operator shortens the prefix
    revoke = after.engine.execute(after.request("revoke", request_id="u-longer"))
    # The user goes, and the tombstone takes the name it held.
    assert revoke.status == "revoked" and revoke.verified, revoke
    assert not after.usable(holder)
    late = after.engine.execute(after.request(request_id="u-longer"))
    assert late.status == "refused" and late.field == "request_id", late
    assert not after.usable(holder)


def test_a_user_under_a_prefix_x_longer_is_ended_by_the_sweep_and_stays_revoked(
    user_target: Target,
) -> None:
    """The sweep's revoke is retried by no queue: it writes the tombstone itself."""
    prefix = _prefix(user_target)
    before = _env(user_target, f"{prefix}x-")
    request = before.request(request_id="u-longer-swept", duration="5m")
    outcome = before.engine.execute(request)
    holder = before.holder(outcome)
    after = _env(user_target, prefix)
    after.advance(timedelta(minutes=10))
    report = after.engine.sweep()
    assert report.ok and report.revoked == [outcome.grant_id], report
    assert not after.usable(holder)
    late = after.engine.execute(request, issued_at=after.now[0] - timedelta(minutes=4))
    assert late.status == "refused" and late.field == "request_id", late
    assert not after.usable(holder)


def test_a_tombstone_under_a_prefix_x_shorter_is_never_taken_for_the_grant_s_user(
    user_target: Target,
) -> None:
    prefix = _prefix(user_target)
    before = _env(user_target, prefix)
    request = before.request(request_id="u-shorter")
    outcome = before.engine.execute(request)
    revoke = before.engine.execute(before.request("revoke", request_id="u-shorter"))
    assert revoke.status == "revoked" and revoke.verified, revoke
    after = _env(user_target, f"{prefix}x-")  # the operator lengthens the prefix
    late = after.engine.execute(request)  # a late copy of the revoked grant
    assert late.status == "refused" and late.field == "request_id", late
    assert not after.can_login(before.holder(outcome))
    assert user_target.principals() == set()


# Redis sends the deletion and the tombstone in one write: nothing lands between them there.
@pytest.mark.parametrize("user_target", ["rabbitmq"], indirect=True)
def test_a_delivery_under_today_s_prefix_between_the_in_place_deletion_and_tombstone_is_ended(
    user_target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jitc.templates.rabbitmq_session import RabbitMQSession

    prefix = _prefix(user_target)
    before = _env(user_target, f"{prefix}x-")
    request = before.request(request_id="u-between")
    first = before.engine.execute(request)
    after = _env(user_target, prefix)
    original = RabbitMQSession._put_tombstone
    landed: list[Any] = []

    def racing(self: RabbitMQSession, *args: Any) -> None:
        if not landed:  # the same request, delivered under today's prefix right now
            landed.append(_env(user_target, prefix).engine.execute(request))
        original(self, *args)

    monkeypatch.setattr(RabbitMQSession, "_put_tombstone", racing)
    revoke = after.engine.execute(after.request("revoke", request_id="u-between"))
    assert landed and landed[0].status == "granted", landed
    assert revoke.status == "revoked" and revoke.verified, revoke
    assert not after.usable(after.holder(landed[0]))
    assert not before.usable(before.holder(first))


def test_the_grant_s_users_under_today_s_name_and_its_tombstone_s_name_both_end(
    user_target: Target,
) -> None:
    prefix = _prefix(user_target)
    today = _env(user_target, prefix)
    request = today.request(request_id="u-both")
    first = today.engine.execute(request)
    longer = _env(user_target, f"{prefix}x-")
    second = longer.engine.execute(request)  # made again under the other prefix: a known gap
    assert second.status == "granted" and second.principal != first.principal, second
    revoke = today.engine.execute(today.request("revoke", request_id="u-both"))
    assert revoke.status == "revoked" and revoke.verified, revoke
    assert not today.usable(today.holder(first))
    assert not longer.usable(longer.holder(second))


def test_a_sweep_revokes_a_grant_with_two_users_once_and_ends_both(user_target: Target) -> None:
    prefix = _prefix(user_target)
    today = _env(user_target, prefix)
    request = today.request(request_id="u-both-swept", duration="5m")
    first = today.engine.execute(request)
    longer = _env(user_target, f"{prefix}x-")
    second = longer.engine.execute(request)  # made again under the other prefix: a known gap
    assert second.status == "granted", second
    today.advance(timedelta(minutes=10))
    report = today.engine.sweep()
    assert report.ok and report.revoked == [first.grant_id], report
    assert not today.usable(today.holder(first))
    assert not longer.usable(longer.holder(second))
