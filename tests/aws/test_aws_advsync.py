"""The sync Lambda when its state table fails it (deleted, throttled, unreachable): the
acknowledged versions are a cache, so the inventory still goes to the control plane, in full,
for every integration; the state's failure is reported on each part."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from awsharness import client, invoke
from test_aws_inventory_sync import PG, TABLE, _deployed, _event

from jitc.aws import sync


def test_a_state_table_that_fails_costs_a_full_sync_not_the_inventory(
    aws: str,
    pg_admin: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from test_aws_flow import _metrics

    for _, cp in _deployed(tmp_path, monkeypatch, with_dead=False):
        client("dynamodb").delete_table(TableName=TABLE)
        capsys.readouterr()
        report = invoke("sync", sync.handler, _event())
        part = report["integrations"][PG]
        assert part["status"] == "complete" and part["full"] and part["acked"], part
        assert "not saved" in part.get("error", ""), part
        assert PG in cp.current
        # No heartbeat: the deployment fault still alarms while the inventory flows.
        metrics = _metrics(capsys.readouterr().out)
        assert "InventoryCompleted" not in metrics and metrics["InventoryFailures"] == 1


def test_finish_secret_between_the_two_reads_still_yields_the_new_password(aws: str) -> None:
    """The engine was refused (setSecret already gave the target the pending password) and
    reads the secret again. finishSecret runs between its two reads (moves AWSCURRENT, takes
    AWSPENDING off): read current-then-pending, both reads miss the new value and the
    operation fails. botocore's own after-call event runs finishSecret at that moment."""
    from jitc.aws.rotation import finish_secret
    from jitc.aws.secrets_manager import SecretsManagerStore
    from jitc.secrets import SecretRef

    sm = client("secretsmanager")
    name = f"advsync-{uuid.uuid4().hex[:8]}"
    arn = sm.create_secret(Name=name, SecretString=json.dumps({"password": "old-pw-0123456789"}))[
        "ARN"
    ]
    token = str(uuid.uuid4())
    sm.put_secret_value(
        SecretId=arn,
        ClientRequestToken=token,
        SecretString=json.dumps({"password": "new-pw-0123456789"}),
        VersionStages=["AWSPENDING"],
    )
    reader = client("secretsmanager")
    calls: list[int] = []

    def finish_after_the_first_read(**_: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            finish_secret(sm, arn, token)

    reader.meta.events.register(
        "after-call.secrets-manager.GetSecretValue", finish_after_the_first_read
    )
    found = SecretsManagerStore(reader).candidates(SecretRef(f"aws-sm:{arn}#password"))
    assert len(calls) == 2
    assert "new-pw-0123456789" in [s.reveal() for s in found]
