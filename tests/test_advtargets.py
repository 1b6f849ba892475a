"""Adversarial tests of the Redis, RabbitMQ and MySQL templates on the real servers of this
machine, as a grantee holding an old signed copy of its request."""

from __future__ import annotations

from datetime import timedelta

import test_rabbitmq
import test_redis
from test_rabbitmq import root as rabbitmq_root  # noqa: F401  (fixture)
from test_redis import root as redis_root  # noqa: F401  (fixture)
from userenv import UserEnv, engine_parts


def _revoked_then_resigned_copy(env: UserEnv) -> tuple[dict[str, str], object]:
    """A grant of 15 minutes signed at t0; the control plane signs a copy of the same request
    at t0+5m (a retry of its own publish); the grant is revoked at t0+6m; the sweep runs past
    the first expiry; then the copy arrives, within its own lifetime (t0+20m)."""
    t0 = env.now[0]
    request = env.request(request_id="resigned-1")
    first = env.engine.execute(request, t0)
    assert first.status == "granted", first
    creds = env.credentials(first.sealed_credentials)
    env.now[0] = t0 + timedelta(minutes=6)
    revoke = env.engine.execute(env.request("revoke", request_id="resigned-1"))
    assert revoke.status == "revoked", revoke
    env.now[0] = t0 + timedelta(minutes=16)
    env.engine.sweep()
    late = env.engine.execute(request, t0 + timedelta(minutes=5))
    return creds, late


def test_redis_a_copy_signed_before_the_revoke_never_brings_the_grant_back(
    redis_root,  # noqa: F811
) -> None:
    env = test_redis.Env(
        **engine_parts(test_redis.catalog_doc(), test_redis.ADMIN_PASSWORD),
        integration=test_redis.INTEGRATION,
        resource=test_redis.KEYS,
        root=redis_root,
    )
    try:
        creds, late = _revoked_then_resigned_copy(env)
        assert late.status == "refused", late  # type: ignore[attr-defined]
        assert not env.can_login(creds)
    finally:
        names = test_redis.ours(redis_root)
        if names:
            test_redis.acl(redis_root, "DELUSER", *names)


def test_rabbitmq_a_copy_signed_before_the_revoke_never_brings_the_grant_back(
    rabbitmq_root,  # noqa: F811
) -> None:
    env = test_rabbitmq.Env(
        **engine_parts(test_rabbitmq.catalog_doc(), test_rabbitmq.ADMIN_PASSWORD),
        integration=test_rabbitmq.INTEGRATION,
        resource=test_rabbitmq.VHOST,
        root=rabbitmq_root,
    )
    creds, late = _revoked_then_resigned_copy(env)
    assert late.status == "refused", late  # type: ignore[attr-defined]
    assert not env.can_login(creds)
