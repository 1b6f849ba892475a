"""The Secrets Manager rotation function: a step invoked out of order never leaves AWSCURRENT
on a password the target refuses."""

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
