"""The end-to-end flow with IAM enforced by moto: intake, worker and sweep each run with the
credentials of a role whose only policy is the Terraform's own document for that function,
rendered from the HCL. A call the module does not allow fails here as it would on AWS.

moto decides on the action (and, for SQS, the queue); where it cannot tell the resource or
evaluate a condition, tests/aws/test_aws_least_privilege.py compares those with the calls."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import awsharness
import pytest
from awsharness import (
    ACCOUNT,
    PG_SCHEMA,
    REGION,
    RUN,
    client,
    deliver,
    deploy,
    drain_events,
    drop_pg_roles,
    invoke,
    pg_integration,
    signed_http_event,
)
from moto.core.authorization import disable_iam_authentication, enable_iam_authentication
from tfpolicy import render

from jitc.aws import intake, sweep, worker
from jitc.models import derive_grant_id

PG = f"awst{RUN}-enf"
FUNCTIONS = ("intake", "worker", "sweep")
TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


def bindings(deployment: Any) -> dict[str, Any]:
    """What the module's references would be in this deployment (no aws_iam, no Identity
    Center target: their statements stay out)."""
    arn = f"arn:aws:{{}}:{REGION}:{ACCOUNT}:{{}}".format
    return {
        "aws_sqs_queue.requests.arn": deployment.queue_arn,
        "aws_sqs_queue.schedule_dead_letters.arn": deployment.schedule_dlq_arn,
        "aws_kms_key.this.arn": arn("kms", "key/11111111-2222-3333-4444-555555555555"),
        **{
            f'local.log_arns["{f}"]': arn("logs", f"log-group:/aws/lambda/jitc-{f}:*")
            for f in FUNCTIONS
        },
        "local.schedule_arn": arn("scheduler", f"schedule/{deployment.group}/*"),
        "aws_iam_role.scheduler.arn": f"arn:aws:iam::{ACCOUNT}:role/jitc-scheduler",
        # As the module derives it from the catalog's aws-sm: references.
        "local.secret_arns": [arn("secretsmanager", "secret:jitc/pg-admin-??????")],
        "local.bus_arn": arn("events", f"event-bus/{deployment.bus}"),
        "local.region": REGION,
    }


def _role(name: str, document: dict[str, Any]) -> dict[str, str]:
    iam, sts = client("iam"), client("sts")
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=TRUST)
    iam.put_role_policy(RoleName=name, PolicyName=name, PolicyDocument=json.dumps(document))
    got = sts.assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{name}", RoleSessionName=name)
    c = got["Credentials"]
    return {
        "AWS_ACCESS_KEY_ID": c["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": c["SecretAccessKey"],
        "AWS_SESSION_TOKEN": c["SessionToken"],
    }


@pytest.fixture
def enforced(
    aws: str, pg_admin: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    deployment = deploy(tmp_path, {"integrations": pg_integration(PG)})
    values = bindings(deployment)
    for function in FUNCTIONS:
        awsharness.FUNCTION_CREDENTIALS[function] = _role(
            f"jitc-{function}", render(function, values)
        )
    # The test itself acts as an administrator (a user with a key), as the deployer would.
    iam = client("iam")
    iam.create_user(UserName="jitc-test-admin")
    iam.put_user_policy(
        UserName="jitc-test-admin",
        PolicyName="all",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        ),
    )  # fmt: skip
    key = iam.create_access_key(UserName="jitc-test-admin")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    try:
        with enable_iam_authentication():
            yield deployment
    finally:
        awsharness.FUNCTION_CREDENTIALS.clear()
        drop_pg_roles(pg_admin)


def _grant(rid: str, deployment: Any, duration: str = "30m") -> dict[str, Any]:
    return {
        "request_id": rid, "action": "grant", "integration": PG, "permission": "read",
        "resources": [PG_SCHEMA], "duration": duration,
        "identity": {"email": "ana@example.com", "public_key": deployment.box_public},
    }  # fmt: skip


def _granted_role(admin: Any, grant_id: str) -> bool:
    row = admin.execute(
        "SELECT count(*) FROM pg_roles r JOIN pg_shdescription d ON d.objoid = r.oid "
        "WHERE d.description LIKE %s AND r.rolcanlogin",
        (f'%"grant_id":"{grant_id}"%',),
    ).fetchone()
    return bool(row and row[0])


def test_grant_expire_revoke_and_sweep_under_the_terraform_policies(
    enforced: Any, pg_admin: Any
) -> None:
    deployment = enforced
    sqs, scheduler = client("sqs"), client("scheduler")
    rid = f"enf-{uuid.uuid4().hex[:8]}"
    grant_id = derive_grant_id(PG, rid)
    answer = invoke(
        "intake", intake.handler, signed_http_event(_grant(rid, deployment), deployment)
    )
    assert answer["statusCode"] == 202, answer

    done = deliver(sqs, deployment.queue_url, deployment.queue_arn, worker.handler)
    assert done.failed_ids == [], drain_events(sqs, deployment.events_url)
    assert _granted_role(pg_admin, grant_id)
    statuses = [
        e["detail"]["status"]
        for e in drain_events(sqs, deployment.events_url)
        if e["detail-type"] == "jitc.outcome"
    ]
    assert statuses == ["granted"]

    # The schedule fires: Scheduler delivers its input to the queue (as the scheduler role).
    with disable_iam_authentication():  # the test looking, not a function
        target = scheduler.get_schedule(Name=grant_id, GroupName=deployment.group)["Target"]
    sqs.send_message(
        QueueUrl=deployment.queue_url,
        MessageBody=target["Input"],
        MessageGroupId=target["SqsParameters"]["MessageGroupId"],
    )
    fired = deliver(sqs, deployment.queue_url, deployment.queue_arn, worker.handler)
    assert fired.failed_ids == []
    assert not _granted_role(pg_admin, grant_id)

    sweep_event = {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
        "source": "aws.scheduler", "account": ACCOUNT, "time": datetime.now(UTC).isoformat(),
        "region": REGION, "resources": [], "detail": {},
    }  # fmt: skip
    report = invoke("sweep", sweep.handler, sweep_event)
    assert report["failed"] == {} and report["revoked"] == []


def test_a_policy_lacking_a_call_the_code_makes_fails_the_flow(enforced: Any) -> None:
    # The control: without the intake's Enqueue statement the request cannot be queued, so
    # enforcement is really on and the flow above passed on the module's own documents.
    deployment = enforced
    document = render("intake", bindings(deployment))
    document["Statement"] = [
        s for s in document["Statement"] if "sqs:SendMessage" not in s["Action"]
    ]
    with disable_iam_authentication():
        awsharness.FUNCTION_CREDENTIALS["intake"] = _role("jitc-intake-lacking", document)
    rid = f"enf-{uuid.uuid4().hex[:8]}"
    # The intake answers 503 (nothing accepted) when the queue refuses it.
    response = invoke("intake", intake.handler, signed_http_event(_grant(rid, deployment), deployment))
    assert response["statusCode"] == 503, response
