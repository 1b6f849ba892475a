"""AWS test harness: moto's server on a free loopback port (so boto3's real HTTP path is used),
an emulation of the Lambda SQS event source mapping, and a recorder of every AWS call each
function makes, which the least-privilege test compares with the Terraform policies.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aws_moto_ext as moto_ext
import awsmodel
import boto3
import botocore.client
import botocore.exceptions
import pytest
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
ACCOUNT = "123456789012"

# Which function's code is running: calls are attributed to it, and to nothing in test setup.
ACTING_AS: contextvars.ContextVar[str | None] = contextvars.ContextVar("acting_as", default=None)
CALLS: dict[str, set[str]] = {}
CALLS_FILE_ENV = "JITC_AWS_CALLS_FILE"


# Requests AWS would have refused for breaking the service model (see awsmodel.py).
REFUSED: list[str] = []


@dataclass(frozen=True)
class Request:
    function: str
    service: str
    operation: str
    params: dict[str, Any]
    prefix: str = ""  # the IAM action prefix (signing name): sso-admin's is "sso"


# Every aws-sm: reference of the catalogs deployed: what the module would let the functions read.
SECRET_REFS: set[str] = set()

# Every request a function's code sent, with its parameters (what it named, not only the action).
REQUESTS: list[Request] = []


def _record_calls() -> None:
    original = botocore.client.BaseClient._make_api_call

    def recording(self: Any, operation_name: str, api_params: Any) -> Any:
        function = ACTING_AS.get()
        credentials = getattr(self._request_signer, "_credentials", None)
        key = getattr(credentials, "access_key", None)
        if function is not None and key not in (None, os.environ.get("AWS_ACCESS_KEY_ID")):
            # Through a role it assumed (a member account): that role's policy governs the call.
            function = f"{function}@assumed"
        if function is not None:
            prefix = self.meta.service_model.signing_name
            CALLS.setdefault(function, set()).add(f"{prefix}:{operation_name}")
        service = self.meta.service_model.service_name
        if function is not None:
            REQUESTS.append(
                Request(function, service, operation_name, dict(api_params), prefix)
            )
        breaches = awsmodel.violations(service, operation_name, api_params)
        if breaches:
            REFUSED.extend(breaches)
            # What AWS answers, so the code under test meets the error it would meet there.
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "ValidationException", "Message": "; ".join(breaches)}},
                operation_name,
            )
        return original(self, operation_name, api_params)

    botocore.client.BaseClient._make_api_call = recording  # type: ignore[method-assign]


@contextlib.contextmanager
def acting_as(function: str) -> Iterator[None]:
    token = ACTING_AS.set(function)
    try:
        yield
    finally:
        ACTING_AS.reset(token)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    moto_ext.install()
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_DEV": "false",
        }
    )
    _record_calls()
    yield url
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    target = os.environ.get(CALLS_FILE_ENV)
    if target:
        record = {
            "calls": {k: sorted(v) for k, v in CALLS.items()},
            "requests": [r.__dict__ for r in REQUESTS],
            "secret_refs": sorted(SECRET_REFS),
        }
        Path(target).write_text(json.dumps(record, default=str))


_AWS_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "POWERTOOLS_TRACE_DISABLED",
    "POWERTOOLS_DEV",
)


@pytest.fixture
def aws(moto_url: str) -> Iterator[str]:
    """A clean moto for each test."""
    request = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass
    yield moto_url


def client(service: str) -> Any:
    return boto3.session.Session().client(service, region_name=REGION)


@dataclass
class LambdaContext:
    """What Powertools reads from the Lambda context object."""

    function_name: str = "jitc-test"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 128
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:jitc-test"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/jitc-test"
    log_stream_name: str = "test"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


# A function with credentials here runs with them (its role's, under enforced IAM), not the
# environment's; the runtime is rebuilt around each invocation so its clients use them.
FUNCTION_CREDENTIALS: dict[str, dict[str, str]] = {}


@contextlib.contextmanager
def _credentials_of(function: str) -> Iterator[None]:
    credentials = FUNCTION_CREDENTIALS.get(function)
    if credentials is None:
        yield
        return
    from jitc.aws import runtime

    saved = {k: os.environ.get(k) for k in credentials}
    os.environ.update(credentials)
    runtime.reset()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        runtime.reset()


def invoke(function: str, handler: Callable[[Any, Any], Any], event: dict[str, Any]) -> Any:
    with acting_as(function), _credentials_of(function):
        return handler(event, LambdaContext(function_name=f"jitc-{function}"))


def lambda_sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """The event Lambda's SQS event source mapping builds from a ReceiveMessage answer."""
    records = []
    for m in messages:
        attributes = {k: str(v) for k, v in m.get("Attributes", {}).items()}
        records.append(
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": REGION,
            }
        )
    return {"Records": records}


@dataclass
class Delivery:
    messages: list[dict[str, Any]]
    failed_ids: list[str]
    response: dict[str, Any]


def receive(sqs: Any, queue_url: str, wait: float = 2.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + wait
    while True:
        got = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            AttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
            VisibilityTimeout=30,
        ).get("Messages", [])
        if got or time.monotonic() > deadline:
            return list(got)
        time.sleep(0.05)


TRANSIENT = ("tuple concurrently updated",)


def request_id_of(body: str) -> str | None:
    try:
        doc = json.loads(body)
        if doc.get("kind") == "expire":
            return f"expire-{doc['grant_id']}"
        return str(json.loads(doc["envelope"]["body"])["request_id"])
    except (ValueError, KeyError, TypeError):
        return None


def _is_transient(message: dict[str, Any]) -> bool:
    """A failure that is only a server-side race which a redelivery clears (other suites share
    the PostgreSQL server, and concurrent GRANTs on one database can collide)."""
    from jitc.aws import runtime
    from jitc.local import MemorySink

    memory = next((s for s in runtime.sinks().sinks if isinstance(s, MemorySink)), None)
    rid = request_id_of(message["Body"])
    latest = [o for o in memory.outcomes if o.request_id == rid] if memory else []
    return bool(latest) and any(t in (latest[-1].message or "") for t in TRANSIENT)


def is_transient_outcome(outcome: dict[str, Any]) -> bool:
    return outcome.get("status") == "failed" and any(
        t in (outcome.get("message") or "") for t in TRANSIENT
    )


def deliver(
    sqs: Any,
    queue_url: str,
    queue_arn: str,
    handler: Callable[[Any, Any], Any],
    messages: list[dict[str, Any]] | None = None,
) -> Delivery:
    """One poll of the event source mapping: receive, invoke, delete what succeeded, and make
    what failed visible again (the visibility timeout, shortened for the test).

    A failure that is only a transient server race is redelivered at once, as the queue would
    after its visibility timeout; the result reports the other failures."""
    from jitc.aws import runtime
    from jitc.local import MemorySink

    sinks = runtime.sinks()
    if not any(isinstance(s, MemorySink) for s in sinks.sinks):
        sinks.sinks = (*sinks.sinks, MemorySink())
    if messages is None:
        messages = receive(sqs, queue_url)
    assert messages, "no message to deliver"
    delivered: list[dict[str, Any]] = []
    failed: list[str] = []
    persistent: list[dict[str, Any]] = []
    response: dict[str, Any] = {}
    for attempt in range(6):
        response = invoke("worker", handler, lambda_sqs_event(messages, queue_arn))
        failing = {item["itemIdentifier"] for item in response["batchItemFailures"]}
        retry = []
        for m in messages:
            if m["MessageId"] not in failing:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
            elif attempt < 5 and _is_transient(m):
                sqs.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0
                )
                retry.append(m)
            else:
                persistent.append(m)
        if attempt == 0:
            delivered = list(messages)
        if not retry:
            break
        # Same-group messages held back behind a transient failure come back with it.
        messages = receive(sqs, queue_url)
    for m in persistent:
        sqs.change_message_visibility(
            QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0
        )
        failed.append(m["MessageId"])
    return Delivery(delivered, failed, response)


# -- PostgreSQL ---------------------------------------------------------------------------------

# Our own prefix and schema per run: other suites use the same server at the same time.
RUN = uuid.uuid4().hex[:4]
PG_PREFIX = f"awst{RUN}_"
PG_SCHEMA = f"awst{RUN}_data"


def drop_pg_roles(conn: Any) -> None:
    """Drop the roles this run made (and only those)."""
    from pgtest import drop_roles_under

    drop_roles_under(conn, PG_PREFIX)


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Any]:
    from pgtest import schema_admin

    with schema_admin(PG_PREFIX, PG_SCHEMA, ("a", "b")) as conn:
        yield conn


# -- A deployed connector on moto ---------------------------------------------------------------


@dataclass
class Deployment:
    """What the Terraform module creates, made on moto, and the environment it gives the code."""

    queue_url: str
    queue_arn: str
    dlq_url: str
    group: str
    bus: str
    events_url: str
    catalog_path: Path
    sign_private: str
    box_private: str
    box_public: str
    admin_secret: str
    schedule_dlq_arn: str = ""


def deploy(
    tmp_path: Path, catalog_doc: dict[str, Any], admin_secret: str = "pg-admin-pw"
) -> Deployment:
    """Queue + DLQ, scheduler group, bus with a rule to a queue we read, secret, catalog file."""
    import hashlib

    from jitc.aws import runtime
    from jitc.sealing import box_keypair
    from jitc.signing import signing_keypair

    sqs, scheduler, events, sm = (
        client(s) for s in ("sqs", "scheduler", "events", "secretsmanager")
    )
    dlq_url = sqs.create_queue(QueueName="jitc-dlq.fifo", Attributes={"FifoQueue": "true"})[
        "QueueUrl"
    ]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue_url = sqs.create_queue(
        QueueName="jitc-requests.fifo",
        Attributes={
            "FifoQueue": "true",
            "ContentBasedDeduplication": "true",
            "VisibilityTimeout": "60",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5}),
        },
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    schedule_dlq_url = sqs.create_queue(QueueName="jitc-schedule-dead-letters")["QueueUrl"]
    schedule_dlq_arn = sqs.get_queue_attributes(
        QueueUrl=schedule_dlq_url, AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    scheduler.create_schedule_group(Name="jitc-expiry")
    events.create_event_bus(Name="jitc-events")
    events_url = sqs.create_queue(QueueName="jitc-events-copy")["QueueUrl"]
    events_arn = sqs.get_queue_attributes(QueueUrl=events_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    events.put_rule(
        Name="all",
        EventBusName="jitc-events",
        EventPattern=json.dumps({"source": ["jit-connector"]}),
    )
    events.put_targets(
        Rule="all", EventBusName="jitc-events", Targets=[{"Id": "copy", "Arn": events_arn}]
    )
    sm.create_secret(Name="jitc/pg-admin", SecretString=json.dumps({"password": admin_secret}))
    # The PostgreSQL template signs its labels: the catalog must name a label key.
    sm.create_secret(Name="jitc/label", SecretString=json.dumps({"key": uuid.uuid4().hex * 2}))

    sign_private, sign_public = signing_keypair()
    box_private, box_public = box_keypair()
    doc = {"control_plane": {"keys": {"cp1": sign_public}}, **catalog_doc}
    doc["connector"] = {"label_key": "aws-sm:jitc/label#key", **doc.get("connector", {})}
    # As Terraform ships it: the reviewed YAML's data, as JSON.
    catalog_path = tmp_path / "catalog.json"
    catalog_path.write_text(json.dumps(doc))
    SECRET_REFS.update(re.findall(r'"aws-sm:([^"#]+)', json.dumps(doc)))
    os.environ.update(
        {
            "JITC_CATALOG_PATH": str(catalog_path),
            "JITC_CATALOG_SHA256": hashlib.sha256(catalog_path.read_bytes()).hexdigest(),
            "JITC_QUEUE_URL": queue_url,
            "JITC_QUEUE_ARN": queue_arn,
            "JITC_SCHEDULE_GROUP": "jitc-expiry",
            "JITC_SCHEDULER_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/jitc-scheduler",
            "JITC_SCHEDULE_DLQ_ARN": schedule_dlq_arn,
            "JITC_EVENT_BUS": "jitc-events",
        }
    )
    runtime.reset()
    return Deployment(
        queue_url,
        queue_arn,
        dlq_url,
        "jitc-expiry",
        "jitc-events",
        events_url,
        catalog_path,
        sign_private,
        box_private,
        box_public,
        admin_secret,
        schedule_dlq_arn,
    )


def pg_integration(name: str, credentials: str = "aws-sm:jitc/pg-admin#password") -> dict[str, Any]:
    from pgtest import cloud_integration

    return cloud_integration(name, credentials, PG_PREFIX, PG_SCHEMA, "2h")


def signed_http_event(
    body: dict[str, Any],
    deployment: Deployment,
    *,
    key_id: str = "cp1",
    timestamp: int | None = None,
    path: str = "/v1/requests",
    method: str = "POST",
    tamper: bool = False,
) -> dict[str, Any]:
    """A Lambda Function URL event (payload format 2.0) carrying a signed request."""
    from jitc.signing import HEADER_KEY_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, sign

    raw = json.dumps(body).encode()
    envelope = sign(raw, deployment.sign_private, key_id, timestamp)
    if tamper:
        raw = raw.replace(b'"read"', b'"READ"')
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            HEADER_KEY_ID.lower(): envelope.key_id,
            HEADER_TIMESTAMP.lower(): str(envelope.timestamp),
            HEADER_SIGNATURE.lower(): envelope.signature,
        },
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "jitc",
            "domainName": "jitc.lambda-url.us-east-1.on.aws",
            "domainPrefix": "jitc",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "control-plane",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": "01/Jan/2026:00:00:00 +0000",
            "timeEpoch": int(time.time() * 1000),
        },
        "body": raw.decode(),
        "isBase64Encoded": False,
    }


def drain_events(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Events the bus forwarded (through the rule) to our copy queue."""
    found: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            return found
        for m in got:
            found.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
