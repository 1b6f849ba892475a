"""Adversarial tests against the one pool of kept admin sessions (jitc.templates.kept), on Redis."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from test_redis import ADMIN, ADMIN_PASSWORD, INTEGRATION, Env, make_env, root
from userenv import LABEL_KEY

from jitc.labels import LabelKey
from jitc.secrets import Secret
from jitc.templates import redis_session

__all__ = ["make_env", "root"]
KEY = LabelKey.from_secret(LABEL_KEY)


@pytest.fixture(autouse=True)
def _empty_pool() -> Iterator[None]:
    redis_session.POOL.close_all()
    yield
    redis_session.POOL.close_all()


def _open(env: Env, **extra: Any) -> Any:
    integration = env.engine.catalog.integration(INTEGRATION)
    connection = integration.connection.model_copy(update=extra)
    template: Any = integration.template
    return template.open(INTEGRATION, connection, Secret(ADMIN_PASSWORD), KEY)


def test_a_short_idle_limit_is_kept_when_a_longer_one_armed_the_timer_first(
    make_env: Callable[..., Env], root: redis.Redis
) -> None:
    env = make_env()
    # Two integrations (or one whose catalog changed) with different limits share the pool.
    slow = _open(env, keep_connection_seconds=30)
    slow.active_grants()
    slow.close()
    quick = _open(env, keep_connection_seconds=0.3)
    quick.active_grants()
    quick.close()
    assert len(redis_session.POOL) == 2
    time.sleep(1.0)
    # Only the one whose 30 s have not passed may still be open on the server.
    admins = [c for c in root.client_list() if c.get("user") == ADMIN]
    assert len(admins) == 1, admins
