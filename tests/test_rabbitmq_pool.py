"""Admin HTTP clients kept across batches (jitc.templates.kept, keep_connection_seconds), on the
broker of test_rabbitmq, as the run's own administrator."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from test_rabbitmq import ADMIN_PASSWORD, INTEGRATION, Env, catalog_doc, make_env, root
from userenv import LABEL_KEY

from jitc.errors import AuthenticationFailed, TargetError
from jitc.labels import LabelKey
from jitc.secrets import Secret
from jitc.templates import rabbitmq_session
from jitc.templates.rabbitmq_session import RabbitMQSession

__all__ = ["make_env", "root"]  # fixtures, shared with test_rabbitmq
KEY = LabelKey.from_secret(LABEL_KEY)


@pytest.fixture(autouse=True)
def _empty_pool() -> Iterator[None]:
    rabbitmq_session.POOL.close_all()
    yield
    rabbitmq_session.POOL.close_all()


def _open(env: Env, secret: str = ADMIN_PASSWORD, key: LabelKey = KEY, **extra: Any) -> Any:
    integration = env.engine.catalog.integration(INTEGRATION)
    connection = integration.connection.model_copy(update=extra)
    return integration.template.open(INTEGRATION, connection, Secret(secret), key)


def _kept() -> list[RabbitMQSession]:
    pool: Any = rabbitmq_session.POOL
    return [session for kept in pool._kept.values() for _, _, session in kept]


def _sockets(session: RabbitMQSession) -> list[socket.socket]:
    """The sockets of the client's kept-alive connections (httpcore's pool)."""
    transport: Any = session.client._transport
    found = []
    for conn in transport._pool.connections:
        stream = getattr(getattr(conn, "_connection", None), "_network_stream", None)
        if stream is not None:
            found.append(stream.get_extra_info("socket"))
    return found


def _gone(root: httpx.Client, name: str | None) -> bool:
    return root.get(f"/api/users/{quote(str(name), safe='')}").status_code == 404


def test_a_later_batch_gets_the_client_kept_without_its_secret(
    make_env: Callable[..., Env], root: httpx.Client
) -> None:
    env = make_env()
    grant = env.engine.execute(env.request(request_id="pool-1"))
    assert grant.status == "granted", grant
    (session,) = _kept()
    sock = _sockets(session)[0]
    revoke = env.engine.execute(env.request("revoke", request_id="pool-1"))
    assert revoke.status == "revoked" and revoke.verified, revoke
    assert _gone(root, grant.principal)
    assert _kept() == [session] and _sockets(session)[0] is sock  # one client, one connection
    # Kept, it holds no credential and sends nothing: only a batch's hand-over gives it one.
    assert not isinstance(session.client.auth, httpx.BasicAuth)
    with pytest.raises(TargetError):
        session.client.get("/api/whoami")
    assert all(ADMIN_PASSWORD not in str(part) for part in session.pool_key or ())


def test_another_integration_secret_label_key_or_setting_never_gets_a_kept_client(
    make_env: Callable[..., Env],
) -> None:
    env = make_env()
    first = _open(env)
    first.close()
    integration = env.engine.catalog.integration(INTEGRATION)
    others = [
        lambda: integration.template.open(
            INTEGRATION + "-b", integration.connection, Secret(ADMIN_PASSWORD), KEY
        ),
        lambda: _open(env, key=LabelKey.from_secret(LABEL_KEY + "x")),
        lambda: _open(env, timeout=7.0),
    ]
    for open_other in others:
        other = open_other()
        assert other is not first
        other.discard()
    # A rotated secret (here: a wrong one) gets its own client, which the broker refuses.
    with pytest.raises(AuthenticationFailed):
        _open(env, secret="not-the-password")
    assert _kept() == [first]
    again = _open(env)
    assert again is first
    again.close()


def test_a_refused_secret_drops_every_client_kept_under_it(
    make_env: Callable[..., Env], root: httpx.Client
) -> None:
    env = make_env()
    first = _open(env)
    first.close()
    admin = str(env.engine.catalog.integration(INTEGRATION).connection.user)  # type: ignore[attr-defined]
    root.put(f"/api/users/{admin}", json={"password": "changed", "tags": "administrator"})
    try:
        with pytest.raises(AuthenticationFailed):
            _open(env)  # the kept client, handed the old secret, is refused at whoami
        assert _kept() == [] and first.client.is_closed
    finally:
        root.put(
            f"/api/users/{admin}", json={"password": ADMIN_PASSWORD, "tags": "administrator"}
        ).raise_for_status()


def test_a_client_idle_past_its_limit_is_closed_not_reused(make_env: Callable[..., Env]) -> None:
    env = make_env()
    first = _open(env, keep_connection_seconds=0.2)
    first.close()
    time.sleep(0.3)
    second = _open(env, keep_connection_seconds=0.2)
    try:
        assert second is not first and first.client.is_closed
    finally:
        second.discard()


def test_zero_keeps_nothing(make_env: Callable[..., Env]) -> None:
    doc = catalog_doc()
    doc["integrations"][INTEGRATION]["connection"]["keep_connection_seconds"] = 0
    env = make_env(doc)
    assert env.engine.execute(env.request(request_id="pool-0")).status == "granted"
    assert _kept() == []


def test_a_broken_kept_connection_never_fails_the_revoke(
    make_env: Callable[..., Env], root: httpx.Client
) -> None:
    env = make_env()
    grant = env.engine.execute(env.request(request_id="pool-1"))
    assert grant.status == "granted", grant
    (session,) = _kept()
    for sock in _sockets(session):
        sock.shutdown(socket.SHUT_RDWR)
    revoke = env.engine.execute(env.request("revoke", request_id="pool-1"))
    assert revoke.status == "revoked" and revoke.verified, revoke
    assert _gone(root, grant.principal)


def test_a_kept_rabbitmq_session_holds_no_label_key(
    make_env: Callable[..., Env], root: httpx.Client
) -> None:
    env = make_env()
    session = _open(env)
    session.active_grants()
    session.close()
    assert len(rabbitmq_session.POOL) == 1  # kept, between batches
    held = [v for v in vars(session).values() if isinstance(v, LabelKey)]
    assert all(LABEL_KEY.encode() not in key.secret for key in held), "label key kept"
