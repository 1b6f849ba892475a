"""Redis: a revoke on a server whose channels default to all, and the sweep of a grant made
again under its own tombstone (users prefixed `advq`).

1. On a Redis started with `acl-pubsub-default allchannels` (the Redis 6.x default, kept by
   upgraded servers) `reset` gives every channel, and Redis then refuses any `&pattern` after
   it: the tombstone resets the channels first, or every revoke would fail and no tombstone be
   written, and a redelivered grant would be made again after its revoke. Run on a private
   redis-server of this file's own (the shared one is never reconfigured).
2. A delivery cut short between its write and its look for the tombstone leaves our live user
   under our own tombstone; the tombstone proves the grant was revoked, so the sweep ends the
   user at once, not at its expiry, even when nothing redelivers the grant.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import userenv
from redis.backoff import NoBackoff
from redis.retry import Retry
from userenv import LABEL_KEY, UserEnv, engine_parts

from jitc.errors import TargetError
from jitc.labels import LabelKey
from jitc.models import Identity, derive_grant_id
from jitc.secrets import Secret
from jitc.templates.base import GrantSpec
from jitc.templates.redis import Permission as RedisPermission

HOST = os.environ.get("JITC_TEST_REDIS_HOST", "127.0.0.1")
PORT = int(os.environ.get("JITC_TEST_REDIS_PORT", "6379"))
RUN = secrets.token_hex(3)
PREFIX = f"advq{RUN}-"
KEYS = f"advq{RUN}:app:*"
ADMIN = f"advq{RUN}-admin"
ADMIN_PASSWORD = secrets.token_urlsafe(18)
# What the README says the connector's admin needs.
ADMIN_RULES = (
    "resetkeys",
    "resetchannels",
    "-@all",
    "+acl",
    "+client|list",
    "+client|setname",
    "+ping",
    "+info",
)


def _doc(integration: str, port: int) -> dict[str, Any]:
    connection = {
        "host": HOST,
        "port": port,
        "user": ADMIN,
        "user_prefix": PREFIX,
        "tls": False,
        "acl_save": "never",
        "terminate_wait_seconds": 1,
        "keep_connection_seconds": 0,
    }
    perms = {"read-only": {"template": "read-only", "resources": [KEYS]}}
    return userenv.catalog_doc(integration, "redis", connection, perms)


def _env(integration: str, port: int) -> UserEnv:
    parts = engine_parts(_doc(integration, port), ADMIN_PASSWORD)
    return UserEnv(**parts, integration=integration, resource=KEYS)


def _can_login(port: int, creds: dict[str, str]) -> bool:
    client = redis.Redis(
        host=HOST,
        port=port,
        username=creds["username"],
        password=creds["password"],
        socket_timeout=5,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        client.ping()
    except redis.AuthenticationError:
        return False
    finally:
        client.close()
    return True


def _mine(client: redis.Redis) -> list[str]:
    return [str(n) for n in client.execute_command("ACL", "USERS") if str(n).startswith(PREFIX)]


def _cleanup(client: redis.Redis) -> None:
    names = _mine(client)
    if names:
        client.execute_command("ACL", "DELUSER", *names)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def private_redis() -> Iterator[tuple[int, redis.Redis]]:
    """A redis-server of this test's own, as an upgraded 6.x server is configured."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    workdir = tempfile.mkdtemp(prefix="advq-redis-")
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--acl-pubsub-default",
            "allchannels",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=5)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.execute_command("ACL", "SETUSER", ADMIN, "on", f">{ADMIN_PASSWORD}", *ADMIN_RULES)
        yield port, client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def shared_redis() -> Iterator[redis.Redis]:
    client = redis.Redis(host=HOST, port=PORT, decode_responses=True, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable at {HOST}:{PORT}: {exc}")
    client.execute_command("ACL", "SETUSER", ADMIN, "on", f">{ADMIN_PASSWORD}", *ADMIN_RULES)
    try:
        yield client
    finally:
        _cleanup(client)
        client.execute_command("ACL", "DELUSER", ADMIN)
        client.close()


def test_redis_revoke_works_on_a_server_whose_acl_pubsub_default_is_allchannels(
    private_redis: tuple[int, redis.Redis],
) -> None:
    """The revoke ends the grant, verifies, and leaves a tombstone that refuses the grant's
    redelivery, on a server with `acl-pubsub-default allchannels` too (there `reset` turns on
    every channel, and a `&label` right after it is an error)."""
    port, _client = private_redis
    env = _env(f"advq-ac-{RUN}", port)
    request = env.request(request_id="ac-1")
    granted = env.engine.execute(request)
    assert granted.status == "granted", granted
    creds = env.credentials(granted.sealed_credentials)
    assert _can_login(port, creds)

    revoke = env.engine.execute(env.request("revoke", request_id="ac-1"))
    again = env.engine.execute(env.request("revoke", request_id="ac-1"))
    redelivered = env.engine.execute(request)
    back = _can_login(port, creds)
    seen = (revoke.status, revoke.verified, again.status, redelivered.status, back)
    assert seen == ("revoked", True, "revoked", "refused", False), (seen, revoke.message)


def test_redis_sweep_ends_our_live_user_found_under_our_own_tombstone(
    shared_redis: redis.Redis,
) -> None:
    """A delivery reads the server, a revoke ends the grant (verified, tombstone written), then
    the delivery's write lands and its connection is lost before its tombstone check. Nothing
    redelivers it. The sweep sees both the live user and its tombstone: the grant was revoked,
    so the user must go now, not at its expiry."""
    integration = f"advq-sw-{RUN}"
    env = _env(integration, PORT)
    catalog_integration = env.engine.catalog.integration(integration)
    key = LabelKey.from_secret(LABEL_KEY)
    first, again, revoker = (
        catalog_integration.template.open(
            integration, catalog_integration.connection, Secret(ADMIN_PASSWORD), key
        )
        for _ in range(3)
    )
    grant_id = derive_grant_id(integration, "cut-short")
    name = f"{PREFIX}{grant_id}"
    spec = GrantSpec(
        grant_id=grant_id,
        request_id="cut-short",
        integration=integration,
        permission_name="read-only",
        permission=RedisPermission(template="read-only", resources=[KEYS]),
        resources=(KEYS,),
        identity=Identity(email="a@example.com"),
        expires_at=datetime.now(UTC) + timedelta(minutes=15),
        request_digest=f"d-cut-short-{grant_id}",
    )
    try:
        creds = first.grant(spec).credentials
        assert creds is not None
        until = datetime.now(UTC) + timedelta(hours=1)
        read = again._read_for_grant
        raced: list[Any] = []

        def read_then_race(*names: str, **options: Any) -> Any:
            found = read(*names, **options)
            if not raced:
                raced.append(revoker.revoke(grant_id, until))
            return found

        again._read_for_grant = read_then_race
        run = again._run

        def write_then_lose(commands: Any, meanwhile: Any = None) -> Any:
            if commands and tuple(commands[0][:3]) == ("ACL", "SETUSER", name):
                run(commands[:1])
                raise TargetError("connection lost")
            return run(commands, meanwhile)

        again._run = write_then_lose
        with pytest.raises(TargetError):
            again.grant(spec)
        assert raced and raced[0].verified, raced
        assert _can_login(PORT, creds)  # the state the sweep finds: live under its tombstone

        report = env.engine.sweep()
        assert not _can_login(PORT, creds), (
            f"the sweep left {name} live under its own tombstone: {report!r}"
        )
    finally:
        again.discard()
        first.close()
        revoker.close()
