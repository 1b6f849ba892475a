"""The Secrets Manager rotation function (jitc.aws.rotation) on moto, rotating a Redis admin of
this run's own on the shared Redis (which checks passwords) while a worker grants and revokes;
the harness is `test_aws_rotation`'s (moto hands the function's invocations to the handler)."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from awsharness import acting_as, client, deploy
from moto.awslambda.models import LambdaBackend
from test_aws_rotation import FUNCTION, Rotation, stages, start, step, value, worker_engine

from jitc.aws import rotation, runtime
from jitc.local import MemorySink
from jitc.messages import parse_request
from jitc.models import derive_grant_id
from jitc.sealing import box_keypair

RUN = secrets.token_hex(3)
ADMIN = f"s{RUN}-smadmin"
PREFIX = f"s{RUN}-"
KEYS = f"s{RUN}:*"
FIRST = f"FIRST-{secrets.token_hex(12)}"
RULES = ("resetkeys", "resetchannels", "-@all", "+acl", "+client|list", "+client|setname")
RULES += ("+ping", "+info")
_, BOX_PUBLIC = box_keypair()


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
        "terminate_wait_seconds": 0,
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
    client("secretsmanager").put_secret_value(
        SecretId="jitc/label", SecretString=json.dumps({"key": secrets.token_hex(32)})
    )
    rotation.catalog.cache_clear()
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = client("iam").create_role(
        RoleName="jitc-rotation", AssumeRolePolicyDocument=json.dumps(trust)
    )
    client("lambda").create_function(
        FunctionName="jitc-rotation",
        Runtime="python3.11",
        Role=role["Role"]["Arn"],
        Handler="jitc.aws.rotation.handler",
        Code={"ZipFile": b"PK\x05\x06" + b"\0" * 18},
    )
    function = Rotation()
    original = LambdaBackend.invoke

    def invoke(self: Any, function_name: str, body: Any, **rest: Any) -> Any:
        if function_name != FUNCTION:
            return original(self, function_name, body=body, **rest)
        function.invoke(json.loads(body))
        return b"null"

    monkeypatch.setattr(LambdaBackend, "invoke", invoke)
    handler = logging.StreamHandler(function.logs)
    logging.getLogger().addHandler(handler)
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        yield function
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(previous)
        runtime.reset()


def login(password: str) -> bool:
    conn = redis.Redis(username=ADMIN, password=password, socket_timeout=5)
    try:
        conn.ping()
    except redis.AuthenticationError:
        return False
    finally:
        conn.close()
    return True


def request(request_id: str, action: str) -> Any:
    doc: dict[str, Any] = {"request_id": request_id, "action": action, "integration": "kv"}
    if action == "grant":
        doc.update(
            permission="read",
            resources=[KEYS],
            identity={"email": "a@example.com", "username": "a", "public_key": BOX_PUBLIC},
            duration="10m",
        )
    else:
        doc["grant_id"] = derive_grant_id("kv", request_id)
    return parse_request(json.dumps(doc))


def test_a_redis_rotation_under_load_fails_nothing_and_says_a_restart_reverts_it(
    deployed: Rotation, root: redis.Redis
) -> None:
    failures: list[str] = []
    stop = threading.Event()
    sink = MemorySink()

    def loop() -> None:
        with acting_as("worker"):
            engine = worker_engine(sink)
            n = 0
            while not stop.is_set() or n < 4:
                n += 1
                for action in ("grant", "revoke"):
                    outcome = engine.execute(request(f"sm-{n}", action))
                    if outcome.status not in ("granted", "revoked"):
                        failures.append(f"{action} {n}: {outcome.status} {outcome.message}")

    worker = threading.Thread(target=loop)
    worker.start()
    seen = [FIRST]
    try:
        for _ in range(2):
            start()
            seen.append(value())
    finally:
        stop.set()
        worker.join(timeout=120)
    assert failures == []
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
