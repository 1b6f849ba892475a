"""Adversarial tests against the admin sessions kept across batches (jitc.templates.kept)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from test_redis import ADMIN, ADMIN_PASSWORD, INTEGRATION, Env, catalog_doc, make_env, root
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


def _open(env: Env, secret: str = ADMIN_PASSWORD, **extra: Any) -> Any:
    integration = env.engine.catalog.integration(INTEGRATION)
    connection = integration.connection.model_copy(update=extra)
    return integration.template.open(INTEGRATION, connection, Secret(secret), KEY)


def test_a_kept_redis_connection_never_grants_after_the_admin_user_is_disabled(
    make_env: Callable[..., Env], root: redis.Redis
) -> None:
    env = make_env()
    first = env.engine.execute(env.request(request_id="adv-off-1"))
    assert first.status == "granted", first
    # The operator takes the connector's admin rights away: no new login as it is possible.
    root.execute_command("ACL", "SETUSER", ADMIN, "off")
    try:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(
                host=root.connection_pool.connection_kwargs["host"],
                port=root.connection_pool.connection_kwargs["port"],
                username=ADMIN,
                password=ADMIN_PASSWORD,
            ).ping()
        second = env.engine.execute(env.request(request_id="adv-off-2"))
        # A disabled admin must not make grants: a fresh connection per batch would be refused.
        assert second.status != "granted", second
        assert root.acl_getuser(str(second.principal)) is None
    finally:
        root.execute_command("ACL", "SETUSER", ADMIN, "on")


def test_a_kept_redis_connection_has_a_maximum_age_while_batches_keep_coming(
    make_env: Callable[..., Env], root: redis.Redis
) -> None:
    doc = catalog_doc()
    doc["integrations"][INTEGRATION]["connection"]["keep_connection_seconds"] = 1
    env = make_env(doc)
    first = env.engine.execute(env.request(request_id="adv-age-0"))
    assert first.status == "granted", first
    root.execute_command("ACL", "SETUSER", ADMIN, "off")
    try:
        # Every batch comes within the 1 s idle limit; the connection is never idle past it,
        # so it is never dropped, and the disabled admin goes on granting long after 1 s.
        started = time.monotonic()
        statuses = []
        index = 0
        while time.monotonic() - started < 3.5:
            index += 1
            outcome = env.engine.execute(env.request(request_id=f"adv-age-{index}"))
            statuses.append(outcome.status)
            time.sleep(0.3)
        assert statuses[-1] != "granted", statuses
    finally:
        root.execute_command("ACL", "SETUSER", ADMIN, "on")


def test_a_kept_redis_session_holds_no_label_key(
    make_env: Callable[..., Env], root: redis.Redis
) -> None:
    env = make_env()
    session = _open(env)
    session.active_grants()
    session.close()
    assert len(redis_session.POOL) == 1  # kept, between batches
    held = [v for v in vars(session).values() if isinstance(v, LabelKey)]
    assert all(LABEL_KEY.encode() not in key.secret for key in held), "label key kept"


def test_a_kept_redis_connection_is_closed_once_its_idle_limit_passes(
    make_env: Callable[..., Env], root: redis.Redis
) -> None:
    env = make_env()
    session = _open(env, keep_connection_seconds=0.3)
    session.active_grants()
    session.close()
    assert len(redis_session.POOL) == 1
    time.sleep(1.0)
    # No batch since: the admin connection, past its limit, should be gone from the server.
    admins = [c for c in root.client_list() if c.get("user") == ADMIN]
    assert admins == [], admins
