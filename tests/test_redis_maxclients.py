"""A grantee who takes every connection the server allows (Redis has no per-user limit): the
connector's revoke cannot connect, and must say so and be retried, never be dropped or reported
done; once a connection frees, the retry ends the grant and every connection of it. An admin
connection kept from the grant's batch (`keep_connection_seconds`) holds its slot, so the revoke
gets through at once. On a private Redis with a small `maxclients`, so the shared server is never
filled."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import userenv
from redis.backoff import NoBackoff
from redis.retry import Retry
from test_redis_aclfile import Private
from userenv import UserEnv, engine_parts

from jitc.templates import redis_session

MAXCLIENTS = 12


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Private]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed here")
    private = Private(tmp_path, False, "--maxclients", str(MAXCLIENTS))
    private.start()
    redis_session.POOL.close_all()
    yield private
    redis_session.POOL.close_all()
    private.stop()


@pytest.mark.parametrize("keep", [0, 300])
def test_a_grantee_holding_every_connection_stalls_the_revoke_only_until_one_frees(
    server: Private, keep: int
) -> None:
    connection = {
        "host": "127.0.0.1",
        "port": server.port,
        "tls": False,
        "acl_save": "never",
        "user_prefix": "jit-",
        "keep_connection_seconds": keep,
    }
    permissions = {"read-only": {"template": "read-only", "resources": ["app:*"]}}
    doc = userenv.catalog_doc("redis-max", "redis", connection, permissions)
    del doc["integrations"]["redis-max"]["credentials"]  # the private server's nopass default
    env = UserEnv(**engine_parts(doc, ""), integration="redis-max", resource="app:*")
    outcome = env.engine.execute(env.request(request_id="hog-1"))
    assert outcome.status == "granted", outcome
    creds = env.credentials(outcome.sealed_credentials)
    held: list[redis.Connection] = []
    try:
        while True:
            conn = redis.Connection(
                port=server.port,
                username=creds["username"],
                password=creds["password"],
                retry=Retry(NoBackoff(), 0),
            )
            try:
                conn.connect()
                conn.send_command("PING")
                conn.read_response()
            except redis.ConnectionError:
                conn.disconnect()
                break
            held.append(conn)
            assert len(held) <= MAXCLIENTS
        if keep:
            assert len(held) == MAXCLIENTS - 1  # the grant's admin connection holds the last
        else:
            stalled = env.engine.execute(env.request("revoke", request_id="hog-1"))
            assert stalled.status == "failed" and stalled.verified is None, stalled
            assert creds["password"] not in (stalled.message or "")
            held.pop().disconnect()  # one frees: the queue's retry now gets through
        revoke = env.engine.execute(env.request("revoke", request_id="hog-1"))
        assert revoke.status == "revoked" and revoke.verified, revoke
        for conn in held:
            with pytest.raises(redis.ConnectionError):
                conn.send_command("PING")
                conn.read_response()
    finally:
        for conn in held:
            conn.disconnect()
