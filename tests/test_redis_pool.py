"""Admin connections kept across batches (jitc.templates.kept, keep_connection_seconds), on the
shared Redis server, as the run's own admin user."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from descriptors import FD_SETSIZE
from test_redis import ADMIN, ADMIN_PASSWORD, INTEGRATION, Env, catalog_doc, make_env, root
from userenv import LABEL_KEY

from jitc.errors import AuthenticationFailed
from jitc.labels import LabelKey
from jitc.secrets import Secret
from jitc.templates import redis_session
from jitc.templates.redis_session import RedisSession

__all__ = ["make_env", "root"]  # fixtures, shared with test_redis
KEY = LabelKey.from_secret(LABEL_KEY)


@pytest.fixture(autouse=True)
def _empty_pool() -> Iterator[None]:
    redis_session.POOL.close_all()
    yield
    redis_session.POOL.close_all()


def _admin_connections(root: redis.Redis) -> list[int]:
    """The server's ids of the connections logged in as the run's admin."""
    return sorted(int(c["id"]) for c in root.client_list() if c.get("user") == ADMIN)


def _open(env: Env, secret: str = ADMIN_PASSWORD, key: LabelKey = KEY, **extra: Any) -> Any:
    integration = env.engine.catalog.integration(INTEGRATION)
    connection = integration.connection.model_copy(update=extra)
    return integration.template.open(INTEGRATION, connection, Secret(secret), key)


def _one_batch(env: Env, **extra: Any) -> None:
    """A batch that reads the server on a session of these settings, then gives it back."""
    session = _open(env, **extra)
    session.active_grants()
    session.close()


def test_a_later_batch_gets_the_connection_kept_without_its_secret(
    make_env: Callable[..., Env], root: redis.Redis
) -> None:
    env = make_env()
    grant = env.engine.execute(env.request(request_id="pool-1"))
    assert grant.status == "granted", grant
    (kept,) = _admin_connections(root)
    revoke = env.engine.execute(env.request("revoke", request_id="pool-1"))
    assert revoke.status == "revoked" and revoke.verified, revoke
    assert root.acl_getuser(str(grant.principal)) is None
    assert _admin_connections(root) == [kept]  # the revoke's batch used the grant's connection
    session = _open(env)
    session.close()
    # Kept, it holds no secret and cannot log in: only a batch's hand-over gives it one.
    assert len(redis_session.POOL) == 1
    assert session._credential.secret is None
    with pytest.raises(redis.AuthenticationError):
        session._credential.get_credentials()
    assert all(ADMIN_PASSWORD not in str(part) for part in session.pool_key or ())


def test_another_integration_secret_label_key_or_setting_never_gets_a_kept_connection(
    make_env: Callable[..., Env], root: redis.Redis
) -> None:
    env = make_env()
    first = _open(env)
    first.active_grants()
    first.close()
    (kept,) = _admin_connections(root)
    integration = env.engine.catalog.integration(INTEGRATION)
    others = [
        lambda: integration.template.open(
            INTEGRATION + "-b", integration.connection, Secret(ADMIN_PASSWORD), KEY
        ),
        lambda: _open(env, key=LabelKey.from_secret(LABEL_KEY + "x")),
        lambda: _open(env, connect_timeout=7.0),
    ]
    for open_other in others:
        other = open_other()
        try:
            assert other is not first
            other.active_grants()
            assert len(_admin_connections(root)) == 2
        finally:
            other.discard()
    # A rotated secret (here: a wrong one) logs in on its own connection, and is refused.
    wrong = _open(env, secret="not-the-password")
    assert wrong is not first
    with pytest.raises(AuthenticationFailed):
        wrong.active_grants()
    wrong.close()
    assert _admin_connections(root) == [kept]
    again = _open(env)
    assert again is first
    again.close()


def test_a_connection_idle_past_its_limit_is_closed_not_reused(
    make_env: Callable[..., Env], root: redis.Redis
) -> None:
    env = make_env()
    first = _open(env, keep_connection_seconds=0.2)
    first.active_grants()
    first.close()
    (kept,) = _admin_connections(root)
    time.sleep(0.3)
    second = _open(env, keep_connection_seconds=0.2)
    try:
        assert second is not first
        second.active_grants()
        assert kept not in _admin_connections(root)  # the stale one was closed
    finally:
        second.discard()


def test_zero_keeps_nothing(make_env: Callable[..., Env], root: redis.Redis) -> None:
    env = make_env(_doc(keep_connection_seconds=0))
    assert env.engine.execute(env.request(request_id="pool-1")).status == "granted"
    assert _admin_connections(root) == [] and len(redis_session.POOL) == 0


def test_a_kept_connection_the_server_ended_is_replaced(
    make_env: Callable[..., Env], root: redis.Redis
) -> None:
    env = make_env()
    grant = env.engine.execute(env.request(request_id="pool-1"))
    assert grant.status == "granted", grant
    (kept,) = _admin_connections(root)
    root.client_kill_filter(_id=kept)
    revoke = env.engine.execute(env.request("revoke", request_id="pool-1"))
    assert revoke.status == "revoked" and revoke.verified, revoke
    assert kept not in _admin_connections(root)
    assert root.acl_getuser(str(grant.principal)) is None


def test_kept_connections_numbered_above_what_select_can_watch_are_checked_and_reused(
    make_env: Callable[..., Env], root: redis.Redis, high_descriptors: None
) -> None:
    env = make_env()
    session = _open(env)
    session.active_grants()
    assert session._conn._sock.fileno() >= FD_SETSIZE
    session.close()
    (kept,) = _admin_connections(root)
    _one_batch(env)
    assert _admin_connections(root) == [kept]  # healthy, so kept and handed out again
    root.client_kill_filter(_id=kept)
    _one_batch(env)
    assert kept not in _admin_connections(root)  # the ended one is seen, and replaced


def test_a_broken_kept_connection_the_check_cannot_see_never_fails_the_revoke(
    make_env: Callable[..., Env], root: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ended between the checks (ours at take, redis-py's when it hands out the connection) and
    the batch's first command: reconnected once."""
    env = make_env()
    grant = env.engine.execute(env.request(request_id="pool-1"))
    assert grant.status == "granted", grant
    (kept,) = _admin_connections(root)
    take = redis_session.POOL.take

    def take_then_break(*args: Any) -> RedisSession | None:
        session = take(*args)
        root.client_kill_filter(_id=kept)
        return session

    monkeypatch.setattr(redis_session.POOL, "take", take_then_break)
    # redis-py's own look at an idle connection would see the end of stream: the break is made
    # to come after it, as when the server ends the connection while the command is on its way.
    monkeypatch.setattr(redis.connection.Connection, "can_read", lambda *_, **__: False)
    revoke = env.engine.execute(env.request("revoke", request_id="pool-1"))
    assert revoke.status == "revoked" and revoke.verified, revoke
    assert kept not in _admin_connections(root)
    assert root.acl_getuser(str(grant.principal)) is None


def _doc(**connection: Any) -> dict[str, Any]:
    doc = catalog_doc()
    doc["integrations"][INTEGRATION]["connection"].update(connection)
    return doc


def test_a_kept_connection_never_proves_a_credential_the_server_no_longer_takes(
    make_env: Callable[..., Env], root: redis.Redis
) -> None:
    """A kept connection logged in before the password changed: its batch's first round trip
    logs in again, and login() (how the engine proves a re-read credential) uses a new one."""
    env = make_env()
    first = _open(env)
    first.active_grants()
    first.close()
    root.execute_command("ACL", "SETUSER", ADMIN, "resetpass", ">changed-on-the-server")
    try:
        kept = _open(env)
        assert kept is first
        with pytest.raises(AuthenticationFailed):
            kept.active_grants()
        kept.close()
        again = _open(env)
        assert again is not first
        with pytest.raises(AuthenticationFailed):
            again.login()
        again.close()
        assert len(redis_session.POOL) == 0  # refused: nothing under that secret is kept
    finally:
        root.execute_command("ACL", "SETUSER", ADMIN, "resetpass", f">{ADMIN_PASSWORD}")


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
    _one_batch(env, keep_connection_seconds=0.3)
    assert len(redis_session.POOL) == 1
    time.sleep(1.0)
    # No batch since: the admin connection, past its limit, should be gone from the server.
    admins = _admin_connections(root)
    assert admins == [], admins


def test_a_short_idle_limit_is_kept_when_a_longer_one_armed_the_timer_first(
    make_env: Callable[..., Env], root: redis.Redis
) -> None:
    env = make_env()
    # Two integrations (or one whose catalog changed) with different limits share the pool.
    _one_batch(env, keep_connection_seconds=30)
    _one_batch(env, keep_connection_seconds=0.3)
    assert len(redis_session.POOL) == 2
    time.sleep(1.0)
    # Only the one whose 30 s have not passed may still be open on the server.
    admins = _admin_connections(root)
    assert len(admins) == 1, admins
