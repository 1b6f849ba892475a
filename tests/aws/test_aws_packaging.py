"""`jitc package aws` builds the zip Terraform deploys; unpacked into a clean folder and run by an
interpreter that sees nothing else (no site-packages), its handler paths take a signed request
through the intake and the worker to a real grant."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from awsharness import PG_SCHEMA, deploy, drop_pg_roles, pg_integration, signed_http_event
from closure import connector_requirements, unmet_requirements

from jitc.models import derive_grant_id
from jitc.packaging import build

INTEGRATION = "awst-pkg"

CHILD = r"""
import json, sys, uuid
folder = sys.argv[1]
sys.path[:0] = [folder]
import boto3, pydantic
import jitc.aws.intake, jitc.aws.worker, jitc.aws.sweep, jitc.aws.rotation

class Context:
    function_name = "jitc-packaged"; function_version = "$LATEST"; memory_limit_in_mb = 128
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:jitc-packaged"
    aws_request_id = str(uuid.uuid4()); log_group_name = "/aws/lambda/x"; log_stream_name = "x"
    def get_remaining_time_in_millis(self): return 60000

origins = {m.__name__: m.__file__ for m in (jitc.aws.intake, jitc.aws.worker, jitc.aws.sweep,
                                            jitc.aws.rotation, boto3, pydantic)}
# The rotation function's handler path, as rotation.tf names it: a step it does not know is
# refused before any call.
try:
    jitc.aws.rotation.handler({"Step": "bogus"}, Context())
    rotation = "ran"
except ValueError as exc:
    rotation = str(exc)
event = json.loads(sys.stdin.read())
intake = jitc.aws.intake.handler(event["http"], Context())
sqs = boto3.client("sqs")
got = sqs.receive_message(QueueUrl=event["queue_url"], MaxNumberOfMessages=10,
                          MessageSystemAttributeNames=["All"])["Messages"]
records = [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
            "attributes": m["Attributes"], "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
            "eventSource": "aws:sqs", "eventSourceARN": event["queue_arn"], "awsRegion": "us-east-1"}
           for m in got]
# Redeliver what failed, as the queue would: only a race with other suites on the shared
# PostgreSQL ("tuple concurrently updated") is expected to fail here.
for _ in range(5):
    worker = jitc.aws.worker.handler({"Records": records}, Context())
    if not worker["batchItemFailures"]:
        break
print("RESULT " + json.dumps({"origins": origins, "intake": intake, "worker": worker,
                              "received": len(got), "rotation": rotation}))
"""


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("aws", tmp_path_factory.mktemp("dist"))


def test_the_build_is_reproducible_and_holds_only_what_it_should(
    package: Path, tmp_path: Path
) -> None:
    again = build("aws", tmp_path)
    assert (
        hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(package.read_bytes()).digest()
    )
    names = zipfile.ZipFile(package).namelist()
    assert "jitc/aws/worker.py" in names and "jitc/engine.py" in names
    assert {"jitc/aws/sync.py", "jitc/aws/sync_state.py", "jitc/inventory.py"} <= set(names)
    assert "jitc/aws/rotation.py" in names and "jitc/rotation.py" in names
    assert "jitc-package.json" in names and "jitc/aws/requirements.txt" not in names
    assert not [n for n in names if n.startswith(("core/", "aws/"))]
    # Compiled for the functions' Python when built with it (this suite runs 3.11): every module
    # has its bytecode, so no cold start compiles; nothing else is cached.
    manifest = json.loads(zipfile.ZipFile(package).read("jitc-package.json"))
    assert manifest["bytecode"] is (sys.version_info[:2] == (3, 11))
    pyc = {n for n in names if n.endswith(".pyc")}
    assert all("/__pycache__/" in n or n.startswith("__pycache__/") for n in pyc)
    sources = [n for n in names if n.endswith(".py")]
    if manifest["bytecode"]:
        for source in sources:
            folder, _, file = source.rpartition("/")
            cached = f"{folder}/__pycache__/" if folder else "__pycache__/"
            assert f"{cached}{file[:-3]}.cpython-311.pyc" in pyc, source
    else:
        assert not pyc
    assert not [n for n in names if n.startswith(("tests/", "bench/", "infra/", "azure/"))]
    manifest = json.loads(zipfile.ZipFile(package).read("jitc-package.json"))
    assert manifest["cloud"] == "aws" and "boto3==1.44.8" in manifest["requirements"]


def test_every_packaged_distribution_finds_what_it_requires(package: Path, tmp_path: Path) -> None:
    # The pins are installed with --no-deps: a dependency missing from them would be missing
    # from the zip, and the function would fail at its first import in the cloud.
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    pins = json.loads((folder / "jitc-package.json").read_text())["requirements"]
    roots = [*pins, *connector_requirements("aws")]
    assert unmet_requirements(folder, roots) == []
    # And it would be seen where no pin says it: psycopg[binary] (the connector's own extra)
    # asks for psycopg-binary of exactly psycopg's version.
    (info,) = folder.glob("psycopg_binary-*.dist-info")
    metadata = info / "METADATA"
    metadata.write_text(re.sub(r"(?m)^Version: .*$", "Version: 3.0.0", metadata.read_text()))
    pins = [p if not p.startswith("psycopg-binary==") else "psycopg-binary==3.0.0" for p in pins]
    unmet = unmet_requirements(folder, [*pins, *connector_requirements("aws")])
    assert [u for u in unmet if u.startswith("psycopg-binary==")], unmet


def test_the_unpacked_zip_runs_the_deployed_handler_paths(
    package: Path, aws: str, pg_admin: Any, tmp_path: Path
) -> None:
    deployment = deploy(tmp_path, {"integrations": pg_integration(INTEGRATION)})
    folder = tmp_path / "lambda-task"
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    rid = f"pkg-{uuid.uuid4().hex[:8]}"
    body = {
        "request_id": rid, "action": "grant", "integration": INTEGRATION, "permission": "read",
        "resources": [PG_SCHEMA], "duration": "10m",
        "identity": {"email": "pkg@example.com", "public_key": deployment.box_public},
    }  # fmt: skip
    request = {
        "http": signed_http_event(body, deployment),
        "queue_url": deployment.queue_url,
        "queue_arn": deployment.queue_arn,
    }
    # -S: no site-packages at all; only the unpacked zip and the standard library.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    child = subprocess.run(
        [sys.executable, "-S", "-c", CHILD, str(folder)],
        input=json.dumps(request), capture_output=True, text=True, env=env, timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    line = next(x for x in child.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    for name, origin in result["origins"].items():
        assert origin.startswith(str(folder)), (name, origin)
    assert result["intake"]["statusCode"] == 202
    assert result["received"] == 1
    assert result["worker"] == {"batchItemFailures": []}
    assert result["rotation"].startswith("Step must be one of createSecret")
    row = pg_admin.execute(
        "SELECT count(*) FROM pg_roles r JOIN pg_shdescription d ON d.objoid = r.oid "
        "WHERE d.description LIKE %s",
        (f'%"grant_id":"{derive_grant_id(INTEGRATION, rid)}"%',),
    ).fetchone()
    assert row == (1,)
    drop_pg_roles(pg_admin)


SYNC_CHILD = r"""
import json, sys, uuid
folder = sys.argv[1]
sys.path[:0] = [folder]
import jitc.aws.sync, jitc.inventory

class Context:
    function_name = "jitc-packaged-sync"; function_version = "$LATEST"; memory_limit_in_mb = 128
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:jitc-packaged-sync"
    aws_request_id = str(uuid.uuid4()); log_group_name = "/aws/lambda/x"; log_stream_name = "x"
    def get_remaining_time_in_millis(self): return 60000

event = {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
         "source": "aws.scheduler", "account": "123456789012", "time": "2026-01-01T00:00:00Z",
         "region": "us-east-1", "resources": [], "detail": {}}
report = jitc.aws.sync.handler(event, Context())
origins = {m.__name__: m.__file__ for m in (jitc.aws.sync, jitc.inventory)}
print("RESULT " + json.dumps({"origins": origins, "report": report}))
"""


def test_the_unpacked_zip_runs_the_inventory_sync_handler(
    package: Path, aws: str, pg_admin: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from awsharness import client
    from inventory_cp import ControlPlane, serving

    from jitc.signing import signing_keypair

    private, public = signing_keypair()
    cp = ControlPlane(public)
    with serving(cp) as url:
        client("secretsmanager").create_secret(
            Name="jitc/signing", SecretString=json.dumps({"key": private})
        )
        deploy(
            tmp_path,
            {
                "integrations": pg_integration(INTEGRATION),
                "connector": {"webhook_url": url, "signing_key": "aws-sm:jitc/signing#key"},
            },
        )
        client("dynamodb").create_table(
            TableName="jitc-pkg-sync",
            KeySchema=[{"AttributeName": "integration", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "integration", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        folder = tmp_path / "lambda-task"
        with zipfile.ZipFile(package) as archive:
            archive.extractall(folder)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JITC_QUEUE_URL")}
        env["JITC_SYNC_TABLE"] = "jitc-pkg-sync"
        child = subprocess.run(
            [sys.executable, "-S", "-c", SYNC_CHILD, str(folder)],
            capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
        )  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    line = next(x for x in child.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    for name, origin in result["origins"].items():
        assert origin.startswith(str(folder)), (name, origin)
    assert result["report"]["integrations"][INTEGRATION]["acked"], result
    assert cp.current.get(INTEGRATION) and not cp.refused
