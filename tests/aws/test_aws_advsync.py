"""The sync Lambda when its state table fails it (deleted, throttled, unreachable): the
acknowledged versions are a cache, so the inventory still goes to the control plane, in full,
for every integration; the state's failure is reported on each part."""

from __future__ import annotations

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
