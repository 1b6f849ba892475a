"""A redelivery cut short between its write and its check for a revoke, on the real Redis and
RabbitMQ servers of this machine: the user it wrote back must not outlive the revoke."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
import test_rabbitmq
import test_redis
from test_rabbitmq import root as rabbitmq_root  # noqa: F401  (fixture)
from test_redis import root as redis_root  # noqa: F401  (fixture)
from userenv import engine_parts

from jitc.errors import Refused, TargetError


def _cut_short_then_retried(
    again: Any, first: Any, spec: Any, raced: list[Any], can_login: Any
) -> None:
    """The delivery cut short after its write (the revoke raced it), then the queue's retry of
    it on another session: refused, and the user written back is gone."""
    with pytest.raises(TargetError):
        again.grant(spec)
    assert raced and raced[0].verified, raced
    with pytest.raises(Refused):
        first.grant(spec)
    assert not can_login()


def _close(again: Any, *others: Any) -> None:
    again.discard()  # the patched session is never kept for a later batch
    for session in others:
        session.close()


def _cut_short_then_swept(
    again: Any, spec: Any, raced: list[Any], env: Any, can_login: Any
) -> None:
    """The delivery cut short after its write, and never delivered again (acknowledged, or
    dead-lettered): the sweep finds the user live under its own tombstone and ends it at once,
    not at its expiry."""
    with pytest.raises(TargetError):
        again.grant(spec)
    assert raced and raced[0].verified, raced
    assert can_login()
    report = env.engine.sweep()
    assert report.revoked == [spec.grant_id] and report.ok, report
    assert not can_login()


@pytest.mark.parametrize("then", ["retried", "swept"])
def test_redis_a_redelivery_cut_short_by_a_revoke_never_leaves_its_user_live(
    redis_root,  # noqa: F811
    then: str,
) -> None:
    """A redelivery reads the user before a revoke ends it, writes the user back after the
    revoke, and loses the connection before its tombstone check (a worker stopped, a network
    break): the user is live again, with the first password, under a tombstone. The retry of
    that delivery sees the tombstone: it must end the user it finds, not only refuse; with no
    retry, the sweep ends it."""
    from test_redis import admin_sessions, direct_spec, raced_before

    from jitc.errors import TargetError
    from jitc.models import derive_grant_id

    env = test_redis.Env(
        **engine_parts(test_redis.catalog_doc(), test_redis.ADMIN_PASSWORD),
        integration=test_redis.INTEGRATION,
        resource=test_redis.KEYS,
        root=redis_root,
    )
    first, again, revoker = admin_sessions(env, 3)
    grant_id = derive_grant_id(test_redis.INTEGRATION, "cut-short")
    name = f"{test_redis.PREFIX}{grant_id}"
    spec = direct_spec(grant_id, "read-only", (test_redis.KEYS,))
    try:
        creds = first.grant(spec).credentials
        assert creds is not None
        until = datetime.now(UTC) + timedelta(hours=1)
        raced = raced_before(again, "_read_for_grant", lambda: revoker.revoke(grant_id, until))
        run = again._run

        def write_then_lose(commands: Any, meanwhile: Any = None) -> Any:
            if commands and tuple(commands[0][:3]) == ("ACL", "SETUSER", name):
                run(commands[:1])
                raise TargetError("connection lost")
            return run(commands, meanwhile)

        again._run = write_then_lose
        if then == "retried":
            _cut_short_then_retried(again, first, spec, raced, lambda: env.can_login(creds))
        else:
            _cut_short_then_swept(again, spec, raced, env, lambda: env.can_login(creds))
    finally:
        _close(again, first, revoker)
        names = test_redis.ours(redis_root)
        if names:
            test_redis.acl(redis_root, "DELUSER", *names)


@pytest.mark.parametrize("then", ["retried", "swept"])
def test_rabbitmq_a_redelivery_cut_short_by_a_revoke_never_leaves_its_user_live(
    rabbitmq_root,  # noqa: F811
    then: str,
) -> None:
    """As for Redis: the redelivery's writes land after the revoke, and it stops before its
    check; its retry, or the sweep, must end the user it finds under the tombstone. RabbitMQ
    writes a user whether it exists or not: the redelivery's password write makes the user
    again after the revoke deleted it, without the label the revoke took with it."""
    from test_rabbitmq import OTHER_VHOST, VHOST

    from jitc.errors import TargetError
    from jitc.labels import LabelKey
    from jitc.models import Identity, derive_grant_id
    from jitc.secrets import Secret
    from jitc.templates.base import GrantSpec
    from jitc.templates.rabbitmq import Permission

    env = test_rabbitmq.Env(
        **engine_parts(test_rabbitmq.catalog_doc(), test_rabbitmq.ADMIN_PASSWORD),
        integration=test_rabbitmq.INTEGRATION,
        resource=VHOST,
        root=rabbitmq_root,
    )
    integration = env.engine.catalog.integration(test_rabbitmq.INTEGRATION)
    key = LabelKey.from_secret(test_rabbitmq.LABEL_KEY)
    first, again, revoker = (
        integration.template.open(
            test_rabbitmq.INTEGRATION,
            integration.connection,
            Secret(test_rabbitmq.ADMIN_PASSWORD),
            key,
        )
        for _ in range(3)
    )
    grant_id = derive_grant_id(test_rabbitmq.INTEGRATION, "cut-short")
    spec = GrantSpec(
        grant_id=grant_id,
        request_id="cut-short",
        integration=test_rabbitmq.INTEGRATION,
        permission_name="read-only",
        permission=Permission(template="read-only", resources=[VHOST, OTHER_VHOST]),
        resources=(VHOST,),
        identity=Identity(email="a@example.com"),
        expires_at=datetime.now(UTC) + timedelta(minutes=15),
        request_digest=f"d-cut-short-{grant_id}",
    )
    try:
        creds = first.grant(spec).credentials
        assert creds is not None
        stone = f"{test_rabbitmq.PREFIX}x-{grant_id}"
        until = datetime.now(UTC) + timedelta(hours=1)
        read = again._user
        raced: list[Any] = []

        def read_then_race(name: str) -> Any:
            found = read(name)
            if name == stone and not raced:
                raced.append(revoker.revoke(grant_id, until))
            return found

        def lost(*args: Any) -> None:
            raise TargetError("connection lost")

        again._user = read_then_race
        again._check_after_grant = lost
        if then == "retried":
            _cut_short_then_retried(again, first, spec, raced, lambda: env.can_login(creds))
        else:
            _cut_short_then_swept(again, spec, raced, env, lambda: env.can_login(creds))
    finally:
        _close(again, first, revoker)
        for name in test_rabbitmq.ours(rabbitmq_root):
            rabbitmq_root.delete(f"/api/users/{quote(name, safe='')}")
