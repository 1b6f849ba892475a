"""The AWS IAM and Identity Center targets, end to end with IAM enforced by moto: intake, worker
and sweep run with the credentials of roles whose only policy is the Terraform's document for
that function (rendered from the HCL, with the module's `iam_target` and
`identity_center_target` set). Grants, revokes and a sweep of expired grants go through both
templates; then each statement those targets need is removed in turn, and the flow must fail.

moto judges the action; the resources and conditions of these statements are compared with the
recorded calls by tests/aws/test_aws_least_privilege.py."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import awsharness
import pytest
from awsharness import (
    ACCOUNT,
    REGION,
    RUN,
    client,
    deliver,
    deploy,
    drain_events,
    invoke,
    signed_http_event,
)
from moto.core.authorization import disable_iam_authentication, enable_iam_authentication
from test_aws_enforced_iam import FUNCTIONS, _role, bindings
from tfpolicy import render

from jitc.aws import intake, sweep, worker

IAM = f"awst{RUN}-iam"
IDC = f"awst{RUN}-idc"
STORE = "d-1234567890"
ACCOUNTS = ["111111111111"]
BOUNDARY = f"arn:aws:iam::{ACCOUNT}:policy/jitc-grant-boundary"
LEDGER = "jitc-test-ledger"  # as the Identity Center tests name it, and the least-privilege world
S3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
      "Resource": "arn:aws:s3:::{resource}/*"}]}  # fmt: skip
# The statements the two targets need, per function; each must be missed by the flow.
NEEDED = [
    ("worker", "ManageGrantPolicies"),
    ("worker", "AttachOnlyGrantPoliciesToBoundedPrincipals"),
    ("worker", "DetachOnlyGrantPolicies"),
    ("worker", "Grantees"),
    ("worker", "AssignPermissionSets"),
    ("worker", "FindUsersByEmail"),
    ("worker", "IdentityCenterLedger"),
    ("sweep", "RemoveGrantPolicies"),
    ("sweep", "FindGrantPolicies"),
    ("sweep", "DetachOnlyGrantPolicies"),
    ("sweep", "UnassignPermissionSets"),
    ("sweep", "IdentityCenterLedger"),
]


def target_bindings(deployment: Any, idc: dict[str, Any]) -> dict[str, Any]:
    return {
        **bindings(deployment),
        "local.secret_arns": [
            f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:jitc/label-??????"
        ],
        "local.partition": "aws",
        "local.account": ACCOUNT,
        "var.iam_target.principal_arns": [f"arn:aws:iam::{ACCOUNT}:role/dev-*"],
        "local.iam_grant_policy_arn": f"arn:aws:iam::{ACCOUNT}:policy/jitc/jitc-*",
        "local.iam_sessions_policy_arn": f"arn:aws:iam::{ACCOUNT}:policy/jitc/jitc-s-*",
        "local.iam_boundary_arn": BOUNDARY,
        "local.idc_resources": [
            idc["instance"],
            idc["ps"],
            *[f"arn:aws:sso:::account/{a}" for a in ACCOUNTS],
        ],
        "local.idc.identity_store_id": STORE,
        "local.ledger_arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{LEDGER}",
    }


def _targets() -> dict[str, Any]:
    """The two targets' world, made by the deployer before the functions run."""
    iam, sso, store = client("iam"), client("sso-admin"), client("identitystore")
    ceiling = {"Version": "2012-10-17",
               "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}  # fmt: skip
    iam.create_policy(PolicyName="jitc-grant-boundary", PolicyDocument=json.dumps(ceiling))
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
             "Principal": {"Service": "ec2.amazonaws.com"}}]}  # fmt: skip
    iam.create_role(RoleName="dev-ana", AssumeRolePolicyDocument=json.dumps(trust),
                    PermissionsBoundary=BOUNDARY)  # fmt: skip
    instance = sso.list_instances()["Instances"][0]["InstanceArn"]
    ps = sso.create_permission_set(InstanceArn=instance, Name="ReadOnly", SessionDuration="PT1H")
    user = store.create_user(
        IdentityStoreId=STORE, UserName="ana", DisplayName="ana",
        Name={"GivenName": "ana", "FamilyName": "Example"},
        Emails=[{"Value": "ana@example.com", "Type": "work", "Primary": True}],
    )["UserId"]  # fmt: skip
    from test_aws_identity_center_template import TABLE, make_table

    assert TABLE == LEDGER
    make_table()
    return {"instance": instance, "ps": ps["PermissionSet"]["PermissionSetArn"], "user": user}


def _catalog(idc: dict[str, Any]) -> dict[str, Any]:
    return {
        IAM: {
            "kind": "aws_iam",
            "connection": {"account_id": ACCOUNT, "permissions_boundary_arn": BOUNDARY,
                           "region": REGION, "allowed_principals": ["dev-*"]},
            "max_duration": "2h",
            "permissions": {"read": {"policy": S3, "resources": ["bucket-a"]}},
        },
        IDC: {
            "kind": "aws_identity_center",
            "connection": {"instance_arn": idc["instance"], "identity_store_id": STORE,
                           "region": REGION, "ledger_table": LEDGER},
            "max_duration": "2h",
            "permissions": {"read": {"permission_set_arn": idc["ps"], "resources": ACCOUNTS}},
        },
    }  # fmt: skip


@pytest.fixture
def world(aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    idc = _targets()
    deployment = deploy(tmp_path, {"integrations": _catalog(idc)})
    values = target_bindings(deployment, idc)
    iam = client("iam")
    iam.create_user(UserName="jitc-test-admin")
    everything = {"Version": "2012-10-17",
                  "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}  # fmt: skip
    iam.put_user_policy(UserName="jitc-test-admin", PolicyName="all",
                        PolicyDocument=json.dumps(everything))  # fmt: skip
    key = iam.create_access_key(UserName="jitc-test-admin")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    from jitc.templates import aws_session

    try:
        with enable_iam_authentication():
            yield deployment, idc, values
    finally:
        awsharness.FUNCTION_CREDENTIALS.clear()
        aws_session.reset()


def _roles(values: dict[str, Any], without: tuple[str, str] | None = None) -> None:
    for function in FUNCTIONS:
        document = render(function, values)
        if without is not None and without[0] == function:
            kept = [s for s in document["Statement"] if s.get("Sid") != without[1]]
            assert len(kept) < len(document["Statement"]), without
            document["Statement"] = kept
        name = f"jitc-{function}-{uuid.uuid4().hex[:6]}"
        with disable_iam_authentication():  # the deployer making the role
            awsharness.FUNCTION_CREDENTIALS[function] = _role(name, document)


def _request(
    integration: str, rid: str, action: str, deployment: Any, seconds: int
) -> dict[str, Any]:
    body: dict[str, Any] = {"request_id": rid, "action": action, "integration": integration}
    if action == "grant":
        body.update(permission="read", duration=f"{seconds}s",
                    resources=["bucket-a"] if integration == IAM else ACCOUNTS,
                    identity={"email": "ana@example.com", "username": "dev-ana",
                              "public_key": deployment.box_public})  # fmt: skip
    return body


def _send(body: dict[str, Any], deployment: Any) -> None:
    answer = invoke("intake", intake.handler, signed_http_event(body, deployment))
    assert answer["statusCode"] == 202, answer


def _state(idc: dict[str, Any]) -> tuple[list[str], list[str]]:
    with disable_iam_authentication():  # the test looking, not a function
        attached = client("iam").list_attached_role_policies(RoleName="dev-ana")
        assigned = client("sso-admin").list_account_assignments(
            InstanceArn=idc["instance"], AccountId=ACCOUNTS[0], PermissionSetArn=idc["ps"]
        )
    return (
        [p["PolicyName"] for p in attached["AttachedPolicies"]],
        [a["PrincipalId"] for a in assigned["AccountAssignments"]],
    )


def _grant_and_revoke(deployment: Any, idc: dict[str, Any], run: str, work: Any) -> list[str]:
    problems: list[str] = []
    for integration in (IAM, IDC):
        _send(_request(integration, f"g{run}", "grant", deployment, 1800), deployment)
    problems += work("grant")
    policies, users = _state(idc)
    if not policies or users != [idc["user"]]:
        problems.append(f"after grant: policies {policies}, assignments {users}")
    if problems:
        return problems  # the first failure is the finding; the rest would only repeat it
    for integration in (IAM, IDC):
        _send(_request(integration, f"g{run}", "revoke", deployment, 0), deployment)
    problems += work("revoke")
    if _state(idc) != ([], []):
        problems.append(f"after revoke: {_state(idc)}")
    return problems


def flow(deployment: Any, idc: dict[str, Any], phases: str = "grant+sweep") -> list[str]:
    """Grant and revoke, then grant briefly and sweep, on both targets (`phases` picks either
    half); what went wrong, if anything."""
    problems: list[str] = []
    sqs = client("sqs")
    run = uuid.uuid4().hex[:6]

    def work(label: str) -> list[str]:
        done = deliver(sqs, deployment.queue_url, deployment.queue_arn, worker.handler)
        outcomes = [e["detail"] for e in drain_events(sqs, deployment.events_url)
                    if e["detail-type"] == "jitc.outcome"]  # fmt: skip
        bad = [f"{o['integration']} {o['status']}: {o.get('message')}" for o in outcomes
               if o["status"] not in ("granted", "revoked")]  # fmt: skip
        return [f"{label}: {bad or done.failed_ids}"] if done.failed_ids or bad else []

    if "grant" in phases:
        problems += _grant_and_revoke(deployment, idc, run, work)
    if problems or "sweep" not in phases:
        return problems
    # Brief grants whose expiry nobody delivers: the sweep must find and revoke them.
    sent = time.monotonic()
    for integration in (IAM, IDC):
        _send(_request(integration, f"s{run}", "grant", deployment, 5), deployment)
    done = deliver(sqs, deployment.queue_url, deployment.queue_arn, worker.handler)
    brief = [e["detail"] for e in drain_events(sqs, deployment.events_url)
             if e["detail-type"] == "jitc.outcome"]  # fmt: skip
    if sorted(o["status"] for o in brief) != ["granted", "granted"]:
        problems.append(f"brief grants: {brief}")
    with disable_iam_authentication():
        for message in awsharness.receive(sqs, deployment.queue_url, wait=0.5):
            sqs.delete_message(
                QueueUrl=deployment.queue_url, ReceiptHandle=message["ReceiptHandle"]
            )
    if done.failed_ids:
        problems.append(f"brief grant: {done.failed_ids}")
    time.sleep(max(0.0, sent + 5.5 - time.monotonic()))
    event = {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
        "source": "aws.scheduler", "account": ACCOUNT, "time": datetime.now(UTC).isoformat(),
        "region": REGION, "resources": [], "detail": {},
    }  # fmt: skip
    try:
        report = invoke("sweep", sweep.handler, event)
    except Exception as exc:  # a sweep that cannot list a target raises: that is the finding
        problems.append(f"sweep raised {type(exc).__name__}: {exc}")
    else:
        if report["failed"] or len(report["revoked"]) != 2:
            problems.append(f"sweep: {report}")
    if _state(idc) != ([], []):
        problems.append(f"after sweep: {_state(idc)}")
    return problems


def test_both_targets_grant_revoke_and_sweep_under_the_terraform_policies(world: Any) -> None:
    deployment, idc, values = world
    _roles(values)
    assert flow(deployment, idc) == []


@pytest.mark.parametrize("missing", NEEDED, ids=[f"{f}-{s}" for f, s in NEEDED])
def test_each_statement_the_targets_need_is_missed_without_it(
    world: Any, missing: tuple[str, str]
) -> None:
    deployment, idc, values = world
    _roles(values, without=missing)
    # The worker's statements serve grants and revokes, the sweep's the sweep.
    assert flow(deployment, idc, "grant" if missing[0] == "worker" else "sweep") != []


@pytest.mark.parametrize("allowed", [True, False], ids=["as-deployed", "without-group-detach"])
def test_a_grant_policy_hung_on_a_group_is_taken_off_under_the_terraform_policies(
    world: Any, allowed: bool
) -> None:
    """Someone who may attach policies to groups hangs the grant's policy on one: the worker's
    role, as Terraform writes it, may take it off there (IAM deletes no attached policy); the
    revoke fails without that statement."""
    deployment, _, values = world
    _roles(values, without=None if allowed else ("worker", "DetachGrantPoliciesFromGroups"))
    sqs = client("sqs")
    run = uuid.uuid4().hex[:6]
    _send(_request(IAM, f"h{run}", "grant", deployment, 1800), deployment)
    assert not deliver(sqs, deployment.queue_url, deployment.queue_arn, worker.handler).failed_ids
    drain_events(sqs, deployment.events_url)
    group = f"everyone-{run}"
    with disable_iam_authentication():  # the neighbour with iam:AttachGroupPolicy
        iam = client("iam")
        (name,) = [p["PolicyName"] for p in
                   iam.list_attached_role_policies(RoleName="dev-ana")["AttachedPolicies"]]  # fmt: skip
        arn = next(p["Arn"] for p in iam.list_policies(Scope="Local")["Policies"]
                   if p["PolicyName"] == name)  # fmt: skip
        iam.create_group(GroupName=group)
        iam.attach_group_policy(GroupName=group, PolicyArn=arn)
    _send(_request(IAM, f"h{run}", "revoke", deployment, 0), deployment)
    deliver(sqs, deployment.queue_url, deployment.queue_arn, worker.handler)
    outcomes = [e["detail"] for e in drain_events(sqs, deployment.events_url)
                if e["detail-type"] == "jitc.outcome"]  # fmt: skip
    with disable_iam_authentication():
        left = iam.list_attached_group_policies(GroupName=group)["AttachedPolicies"]
        for policy in left:  # what a failed revoke left, for the next test
            iam.detach_group_policy(GroupName=group, PolicyArn=policy["PolicyArn"])
        iam.delete_group(GroupName=group)
    if allowed:
        assert [o["status"] for o in outcomes] == ["revoked"] and left == [], outcomes
    else:
        assert [o["status"] for o in outcomes] != ["revoked"] and left != [], outcomes
