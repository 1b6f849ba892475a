"""The Secrets Manager rotation function (jitc.aws.rotation) on moto, rotating a Redis admin of
this run's own on the shared Redis (which checks passwords) while a worker grants and revokes;
the harness is `test_aws_rotation`'s (moto hands the function's invocations to the handler)."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from awsharness import acting_as, deploy
from test_aws_rotation import (
    Rotation,
    rotation_function,
    stages,
    start,
    step,
    value,
    worker_engine,
)
from userenv import grant_or_revoke, grant_revoke_loop

from jitc.local import MemorySink

RUN = secrets.token_hex(3)
ADMIN = f"s{RUN}-smadmin"
PREFIX = f"s{RUN}-"
KEYS = f"s{RUN}:*"
FIRST = f"FIRST-{secrets.token_hex(12)}"
RULES = ("resetkeys", "resetchannels", "-@all", "+acl", "+client|kill", "+client|setname")
RULES += ("+ping", "+info")


@pytest.fixture
def root() -> Iterator[redis.Redis]:
    conn = redis.Redis(decode_responses=True, socket_timeout=5)
    try:
        conn.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable: {exc}")
    conn.execute_command("ACL", "SETUSER", ADMIN, "reset", "on", f">{FIRST}", *RULES)
    yield conn
    for name in conn.execute_command("ACL", "USERS"):
        if name.startswith(PREFIX):
            conn.execute_command("ACL", "DELUSER", name)
    conn.close()


@pytest.fixture
def deployed(
    aws: str, root: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Rotation]:
    connection = {
        "host": "127.0.0.1",
        "tls": False,
        "user": ADMIN,
        "user_prefix": PREFIX,
        "acl_save": "never",
    }
    doc = {
        "integrations": {
            "kv": {
                "kind": "redis",
                "connection": connection,
                "credentials": "aws-sm:jitc/pg-admin#password",
                "permissions": {"read": {"template": "read-only", "resources": [KEYS]}},
            }
        }
    }
    deploy(tmp_path, doc, admin_secret=FIRST)
    with rotation_function(secrets.token_hex(32), monkeypatch) as function:
        yield function


def login(password: str) -> bool:
    conn = redis.Redis(username=ADMIN, password=password, socket_timeout=5)
    try:
        conn.ping()
    except redis.AuthenticationError:
        return False
    finally:
        conn.close()
    return True


request = grant_or_revoke("kv", "read", KEYS)


def test_a_redis_rotation_under_load_fails_nothing_and_says_a_restart_reverts_it(
    deployed: Rotation, root: redis.Redis
) -> None:
    sink = MemorySink()
    seen = [FIRST]
    with grant_revoke_loop(
        lambda: worker_engine(sink), request, "sm-", lambda: acting_as("worker")
    ) as loop:
        for _ in range(2):
            start()
            seen.append(value())
    assert loop.failures == []
    assert deployed.steps == ["createSecret", "setSecret", "testSecret", "finishSecret"] * 2
    assert [login(pw) for pw in seen] == [False, False, True]
    (stored,) = root.execute_command("ACL", "GETUSER", ADMIN)["passwords"]
    assert stored == hashlib.sha256(seen[-1].encode()).hexdigest()
    logs = deployed.logs.getvalue()
    assert "a restart of the Redis server may bring the old one back" in logs
    shown = logs + json.dumps([e.model_dump(mode="json") for e in sink.events])
    assert not any(pw in shown for pw in seen)


def test_each_redis_step_replayed_is_a_no_op(deployed: Rotation) -> None:
    token = start()["VersionId"]
    assert login(value()) and not login(FIRST)
    before = (stages(), value(), value(VersionStage="AWSPREVIOUS"))
    for name in ("createSecret", "setSecret", "testSecret", "finishSecret"):
        step(name, token)
        step(name, token)
    assert (stages(), value(), value(VersionStage="AWSPREVIOUS")) == before
    assert login(value())
