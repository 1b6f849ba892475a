"""The Secrets Manager rotation function (jitc.aws.rotation) on moto, rotating the admin password
of a private PostgreSQL cluster that checks passwords.

Rotations start as on AWS: `RotateSecret` with the function's ARN; moto stages the new version
as AWSPENDING and invokes the function once per step. moto cannot run a Lambda without docker,
so its Lambda backend hands that one function's invocations to the handler in-process (the
handler's own calls still go to moto over HTTP, recorded as the `rotation` function's for the
least-privilege test). A step can be made to die, as a killed function would.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import awsharness
import boto3
import psycopg
import pytest
from awsharness import ACCOUNT, LambdaContext, acting_as, client, deploy
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.awslambda.models import LambdaBackend
from pgtest import private_cluster
from psycopg import sql
from userenv import grant_or_revoke, grant_revoke_loop

from jitc.aws import rotation, runtime
from jitc.engine import Engine
from jitc.local import MemorySink, NullScheduler

SUPER = "super-pw-of-the-rotation-cluster"
FIRST = "FIRST-canary-admin-pw-0123456789"
ADMIN = "jitc_sm_admin"
SECRET = "jitc/pg-admin"
LABEL_KEY = uuid.uuid4().hex * 2
FUNCTION = f"arn:aws:lambda:{awsharness.REGION}:{ACCOUNT}:function:jitc-rotation"


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    with private_cluster("scram-sha-256", SUPER) as params:
        with psycopg.connect(**params, password=SUPER, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                    sql.Identifier(ADMIN), sql.Literal(FIRST)
                )
            )
        yield params


class Rotation:
    """The deployed function as moto's Lambda service runs it, with a way to kill a step."""

    def __init__(self) -> None:
        self.die_at: set[str] = set()
        self.steps: list[str] = []
        self.acting = "rotation"  # whose calls these are, for the least-privilege record
        self.logs = io.StringIO()

    def invoke(self, event: dict[str, Any]) -> None:
        step = str(event.get("Step"))
        self.steps.append(step)
        if step in self.die_at:
            raise RuntimeError(f"killed before {step}")
        with acting_as(self.acting):
            rotation.handler(event, LambdaContext(function_name="jitc-rotation"))


@pytest.fixture
def deployed(
    aws: str, cluster: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Rotation]:
    with psycopg.connect(**cluster, password=SUPER, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(ADMIN), sql.Literal(FIRST))
        )
    doc = {
        "integrations": {
            "pg": {
                "kind": "postgresql",
                "connection": {**cluster, "user": ADMIN, "role_prefix": "sm_"},
                "credentials": f"aws-sm:{SECRET}#password",
                "permissions": {"read": {"template": "read-only", "resources": ["public"]}},
            }
        }
    }
    deploy(tmp_path, doc, admin_secret=FIRST)
    # One label key for the module's cluster, whose bundle roles outlive each test's moto.
    with rotation_function(LABEL_KEY, monkeypatch) as function:
        yield function


@contextmanager
def rotation_function(label_key: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rotation]:
    """The rotation function, after `deploy`, created in moto's Lambda and handed the
    invocations of its rotations, with `label_key` as the deployment's label key; every log
    of the block goes to its `logs`."""
    client("secretsmanager").put_secret_value(
        SecretId="jitc/label", SecretString=json.dumps({"key": label_key})
    )
    rotation.catalog.cache_clear()
    iam, lam = client("iam"), client("lambda")
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
    role = iam.create_role(RoleName="jitc-rotation", AssumeRolePolicyDocument=json.dumps(trust))
    lam.create_function(
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
    logging.getLogger().setLevel(logging.DEBUG)  # a hostile reader gets every log there is
    try:
        yield function
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(previous)
        runtime.reset()


def start(token: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "SecretId": SECRET,
        "RotationLambdaARN": FUNCTION,
        "RotationRules": {"AutomaticallyAfterDays": 30},
    }
    if token:
        params["ClientRequestToken"] = token
    # moto runs the steps inside RotateSecret, so a killed step fails the call: no retry of
    # the call (AWS's is asynchronous; Secrets Manager itself retries with the same version).
    result: dict[str, Any] = once().rotate_secret(**params)
    return result


def once() -> Any:
    return boto3.session.Session().client(
        "secretsmanager",
        region_name=awsharness.REGION,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )


def stages() -> dict[str, list[str]]:
    found: dict[str, list[str]] = client("secretsmanager").describe_secret(SecretId=SECRET)[
        "VersionIdsToStages"
    ]
    return found


def value(**selector: str) -> str:
    selector = selector or {"VersionStage": "AWSCURRENT"}
    raw = client("secretsmanager").get_secret_value(SecretId=SECRET, **selector)["SecretString"]
    return str(json.loads(raw)["password"])


def login(cluster: dict[str, Any], password: str) -> bool:
    try:
        psycopg.connect(**{**cluster, "user": ADMIN}, password=password, connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


def step(name: str, token: str) -> None:
    event = {"Step": name, "SecretId": SECRET, "ClientRequestToken": token}
    with acting_as("rotation"):
        rotation.handler(event, LambdaContext(function_name="jitc-rotation"))


def worker_engine(sink: MemorySink) -> Engine:
    return Engine(runtime.catalog(), runtime.secret_stores(), NullScheduler(), sink)


request = grant_or_revoke("pg", "read", "public")


def test_a_full_rotation_under_load_fails_nothing_and_the_old_password_is_refused(
    deployed: Rotation, cluster: dict[str, Any]
) -> None:
    sink = MemorySink()
    seen = [FIRST]
    with grant_revoke_loop(
        lambda: worker_engine(sink), request, "sm-", lambda: acting_as("worker")
    ) as loop:
        for _ in range(3):
            start()
            seen.append(value())
    assert loop.failures == []
    assert deployed.steps == ["createSecret", "setSecret", "testSecret", "finishSecret"] * 3
    assert len(set(seen)) == 4
    assert [login(cluster, pw) for pw in seen] == [False, False, False, True]
    # No version is left AWSPENDING, and the previous one is AWSPREVIOUS.
    assert sorted(s for v in stages().values() for s in v) == ["AWSCURRENT", "AWSPREVIOUS"]
    shown = deployed.logs.getvalue() + json.dumps([e.model_dump(mode="json") for e in sink.events])
    assert not any(pw in shown for pw in seen)


def test_each_step_replayed_is_a_no_op(deployed: Rotation, cluster: dict[str, Any]) -> None:
    token = start()["VersionId"]
    assert login(cluster, value()) and not login(cluster, FIRST)
    before = (stages(), value(), value(VersionStage="AWSPREVIOUS"))
    for name in ("createSecret", "setSecret", "testSecret", "finishSecret"):
        step(name, token)  # Secrets Manager may call any step again
        step(name, token)
    assert (stages(), value(), value(VersionStage="AWSPREVIOUS")) == before
    assert login(cluster, value())


def test_a_rotation_killed_between_set_and_finish_keeps_the_connector_working(
    deployed: Rotation, cluster: dict[str, Any]
) -> None:
    deployed.die_at = {"testSecret"}
    token = str(uuid.uuid4())
    with pytest.raises(ClientError):
        start(token)
    pending = value(VersionId=token, VersionStage="AWSPENDING")
    assert login(cluster, pending) and not login(cluster, FIRST)
    assert value() == FIRST  # AWSCURRENT still holds the old password
    sink = MemorySink()
    with acting_as("worker"):
        engine = worker_engine(sink)
        assert engine.execute(request("mid-1", "grant")).status == "granted"
        assert engine.execute(request("mid-1", "revoke")).status == "revoked"
    # Secrets Manager retries the rotation with the same version id: it finishes, changing
    # the password no more.
    for name in ("createSecret", "setSecret", "testSecret", "finishSecret"):
        step(name, token)
    assert value() == pending and login(cluster, pending) and not login(cluster, FIRST)


def test_a_step_of_a_rotation_that_lost_the_race_changes_nothing(
    deployed: Rotation, cluster: dict[str, Any]
) -> None:
    """Two rotations racing: the one whose version is no longer AWSPENDING stops at its next
    step; and a target left on the loser's password is repaired by the winner's setSecret."""
    deployed.die_at = {"setSecret"}
    first = str(uuid.uuid4())
    with pytest.raises(ClientError):
        start(first)  # version `first` is AWSPENDING with a value; the target is untouched
    loser = value(VersionId=first, VersionStage="AWSPENDING")
    # The loser's setSecret ran before the winner took AWSPENDING: the target takes `loser`.
    deployed.die_at = set()
    step("setSecret", first)
    assert login(cluster, loser)
    second = str(uuid.uuid4())
    deployed.die_at = {"setSecret"}
    with pytest.raises(ClientError):
        start(second)
    with pytest.raises(ValueError, match="not AWSPENDING"):
        step("testSecret", first)  # the loser stops here
    with pytest.raises(ValueError, match="not AWSPENDING"):
        step("finishSecret", first)
    for name in ("setSecret", "testSecret", "finishSecret"):
        step(name, second)
    winner = value()
    assert winner not in (loser, FIRST)
    assert [login(cluster, pw) for pw in (FIRST, loser, winner)] == [False, False, True]


def test_bad_events_are_refused_before_any_change(
    deployed: Rotation, cluster: dict[str, Any]
) -> None:
    token = str(uuid.uuid4())
    for event in (
        {"Step": "dropSecret", "SecretId": SECRET, "ClientRequestToken": token},
        {"Step": "setSecret", "SecretId": SECRET, "ClientRequestToken": "short"},
        {"Step": "setSecret", "SecretId": SECRET, "ClientRequestToken": token},  # unknown
    ):
        with pytest.raises(ValueError), acting_as("rotation"):
            rotation.handler(event, LambdaContext(function_name="jitc-rotation"))
    assert login(cluster, FIRST) and value() == FIRST


def test_a_secret_no_integration_uses_is_never_rotated(deployed: Rotation) -> None:
    """The connector's label key is a secret too, but no integration's credential: the function
    refuses it (and its policy names only the rotated secrets)."""
    sm = client("secretsmanager")
    before = sm.get_secret_value(SecretId="jitc/label")["SecretString"]
    # On AWS its policy already refuses this secret; here the code's own check is shown.
    deployed.acting = "rotation-outside-its-policy"
    with pytest.raises(ClientError):
        once().rotate_secret(
            SecretId="jitc/label",
            RotationLambdaARN=FUNCTION,
            RotationRules={"AutomaticallyAfterDays": 30},
        )
    assert deployed.steps == ["createSecret"]
    after = sm.get_secret_value(SecretId="jitc/label", VersionStage="AWSCURRENT")["SecretString"]
    assert after == before


def test_a_rotation_under_the_terraform_policy(
    deployed: Rotation, cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The four steps run with the credentials of a role whose only policy is rotation.tf's
    document: a call the module does not allow fails here as on AWS."""
    from moto.core.authorization import enable_iam_authentication
    from tfpolicy import render

    deployed.die_at = {"createSecret"}  # Secrets Manager stages the version; the steps follow
    token = str(uuid.uuid4())
    with pytest.raises(ClientError):
        start(token)
    arn = f"arn:aws:{{}}:{awsharness.REGION}:{ACCOUNT}:{{}}".format
    document = render(
        "rotation",
        {
            "local.rotation_log_arn": arn("logs", "log-group:/aws/lambda/r:*"),
            "local.rotation_secret_arns": [arn("secretsmanager", f"secret:{SECRET}-??????")],
            "local.rotation_function_arn": FUNCTION,
        },
    )
    lacking = {
        **document,
        "Statement": [
            {**st, "Action": [a for a in st["Action"] if a != "secretsmanager:PutSecretValue"]}
            for st in document["Statement"]
        ],
    }
    with enable_iam_authentication():
        # The control: without PutSecretValue createSecret fails, so enforcement is on.
        monkeypatch.setitem(awsharness.FUNCTION_CREDENTIALS, "rotation", _role("lacking", lacking))
        with pytest.raises(ValueError, match="ClientError"):
            step_as_function("createSecret", token)
        monkeypatch.setitem(awsharness.FUNCTION_CREDENTIALS, "rotation", _role("full", document))
        for name in ("createSecret", "setSecret", "testSecret", "finishSecret"):
            step_as_function(name, token)
    new = value()
    assert new != FIRST and login(cluster, new) and not login(cluster, FIRST)


def step_as_function(name: str, token: str) -> None:
    event = {"Step": name, "SecretId": SECRET, "ClientRequestToken": token}
    awsharness.invoke("rotation", rotation.handler, event)


def _role(name: str, document: dict[str, Any]) -> dict[str, str]:
    """A role whose only policy is `document`, assumed: its credentials."""
    from moto.core.authorization import disable_iam_authentication

    iam, sts = client("iam"), client("sts")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
             "Action": "sts:AssumeRole"}
        ],
    }  # fmt: skip
    with disable_iam_authentication():
        iam.create_role(RoleName=f"jitc-rot-{name}", AssumeRolePolicyDocument=json.dumps(trust))
        iam.put_role_policy(
            RoleName=f"jitc-rot-{name}", PolicyName="p", PolicyDocument=json.dumps(document)
        )
        got = sts.assume_role(
            RoleArn=f"arn:aws:iam::{ACCOUNT}:role/jitc-rot-{name}", RoleSessionName="rotation"
        )["Credentials"]
    return {
        "AWS_ACCESS_KEY_ID": got["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": got["SecretAccessKey"],
        "AWS_SESSION_TOKEN": got["SessionToken"],
    }
