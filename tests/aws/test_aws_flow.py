"""End to end on moto's server and the real PostgreSQL: signed HTTP event -> intake -> SQS ->
worker (event built from a real ReceiveMessage) -> grant -> schedule -> its target input ->
revoke -> schedule gone; with duplicated, reordered and failing deliveries."""

from __future__ import annotations

import base64
import http.server
import io
import json
import logging
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest
from awsharness import (
    PG_SCHEMA,
    RUN,
    LambdaContext,
    acting_as,
    client,
    deliver,
    deploy,
    drain_events,
    drop_pg_roles,
    invoke,
    is_transient_outcome,
    lambda_sqs_event,
    pg_integration,
    receive,
    request_id_of,
    signed_http_event,
)
from botocore.exceptions import ClientError

from jitc.aws import intake, observability, sweep, worker
from jitc.models import derive_grant_id
from jitc.sealing import unseal

# Per-run names: the sweep finds grants by integration, and other runs may share the server.
PG = f"awst{RUN}-pg"
BROKEN = f"awst{RUN}-broken"


def grant_body(
    request_id: str, integration: str = PG, duration: str = "30m", **extra: Any
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "action": "grant",
        "integration": integration,
        "permission": "read",
        "resources": [PG_SCHEMA],
        "identity": {"email": "ana@example.com", "public_key": extra.pop("public_key")},
        "duration": duration,
        **extra,
    }


def revoke_body(request_id: str, grant_id: str, integration: str = PG) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "action": "revoke",
        "integration": integration,
        "grant_id": grant_id,
    }


@pytest.fixture
def deployment(aws: str, pg_admin: Any, tmp_path: Path) -> Any:
    catalog = {
        "integrations": {
            **pg_integration(PG),
            **pg_integration(BROKEN, "aws-sm:jitc/missing#password"),
        }
    }
    yield deploy(tmp_path, catalog)
    drop_pg_roles(pg_admin)


def outcomes_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outcomes sent to the bus, less failures that were only a transient server race."""
    found = [e["detail"] for e in events if e["detail-type"] == "jitc.outcome"]
    return [o for o in found if not is_transient_outcome(o)]


def post(deployment: Any, body: dict[str, Any], **kwargs: Any) -> tuple[int, dict[str, Any]]:
    response = invoke("intake", intake.handler, signed_http_event(body, deployment, **kwargs))
    assert response["headers"]["Content-Type"] == "application/json"
    return response["statusCode"], json.loads(response["body"])


def role_of(admin: Any, grant_id: str) -> str | None:
    row = admin.execute(
        "SELECT r.rolname FROM pg_roles r JOIN pg_shdescription d ON d.objoid = r.oid "
        "WHERE d.description LIKE %s AND r.rolcanlogin",
        (f'%"grant_id":"{grant_id}"%',),
    ).fetchone()
    return None if row is None else str(row[0])


def login(credentials: dict[str, str]) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=credentials["host"],
        port=int(credentials["port"]),
        dbname=credentials["dbname"],
        user=credentials["username"],
        password=credentials["password"],
        connect_timeout=3,
    )


def queue_depth(deployment: Any) -> int:
    attrs = client("sqs").get_queue_attributes(
        QueueUrl=deployment.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


def test_bad_requests_get_4xx_naming_the_problem_and_enqueue_nothing(deployment: Any) -> None:
    rid = f"bad-{uuid.uuid4().hex[:8]}"
    body = grant_body(rid, public_key=deployment.box_public)
    cases = [
        (401, "signature", dict(tamper=True)),
        (401, "signature", dict(key_id="nobody")),  # the same answer as a bad signature
        (401, "timestamp", dict(timestamp=int(time.time()) - 3600)),
        (405, "method", dict(method="GET")),
        (404, "path", dict(path="/admin")),
    ]
    for status, field, kwargs in cases:
        got, answer = post(deployment, body, **kwargs)
        assert (got, answer["field"]) == (status, field), answer
    got, answer = post(deployment, {**body, "permission": "superuser"})
    assert (got, answer["field"]) == (403, "permission")
    got, answer = post(deployment, {**body, "resources": ["pg_catalog"]})
    assert (got, answer["field"]) == (403, "resources[0]")
    got, answer = post(deployment, {**body, "duration": "9h"})
    assert (got, answer["field"]) == (403, "duration")
    got, answer = post(deployment, {k: v for k, v in body.items() if k != "identity"})
    assert got == 400 and "identity" in answer["message"]
    assert queue_depth(deployment) == 0


def test_the_intake_reads_base64_bodies_stage_prefixed_paths_and_any_header_case(
    deployment: Any,
) -> None:
    """What an HTTP API (a named stage) or a binary body sends, read from the raw event."""
    rid = f"b64-{uuid.uuid4().hex[:8]}"
    event = signed_http_event(grant_body(rid, public_key=deployment.box_public), deployment)
    event["body"] = base64.b64encode(event["body"].encode()).decode()
    event["isBase64Encoded"] = True
    event["headers"] = {name.title(): value for name, value in event["headers"].items()}
    event["requestContext"]["stage"] = "prod"
    event["rawPath"] = "/prod/v1/requests"
    answer = invoke("intake", intake.handler, event)
    assert answer["statusCode"] == 202, answer
    assert json.loads(answer["body"])["request_id"] == rid
    assert queue_depth(deployment) == 1
    event["rawPath"] = "/v1/requests"  # no stage prefix on a named stage: not a route
    refused = json.loads(invoke("intake", intake.handler, event)["body"])
    assert refused["field"] == "path"
    event["rawPath"], event["body"] = "/prod/v1/requests", "not base64!"
    assert json.loads(invoke("intake", intake.handler, event)["body"])["field"] == "body"
    assert queue_depth(deployment) == 1


@pytest.fixture
def log_lines() -> Any:
    """Every JSON line the functions log, formatted as on Lambda."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(observability.logger.registered_formatter)
    target = logging.getLogger(observability.SERVICE)
    target.addHandler(handler)
    yield stream
    target.removeHandler(handler)


def test_grant_schedule_expire_revoke_end_to_end(
    deployment: Any, pg_admin: Any, log_lines: Any
) -> None:
    sqs, scheduler = client("sqs"), client("scheduler")
    rid = f"e2e-{uuid.uuid4().hex[:8]}"
    grant_id = derive_grant_id(PG, rid)
    event = signed_http_event(grant_body(rid, public_key=deployment.box_public), deployment)
    answer = invoke("intake", intake.handler, event)
    assert answer["statusCode"] == 202
    assert json.loads(answer["body"]) == {
        "status": "accepted",
        "request_id": rid,
        "grant_id": grant_id,
    }
    # The same signed request again is a replay: refused, not queued twice.
    assert invoke("intake", intake.handler, event)["statusCode"] == 409
    assert queue_depth(deployment) == 1

    first = deliver(sqs, deployment.queue_url, deployment.queue_arn, worker.handler)
    assert first.failed_ids == [] and len(first.messages) == 1
    assert first.messages[0]["Attributes"]["MessageGroupId"] == grant_id
    role = role_of(pg_admin, grant_id)
    assert role is not None and role.startswith("awst")

    outcomes = outcomes_of(drain_events(sqs, deployment.events_url))
    granted = [o for o in outcomes if o["request_id"] == rid]
    assert [o["status"] for o in granted] == ["granted"]
    credentials = unseal(granted[0]["sealed_credentials"], deployment.box_private)
    with login(credentials) as conn:
        assert conn.execute(f"SELECT count(*) FROM {PG_SCHEMA}.items").fetchone() == (2,)

    schedule = scheduler.get_schedule(Name=grant_id, GroupName=deployment.group)
    expires = datetime.fromisoformat(granted[0]["expires_at"])
    at = datetime.strptime(schedule["ScheduleExpression"], "at(%Y-%m-%dT%H:%M:%S)").replace(
        tzinfo=UTC
    )
    # Rounded up to the whole minute: the scheduler's precision, never early.
    assert expires <= at and (at - expires).total_seconds() < 60 and at.second == 0
    assert schedule["ScheduleExpressionTimezone"] == "UTC"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert schedule["ActionAfterCompletion"] == "DELETE"
    target = schedule["Target"]
    assert target["Arn"] == deployment.queue_arn
    assert target["SqsParameters"] == {"MessageGroupId": grant_id}
    assert target["DeadLetterConfig"] == {"Arn": deployment.schedule_dlq_arn}

    # Duplicate delivery of the grant (at-least-once): same role, fresh credentials, one schedule.
    original = first.messages[0]["Body"]
    sqs.send_message(
        QueueUrl=deployment.queue_url,
        MessageBody=original,
        MessageGroupId=grant_id,
        MessageDeduplicationId="redelivery-1",
    )
    again = deliver(sqs, deployment.queue_url, deployment.queue_arn, worker.handler)
    assert again.failed_ids == []
    assert role_of(pg_admin, grant_id) == role
    reissued = outcomes_of(drain_events(sqs, deployment.events_url))
    assert [(o["status"], o.get("reissued")) for o in reissued] == [("granted", True)]
    assert len(scheduler.list_schedules(GroupName=deployment.group)["Schedules"]) == 1

    # The scheduler fires: its target input lands on the queue in the grant's group.
    held = login(unseal(reissued[0]["sealed_credentials"], deployment.box_private))
    sqs.send_message(
        QueueUrl=deployment.queue_url,
        MessageBody=target["Input"],
        MessageGroupId=target["SqsParameters"]["MessageGroupId"],
    )
    fired = deliver(sqs, deployment.queue_url, deployment.queue_arn, worker.handler)
    assert fired.failed_ids == []
    assert role_of(pg_admin, grant_id) is None
    with pytest.raises(psycopg.OperationalError):
        held.execute("SELECT 1")  # the open session was ended, not left to live on
    with pytest.raises(ClientError) as gone:
        scheduler.get_schedule(Name=grant_id, GroupName=deployment.group)
    assert gone.value.response["Error"]["Code"] == "ResourceNotFoundException"
    revoked = outcomes_of(drain_events(sqs, deployment.events_url))
    assert [(o["action"], o["status"], o["verified"]) for o in revoked] == [
        ("revoke", "revoked", True)
    ]

    # The expiry delivered twice more: revoking again is a success that finds nothing.
    sqs.send_message(
        QueueUrl=deployment.queue_url,
        MessageBody=target["Input"],
        MessageGroupId=grant_id,
        MessageDeduplicationId="late-expiry",
    )
    assert deliver(sqs, deployment.queue_url, deployment.queue_arn, worker.handler).failed_ids == []

    # No secret reached the logs or the events: neither the admin's nor the generated password.
    logged = log_lines.getvalue()
    for secret in (deployment.admin_secret, credentials["password"]):
        assert secret not in logged
    lines = [json.loads(line) for line in logged.splitlines()]
    audits = [
        line["audit"]
        for line in lines
        if line["message"] == "audit" and line.get("request_id") == rid
    ]
    assert [a["status"] for a in audits] == ["granted", "granted"]
    assert all(line["function_name"] == "jitc-worker" for line in lines if "audit" in line)


def test_reordered_revoke_before_grant_leaves_no_access(deployment: Any, pg_admin: Any) -> None:
    sqs = client("sqs")
    rid = f"reo-{uuid.uuid4().hex[:8]}"
    grant_id = derive_grant_id(PG, rid)
    assert post(deployment, grant_body(rid, public_key=deployment.box_public))[0] == 202
    assert post(deployment, revoke_body(f"{rid}-r", grant_id))[0] == 202
    messages = receive(sqs, deployment.queue_url)
    assert len(messages) == 2
    # The queue kept their order; deliver them reversed, as a non-FIFO path could.
    messages.reverse()
    done = deliver(sqs, deployment.queue_url, deployment.queue_arn, worker.handler, messages)
    assert done.failed_ids == []
    assert role_of(pg_admin, grant_id) is None
    outcomes = {o["request_id"]: o for o in outcomes_of(drain_events(sqs, deployment.events_url))}
    assert outcomes[f"{rid}-r"]["status"] == "revoked"
    assert outcomes[rid]["status"] == "refused"
    assert client("scheduler").list_schedules(GroupName=deployment.group)["Schedules"] == []


def test_a_failure_is_retried_alone_and_holds_back_its_own_grant_only(
    deployment: Any, pg_admin: Any
) -> None:
    sqs = client("sqs")
    ok_rid, bad_rid = f"ok-{uuid.uuid4().hex[:8]}", f"bad-{uuid.uuid4().hex[:8]}"
    bad_grant = derive_grant_id(BROKEN, bad_rid)
    assert post(deployment, grant_body(bad_rid, BROKEN, public_key=deployment.box_public))[0] == 202
    assert post(deployment, revoke_body(f"{bad_rid}-r", bad_grant, BROKEN))[0] == 202
    assert post(deployment, grant_body(ok_rid, public_key=deployment.box_public))[0] == 202
    messages = receive(sqs, deployment.queue_url)
    assert len(messages) == 3
    by_body = {
        json.loads(json.loads(m["Body"])["envelope"]["body"])["request_id"]: m["MessageId"]
        for m in messages
    }
    done = deliver(sqs, deployment.queue_url, deployment.queue_arn, worker.handler, messages)
    # The broken integration's secret is missing: its grant fails and the revoke behind it waits.
    assert sorted(done.failed_ids) == sorted([by_body[bad_rid], by_body[f"{bad_rid}-r"]])
    assert role_of(pg_admin, derive_grant_id(PG, ok_rid)) is not None
    # Redelivered, in order, still failing: never dropped, never reordered.
    again = deliver(sqs, deployment.queue_url, deployment.queue_arn, worker.handler)
    assert len(again.messages) == 2 and len(again.failed_ids) == 2
    receive_counts = [int(m["Attributes"]["ApproximateReceiveCount"]) for m in again.messages]
    assert receive_counts == [2, 2]
    # Once the secret exists the grant runs, then its revoke, in that order.
    client("secretsmanager").create_secret(
        Name="jitc/missing", SecretString=json.dumps({"password": "x"})
    )
    drain_events(sqs, deployment.events_url)
    fixed = deliver(sqs, deployment.queue_url, deployment.queue_arn, worker.handler)
    assert fixed.failed_ids == []
    statuses = [
        (o["request_id"], o["status"])
        for o in outcomes_of(drain_events(sqs, deployment.events_url))
    ]
    assert statuses == [(bad_rid, "granted"), (f"{bad_rid}-r", "revoked")]
    assert role_of(pg_admin, bad_grant) is None


def test_malformed_and_forged_queue_messages_are_refused_and_deleted(deployment: Any) -> None:
    sqs = client("sqs")
    forged = json.dumps(
        {
            "kind": "request",
            "envelope": {
                "key_id": "cp1",
                "timestamp": int(time.time()),
                "signature": "AAAA",
                "body": "{}",
            },
        }
    )
    for index, body in enumerate(["not json", forged, json.dumps({"kind": "other"})]):
        sqs.send_message(
            QueueUrl=deployment.queue_url, MessageBody=body, MessageGroupId=f"g{index}"
        )
    done = deliver(sqs, deployment.queue_url, deployment.queue_arn, worker.handler)
    assert len(done.messages) == 3 and done.failed_ids == []
    refusals = [
        e["detail"]
        for e in drain_events(sqs, deployment.events_url)
        if e["detail-type"] == "jitc.audit"
    ]
    assert sorted(r["field"] for r in refusals) == ["kind", "message", "signature"]
    assert queue_depth(deployment) == 0


def test_sweep_revokes_what_outlived_its_expiry(deployment: Any, pg_admin: Any) -> None:
    sqs = client("sqs")
    rid = f"swp-{uuid.uuid4().hex[:8]}"
    grant_id = derive_grant_id(PG, rid)
    assert (
        post(deployment, grant_body(rid, duration="3s", public_key=deployment.box_public))[0] == 202
    )
    assert deliver(sqs, deployment.queue_url, deployment.queue_arn, worker.handler).failed_ids == []
    assert role_of(pg_admin, grant_id) is not None
    # Its scheduled revoke is never delivered here: the sweep alone must end the grant.
    time.sleep(3.2)
    event = {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.scheduler",
        "account": "123456789012",
        "time": datetime.now(UTC).isoformat(),
        "region": "us-east-1",
        "resources": [],
        "detail": {},
    }
    report = invoke("sweep", sweep.handler, event)
    assert report["revoked"] == [grant_id]  # and nothing that is still within its time
    # One unreachable integration is reported and does not stop the sweep of the others.
    assert set(report["failed"]) == {BROKEN}
    assert role_of(pg_admin, grant_id) is None


class _Hook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    status: ClassVar[int] = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).status == 200:
            type(self).received.append((dict(self.headers.items()), body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


def test_outcomes_reach_the_control_plane_as_signed_webhooks(
    aws: str, pg_admin: Any, tmp_path: Path
) -> None:
    from jitc.signing import Envelope, signing_keypair, verify

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received, _Hook.status = [], 500
    seed, public = signing_keypair()
    client("secretsmanager").create_secret(
        Name="jitc/connector", SecretString=json.dumps({"seed": seed})
    )
    catalog = {
        "connector": {
            "signing_key": "aws-sm:jitc/connector#seed",
            "webhook_url": f"http://127.0.0.1:{server.server_address[1]}/hook",
        },
        "integrations": pg_integration(PG),
    }
    deployment = deploy(tmp_path, catalog)
    try:
        sqs = client("sqs")
        rid = f"hook-{uuid.uuid4().hex[:8]}"
        assert post(deployment, grant_body(rid, public_key=deployment.box_public))[0] == 202
        messages = receive(sqs, deployment.queue_url)
        # The control plane is down: the batch fails as a whole and nothing is deleted.
        with pytest.raises(Exception, match="webhook"):
            invoke("worker", worker.handler, lambda_sqs_event(messages, deployment.queue_arn))
        _Hook.status = 200
        assert (
            deliver(
                sqs, deployment.queue_url, deployment.queue_arn, worker.handler, messages
            ).failed_ids
            == []
        )
        outcomes = []
        for headers, body in _Hook.received:
            envelope = Envelope.from_headers(headers, body)
            verify(envelope, {"connector": public}, time.time(), 300, 300)
            doc = json.loads(body)
            if doc["type"] == "outcome":
                outcomes.append(doc["outcome"])
        granted = [o for o in outcomes if o["request_id"] == rid and o["status"] == "granted"]
        assert len(granted) == 1 and granted[0]["sealed_credentials"]
        assert seed not in json.dumps([b.decode() for _, b in _Hook.received])
    finally:
        server.shutdown()
        drop_pg_roles(pg_admin)


def _sweep_event() -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.scheduler",
        "account": "123456789012",
        "time": datetime.now(UTC).isoformat(),
        "region": "us-east-1",
        "resources": [],
        "detail": {},
    }


def _metrics(printed: str) -> dict[str, float]:
    """The metrics in the Embedded Metric Format lines a handler printed."""
    found: dict[str, float] = {}
    for line in printed.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "_aws" in doc:
            for directive in doc["_aws"]["CloudWatchMetrics"]:
                for metric in directive["Metrics"]:
                    value = doc[metric["Name"]]
                    found[metric["Name"]] = sum(value) if isinstance(value, list) else value
    return found


def test_a_complete_sweep_beats_the_heartbeat_the_alarm_watches_and_a_failing_one_does_not(
    aws: str, pg_admin: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tfmodule import load

    alarm = load().resource("aws_cloudwatch_metric_alarm", "sweep_heartbeat")
    assert alarm["treat_missing_data"] == "breaching"
    (tmp_path / "ok").mkdir()
    (tmp_path / "broken").mkdir()
    deploy(tmp_path / "ok", {"integrations": pg_integration(PG)})
    capsys.readouterr()
    invoke("sweep", sweep.handler, _sweep_event())
    beat = _metrics(capsys.readouterr().out)
    assert beat.get(alarm["metric_name"]) == 1
    urllib.request.urlopen(urllib.request.Request(f"{aws}/moto-api/reset", method="POST"))
    broken = pg_integration(BROKEN, "aws-sm:jitc/none#x")
    deploy(tmp_path / "broken", {"integrations": {**pg_integration(PG), **broken}})
    invoke("sweep", sweep.handler, _sweep_event())
    assert alarm["metric_name"] not in _metrics(capsys.readouterr().out)


class _RunningOut(LambdaContext):
    """A context whose remaining time drops below the worker's reserve after `runs` asks."""

    def __init__(self, runs: int) -> None:
        super().__init__(function_name="jitc-worker")
        self.asked = 0
        self.runs = runs

    def get_remaining_time_in_millis(self) -> int:
        self.asked += 1
        return 60_000 if self.asked <= self.runs else 5_000


def test_a_worker_running_out_of_time_starts_nothing_more_and_returns_the_rest(
    deployment: Any, pg_admin: Any
) -> None:
    sqs = client("sqs")
    rids = [f"tmo-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for rid in rids:
        assert post(deployment, grant_body(rid, public_key=deployment.box_public))[0] == 202
    messages = receive(sqs, deployment.queue_url)
    assert len(messages) == 3
    event = lambda_sqs_event(messages, deployment.queue_arn)
    with acting_as("worker"):
        response = worker.handler(event, _RunningOut(runs=1))
    failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
    ran = [m for m in messages if m["MessageId"] not in failed]
    # The one unit of time allowed went to the batch's grants, made together in one round
    # trip; each grant made has its outcome, and what did not run comes back.
    assert ran and len(ran) + len(failed) == 3
    granted = {rid for rid in rids if role_of(pg_admin, derive_grant_id(PG, rid)) is not None}
    assert granted == {request_id_of(m["Body"]) for m in ran}
    # With no time at all, nothing starts and everything comes back.
    with acting_as("worker"):
        response = worker.handler(event, _RunningOut(runs=0))
    assert len(response["batchItemFailures"]) == 3


def test_the_aws_templates_use_the_runtimes_clients(deployment: Any) -> None:
    from jitc.aws import runtime
    from jitc.templates import aws_session

    runtime.engine()
    assert aws_session.client("iam", "us-east-1") is runtime.regional_client("iam", "us-east-1")
    runtime.reset()
    assert aws_session.client("iam", "us-east-1") is not runtime.regional_client("iam", "us-east-1")


def test_a_sweep_running_out_of_time_starts_no_more_revokes_and_beats_no_heartbeat(
    deployment: Any, pg_admin: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    sqs = client("sqs")
    rids = [f"swt-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for rid in rids:
        body = grant_body(rid, duration="2s", public_key=deployment.box_public)
        assert post(deployment, body)[0] == 202
    assert deliver(sqs, deployment.queue_url, deployment.queue_arn, worker.handler).failed_ids == []
    time.sleep(2.2)
    capsys.readouterr()
    # Time for the listing of the first integration and nothing more: its bulk revoke and
    # every other integration wait for the next sweep.
    with acting_as("sweep"):
        report = sweep.handler(_sweep_event(), _RunningOut(runs=1))
    assert report["revoked"] == [] and report["unfinished"] >= 2 and report["failed"] == {}
    left = [rid for rid in rids if role_of(pg_admin, derive_grant_id(PG, rid)) is not None]
    assert len(left) == 2
    assert "SweepCompleted" not in _metrics(capsys.readouterr().out)
    # The next sweep, with time, finishes the rest.
    report = invoke("sweep", sweep.handler, _sweep_event())
    assert report["unfinished"] == 0
    assert all(role_of(pg_admin, derive_grant_id(PG, rid)) is None for rid in rids)
    from jitc.aws import runtime

    runtime.reset()  # the runtime's session must not outlive this deployment's tests
