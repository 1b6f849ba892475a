"""The inventory sync Lambda on moto and the real PostgreSQL: it sends the inventory to a real
control plane over HTTP, keeps the acknowledged version in DynamoDB, beats its heartbeat only
when complete, and runs under the Terraform's own policy for it with IAM enforced."""

from __future__ import annotations

import json
import socket
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import awsharness
import pytest
from awsharness import ACCOUNT, REGION, RUN, client, deploy, invoke, pg_integration
from moto.core.authorization import disable_iam_authentication, enable_iam_authentication
from tfpolicy import render

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from inventory_cp import ControlPlane, serving

from jitc.aws import sync
from jitc.signing import signing_keypair

PG = f"awst{RUN}-sync"
DEAD = f"awst{RUN}-dead"
TABLE = "jitc-inventory-state"


def _event() -> dict[str, Any]:
    return {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
        "source": "aws.scheduler", "account": ACCOUNT, "time": datetime.now(UTC).isoformat(),
        "region": REGION, "resources": [], "detail": {},
    }  # fmt: skip


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def synced(
    aws: str, pg_admin: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, ControlPlane]]:
    yield from _deployed(tmp_path, monkeypatch, with_dead=True)


@pytest.fixture
def synced_ok(
    aws: str, pg_admin: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, ControlPlane]]:
    yield from _deployed(tmp_path, monkeypatch, with_dead=False)


def _deployed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_dead: bool
) -> Iterator[tuple[Any, ControlPlane]]:
    private, public = signing_keypair()
    cp = ControlPlane(public)
    with serving(cp) as url:
        integrations = pg_integration(PG)
        dead = json.loads(json.dumps(integrations[PG]))
        dead["connection"].update(port=_closed_port(), connect_timeout=2)
        if with_dead:
            integrations[DEAD] = dead
        client("secretsmanager").create_secret(
            Name="jitc/signing", SecretString=json.dumps({"key": private})
        )
        deployment = deploy(
            tmp_path,
            {
                "integrations": integrations,
                "connector": {"webhook_url": url, "signing_key": "aws-sm:jitc/signing#key"},
            },
        )
        client("dynamodb").create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "integration", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "integration", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        monkeypatch.setenv("JITC_SYNC_TABLE", TABLE)
        # The sync function has no queue: its environment (sync.tf) names none.
        monkeypatch.delenv("JITC_QUEUE_URL")
        yield deployment, cp


def _stored(integration: str) -> Any:
    return (
        client("dynamodb")
        .get_item(TableName=TABLE, Key={"integration": {"S": integration}}, ConsistentRead=True)
        .get("Item")
    )


def test_the_sync_lambda_sends_then_sends_only_changes_and_one_dead_target_fails_alone(
    synced: tuple[Any, ControlPlane], capsys: pytest.CaptureFixture[str]
) -> None:
    from test_aws_flow import _metrics

    _, cp = synced
    capsys.readouterr()
    first = invoke("sync", sync.handler, _event())
    part = first["integrations"][PG]
    assert part["status"] == "complete" and part["acked"] and part["sent"] == part["pages"]
    assert first["integrations"][DEAD]["status"] == "failed" and DEAD in cp.failed
    assert _stored(PG) is not None and _stored(DEAD) is None
    printed = capsys.readouterr().out
    # One target down: no heartbeat, a failure counted.
    assert "InventoryCompleted" not in _metrics(printed)
    assert _metrics(printed)["InventoryFailures"] == 1
    report = invoke("sync", sync.handler, _event())
    second = report["integrations"][PG]
    assert second["acked"] and second["base_version"] == part["version"] and not second["full"]
    # Only pages holding cluster-wide names (roles, databases: other suites on this shared
    # server change them at any moment) can have changed since.
    resent = [e for e in cp.events if e["kind"] == "page" and e["sync_id"] == report["sync_id"]]
    shared = {"login_role", "group", "database", "schema"}
    assert all(any(r["kind"] in shared for r in e["records"]) for e in resent)
    assert awsharness.PG_SCHEMA in {r["name"] for r in cp.records(PG) if r["kind"] == "schema"}
    # Nothing secret left: the admin password and the signing key never travelled.
    everything = b"\n".join(cp.bodies)
    assert synced[0].admin_secret.encode() not in everything


def test_a_complete_sync_beats_the_heartbeat_the_alarm_watches(
    synced_ok: tuple[Any, ControlPlane], capsys: pytest.CaptureFixture[str]
) -> None:
    from test_aws_flow import _metrics
    from tfmodule import load

    alarm = load().resource("aws_cloudwatch_metric_alarm", "sync_heartbeat")
    assert alarm["treat_missing_data"] == "breaching"
    capsys.readouterr()
    report = invoke("sync", sync.handler, _event())
    assert report["ok"]
    assert _metrics(capsys.readouterr().out).get(alarm["metric_name"]) == 1


def _bindings(deployment: Any) -> dict[str, Any]:
    arn = f"arn:aws:{{}}:{REGION}:{ACCOUNT}:{{}}".format
    return {
        "local.sync_log_arn": arn("logs", "log-group:/aws/lambda/jitc-sync:*"),
        "aws_dynamodb_table.sync_state[0].arn": arn("dynamodb", f"table/{TABLE}"),
        "local.secret_arns": [
            arn("secretsmanager", "secret:jitc/pg-admin-??????"),
            arn("secretsmanager", "secret:jitc/label-??????"),
            arn("secretsmanager", "secret:jitc/signing-??????"),
        ],
        "local.region": REGION,
    }


def test_the_sync_lambda_runs_under_the_terraform_policy_and_nothing_wider(
    synced: tuple[Any, ControlPlane],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from test_aws_enforced_iam import _role
    from test_aws_flow import _metrics

    deployment, _ = synced
    document = render("sync", _bindings(deployment))
    awsharness.FUNCTION_CREDENTIALS["sync"] = _role("jitc-sync", document)
    iam = client("iam")
    iam.create_user(UserName="jitc-test-admin")
    iam.put_user_policy(
        UserName="jitc-test-admin", PolicyName="all",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
    )  # fmt: skip
    key = iam.create_access_key(UserName="jitc-test-admin")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    try:
        with enable_iam_authentication():
            first = invoke("sync", sync.handler, _event())
            assert first["integrations"][PG]["acked"], first
            # The control: without the table statement the acknowledgement cannot be kept.
            lacking = {
                **document,
                "Statement": [
                    s for s in document["Statement"] if s.get("Sid") != "AcknowledgedVersions"
                ],
            }
            with disable_iam_authentication():
                awsharness.FUNCTION_CREDENTIALS["sync"] = _role("jitc-sync-lacking", lacking)
            # The inventory still goes (the state is a cache); the denial is reported on the
            # part and withholds the heartbeat, so the alarm still shows the deployment fault.
            capsys.readouterr()
            denied = invoke("sync", sync.handler, _event())["integrations"][PG]
            assert denied["status"] == "complete" and "not saved" in denied["error"], denied
            assert "InventoryCompleted" not in _metrics(capsys.readouterr().out)
    finally:
        awsharness.FUNCTION_CREDENTIALS.clear()


def test_a_second_sync_while_one_runs_stands_down_whether_or_not_it_is_reserved(
    synced_ok: tuple[Any, ControlPlane],
) -> None:
    """The sync reserves no concurrency unless reserved_concurrency names it, and the
    schedule delivers at least once: a run that finds another's lease sends nothing and saves
    nothing; a lease whose run was killed lapses at that run's deadline; a run gives back only
    its own lease."""
    import time

    from tfmodule import load

    from jitc.aws.sync_state import LEASE_KEY, DynamoSyncState

    sync_fn = load().resource("aws_lambda_function", "sync")
    assert sync_fn["reserved_concurrent_executions"] == (
        '${lookup(var.reserved_concurrency, "sync", -1)}'
    )
    _, cp = synced_ok
    store = DynamoSyncState(client("dynamodb"), TABLE)
    assert store.acquire("other-run", time.time() + 60)
    skipped = invoke("sync", sync.handler, _event())
    assert skipped.get("skipped") and "integrations" not in skipped, skipped
    assert not cp.bodies and _stored(PG) is None
    # Not its lease: giving back another run's lease leaves it in place.
    store.release("someone-else")
    assert _stored(LEASE_KEY) is not None
    assert store.acquire("third-run", time.time() + 60) is False
    # A run killed at its timeout never gives its lease back: it lapses, and the next run syncs.
    client("dynamodb").put_item(
        TableName=TABLE,
        Item={
            "integration": {"S": LEASE_KEY},
            "holder": {"S": "killed-run"},
            "until": {"N": str(time.time() - 1)},
        },
    )
    report = invoke("sync", sync.handler, _event())
    assert report["ok"] and report["integrations"][PG]["acked"], report
    # It gave its own lease back: the next scheduled run is not held up.
    assert _stored(LEASE_KEY) is None
