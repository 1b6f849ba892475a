"""The Secrets Manager rotation function: a step invoked out of order never leaves AWSCURRENT
on a password the target refuses, and one secret never serves two servers' admins."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError
from test_aws_rotation import (  # noqa: F401  (fixtures)
    FIRST,
    Rotation,
    cluster,
    deployed,
    login,
    start,
    step,
    value,
)

from jitc.aws import rotation
from jitc.catalog import parse_catalog


def test_finish_before_set_never_makes_current_a_password_the_target_refuses(
    deployed: Rotation,  # noqa: F811
    cluster: dict[str, Any],  # noqa: F811
) -> None:
    deployed.die_at = {"setSecret"}
    token = str(uuid.uuid4())
    with pytest.raises(ClientError):
        start(token)  # createSecret ran; setSecret died: the target still takes FIRST
    assert login(cluster, FIRST)
    # A finishSecret delivered for this version before its setSecret succeeded (a replayed or
    # hand-invoked step): refusing it, or setting the password first, would both be safe.
    with pytest.raises(ValueError):
        step("finishSecret", token)
    assert value() == FIRST and login(cluster, value())
    deployed.die_at = set()  # Secrets Manager retries the rotation: it completes
    for name in ("setSecret", "testSecret", "finishSecret"):
        step(name, token)
    assert login(cluster, value()) and not login(cluster, FIRST)


def test_two_brokers_sharing_one_secret_are_refused_before_any_change() -> None:
    """Two RabbitMQ brokers (no host or port of their own: an API URL) whose admins share one
    secret: setSecret would change the password on the first broker only, and testSecret fail
    on the second at every retry, leaving the first on a value only AWSPENDING holds."""
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:jitc/rabbit-AbCdEf"

    def broker(url: str) -> dict[str, Any]:
        return {
            "kind": "rabbitmq",
            "connection": {"api_url": url, "user": "jitc-admin", "user_prefix": "jit-"},
            "credentials": f"aws-sm:{arn}#password",
            "permissions": {"r": {"template": "read-only", "resources": ["app"]}},
        }

    cat = parse_catalog(
        {
            "connector": {"label_key": "env:A13_UNUSED"},
            "integrations": {
                "mq-eu": broker("https://mq-eu.example.com:15671"),
                "mq-us": broker("https://mq-us.example.com:15671"),
            },
        }
    )
    with pytest.raises(rotation.RotationError, match="share this secret"):
        rotation.integrations_of(cat, arn, "jitc/rabbit")


def test_an_admin_account_another_secret_also_holds_is_refused() -> None:
    """One PostgreSQL admin, two databases, a secret each: rotated through one, the other's
    old password would be refused from then on."""
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:jitc/pg-a-AbCdEf"

    def database(secret: str, dbname: str) -> dict[str, Any]:
        connection = {"host": "db.example.com", "dbname": dbname, "user": "jitc_admin"}
        return {
            "kind": "postgresql",
            "connection": {**connection, "role_prefix": "jit_"},
            "credentials": f"aws-sm:{secret}#password",
            "permissions": {"r": {"template": "read-only", "resources": ["public"]}},
        }

    cat = parse_catalog(
        {
            "connector": {"label_key": "env:A13_UNUSED"},
            "integrations": {"sales": database(arn, "sales"), "hr": database("jitc/pg-b", "hr")},
        }
    )
    with pytest.raises(rotation.RotationError, match="same admin account"):
        rotation.integrations_of(cat, arn, "jitc/pg-a")
    cat = parse_catalog(
        {
            "connector": {"label_key": "env:A13_UNUSED"},
            "integrations": {"sales": database(arn, "sales"), "hr": database(arn, "hr")},
        }
    )
    assert [i.name for i in rotation.integrations_of(cat, arn, "jitc/pg-a")] == ["sales", "hr"]


def test_a_refused_account_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """An account the rotation refuses (say, a MySQL admin with another host entry) fails the
    step with the reason, not only the exception's type: the operator has to act on it."""
    from awsharness import LambdaContext

    from jitc.errors import Refused

    def refuse(*_: Any) -> None:
        raise Refused("integration", "db: the admin account 'a' has other host entries")

    monkeypatch.setattr(rotation, "catalog", lambda: None)
    monkeypatch.setattr(rotation.runtime, "client", lambda _: None)
    monkeypatch.setattr(rotation, "rotate", refuse)
    with pytest.raises(rotation.RotationError, match="other host entries"):
        rotation.handler({"Step": "setSecret"}, LambdaContext(function_name="jitc-rotation"))
