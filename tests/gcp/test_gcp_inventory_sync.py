"""The inventory sync function on the loopback GCP and the real PostgreSQL: the real entry file
under functions-framework, called by Cloud Scheduler's OIDC token, sends to a real control plane
(signatures, page hashes and versions checked), keeps the acknowledged versions in a Cloud
Storage object (the real google-cloud-storage client, requests checked against the storage
discovery document, generation preconditions enforced), under exactly the Terraform's bindings
for its own service account."""

from __future__ import annotations

import json
import secrets
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tfgcp
from gcpfake import ROLE_PERMISSIONS, FakeGcp
from gcpharness import (
    NAME,
    PG_SCHEMA,
    PROJECT,
    REGION,
    RUN,
    SYNC_BUCKET,
    Deployment,
    deploy,
    http_post,
    pg_integration,
)
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from inventory_cp import ControlPlane, serving

from jitc.gcp.sync_state import OBJECT
from jitc.signing import signing_keypair

PG = "sync-db"
DEAD = "sync-dead"
IAM = "sync-iam"
TARGET_PROJECT = f"jitc-synctgt-{RUN}"
TARGET_BUCKET = f"jitc-synctgt-{RUN}-data"
ROW = f"row-data-{RUN}-never-sent"

Start = Callable[..., tuple[Deployment, ControlPlane]]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def start(fake: FakeGcp, pg_admin: Any, tmp_path: Path) -> Iterator[Start]:
    """Deploys the sync function alone (with or without an unreachable integration), its
    account bound exactly as the module binds it."""
    running: list[Deployment] = []
    fake.buckets.add(SYNC_BUCKET)
    fake.objects.pop((SYNC_BUCKET, OBJECT), None)
    table = sql.Identifier(PG_SCHEMA, "items")
    pg_admin.execute(sql.SQL("INSERT INTO {} (name) VALUES (%s)").format(table), (ROW,))

    def _start(
        with_dead: bool = False, bind: bool = True, with_iam: bool = False
    ) -> tuple[Deployment, ControlPlane]:
        connector_private, connector_public = signing_keypair()
        emails: dict[str, str] = {}
        keys: dict[str, dict[str, Any]] = {}
        for name in ("sync", "invoker"):
            # An account of its own per deployment: bindings of earlier tests stay in the fake.
            emails[name], keys[name] = fake.service_account(f"{NAME}-{name}-{secrets.token_hex(3)}")
        pg_secret = fake.add_secret("sync-pg-admin", json.dumps({"password": "sync-pg-canary"}))
        label_secret = fake.add_secret("sync-label-key", "label-key-" + secrets.token_hex(16))
        signing_secret = fake.add_secret("sync-signing-key", connector_private)
        cp = ControlPlane(connector_public)
        server = serving(cp)
        url = server.__enter__()
        integrations = pg_integration(PG, f"gcp-sm:{pg_secret}/versions/latest#password")
        if with_dead:
            dead = json.loads(json.dumps(integrations[PG]))
            dead["connection"].update(port=_closed_port(), connect_timeout=2)
            integrations[DEAD] = dead
        iam = {
            "kind": "gcp_iam",
            "connection": {
                "resources": [f"projects/{TARGET_PROJECT}", f"buckets/{TARGET_BUCKET}"],
                "allowed_members": ["user:*@example.com"],
            },
            "permissions": {
                "exports": {
                    "role": "roles/storage.objectViewer",
                    "resources": [f"buckets/{TARGET_BUCKET}"],
                },
            },
        }
        if with_iam:
            integrations[IAM] = iam
        catalog = {
            "control_plane": {"keys": {"cp1": signing_keypair()[1]}},
            "connector": {
                "label_key": f"gcp-sm:{label_secret}/versions/latest",
                "signing_key": f"gcp-sm:{signing_secret}/versions/1",
                "webhook_url": url,
            },
            "integrations": integrations,
        }
        facts = tfgcp.facts_from_catalog(catalog, PROJECT, REGION, NAME)
        fake.custom_roles.update(tfgcp.custom_roles(facts))
        if bind:
            for binding in tfgcp.bindings(facts, emails):
                if binding.function == "sync":
                    fake.bind(binding.resource, binding.role, f"serviceAccount:{emails['sync']}")
        deployed = deploy(
            fake, tmp_path, catalog, "", emails, emails["invoker"], keys, functions=("sync",)
        )
        running.append(deployed)
        deployed.tmp = tmp_path
        setattr(deployed, "signing_private", connector_private)  # noqa: B010
        setattr(deployed, "cp_server", server)  # noqa: B010
        return deployed, cp

    yield _start
    for deployed in running:
        deployed.stop()
        getattr(deployed, "cp_server").__exit__(None, None, None)  # noqa: B009


def PG_SCHEMA_NAME() -> str:
    from gcpharness import PG_SCHEMA

    return PG_SCHEMA


def run_sync(fake: FakeGcp, deployment: Deployment, audience: str | None = None) -> tuple[int, Any]:
    url = deployment.functions["sync"].url
    token = fake.oidc_token(audience or url, deployment.invoker)
    return http_post(url, b"", {"Authorization": f"Bearer {token}"})


def _stored(fake: FakeGcp) -> dict[str, Any]:
    return dict(json.loads(fake.objects[(SYNC_BUCKET, OBJECT)][1])["integrations"])


def test_the_sync_function_sends_then_only_changes_and_a_dead_target_fails_alone(
    start: Start, fake: FakeGcp
) -> None:
    deployment, cp = start(with_dead=True)
    status, first = run_sync(fake, deployment)
    assert "status" in first, (first, deployment.logs("sync")[-5:])
    # Incomplete (one target down): 500, which the failures metric counts; no heartbeat.
    assert status == 500 and first["status"] == "incomplete"
    assert first["integrations"][PG]["acked"] and DEAD in cp.failed
    assert set(_stored(fake)) == {PG}
    status, second = run_sync(fake, deployment)
    part = second["integrations"][PG]
    assert part["acked"] and not part["full"]
    assert part["base_version"] == first["integrations"][PG]["version"]
    logs = deployment.logs("sync")
    assert not [d for d in logs if d.get("message") == "sync done" and d.get("complete")]
    # Names only: the row in the table and the secrets never travelled.
    everything = b"\n".join(cp.bodies)
    for secret in (ROW, "sync-pg-canary", getattr(deployment, "signing_private")):  # noqa: B009
        assert secret.encode() not in everything


def test_a_complete_sync_logs_the_heartbeat(start: Start, fake: FakeGcp) -> None:
    deployment, _ = start()
    status, body = run_sync(fake, deployment)
    assert status == 200 and body["ok"] and body["integrations"][PG]["acked"]
    logs = deployment.logs("sync")
    assert [d for d in logs if d.get("message") == "sync done" and d.get("complete") is True]


def test_every_call_is_allowed_and_every_binding_of_the_sync_account_is_used(
    start: Start, fake: FakeGcp
) -> None:
    """With a gcp_iam integration: its live grants and its inventory (each managed resource,
    the roles bound there and their members) are read with getIamPolicy, never set."""
    deployment, cp = start(with_iam=True)
    before = len(fake.calls)
    run_sync(fake, deployment)
    status, body = run_sync(fake, deployment)  # the second replaces the state object
    assert status == 200 and body["integrations"][PG]["acked"]
    assert body["integrations"][IAM]["status"] == "complete" and IAM not in cp.failed
    sent = b"\n".join(cp.bodies)
    assert f"buckets/{TARGET_BUCKET}".encode() in sent
    assert b"request.time" not in sent  # a condition's expression is not a name
    assert fake.violations == []
    email = deployment.emails["sync"]
    calls = [c for c in fake.calls[before:] if c.caller == email]
    assert calls and all(c.allowed for c in calls), [c for c in calls if not c.allowed]
    # Read-only on the IAM target: getIamPolicy, never setIamPolicy.
    assert not [c for c in calls if "setIamPolicy" in c.permission]
    used = {(c.permission, c.resource) for c in calls}
    facts = tfgcp.facts_from_catalog(deployment.catalog, PROJECT, REGION, NAME)
    roles = tfgcp.custom_roles(facts)
    unused = []
    for binding in tfgcp.bindings(facts, deployment.emails):
        if binding.function != "sync":
            continue
        permissions = roles.get(binding.role) or ROLE_PERMISSIONS[binding.role]
        missing = [p for p in permissions if (p, binding.resource) not in used]
        if binding.address.endswith("sync_state") and missing:
            unused.append((binding.role, binding.resource, missing))  # each of get/create/delete
        elif len(missing) == len(permissions) and binding.role != "roles/iam.securityReviewer":
            unused.append((binding.role, binding.resource, missing))
    assert unused == []


def test_without_the_modules_bucket_binding_the_state_is_refused(
    start: Start, fake: FakeGcp
) -> None:
    deployment, _ = start(bind=False)
    facts = tfgcp.facts_from_catalog(deployment.catalog, PROJECT, REGION, NAME)
    email = deployment.emails["sync"]
    for binding in tfgcp.bindings(facts, deployment.emails):
        if binding.function == "sync" and not binding.address.endswith("sync_state"):
            fake.bind(binding.resource, binding.role, f"serviceAccount:{email}")
    status, body = run_sync(fake, deployment)
    # The inventory still goes (the state is a cache); the refusal is reported on the part and
    # the job answers 500 with no heartbeat, so the failure metric and silence alert see it.
    assert status == 500 and body["status"] == "incomplete"
    assert "Forbidden" in str(body["integrations"][PG]["error"])
    assert not [d for d in deployment.logs("sync") if d.get("complete") is True]
    assert [c for c in fake.calls if c.caller == email and not c.allowed]


def test_another_sync_writing_in_between_loses_nothing(start: Start, fake: FakeGcp) -> None:
    deployment, _ = start()
    assert run_sync(fake, deployment)[0] == 200
    other = {"version": "x", "pages": [], "sync_id": "y"}

    def another_sync() -> None:
        with fake.lock:
            _, data, kind = fake.objects[(SYNC_BUCKET, OBJECT)]
            doc = json.loads(data)
            doc["integrations"]["other"] = other
            fake._generation += 1
            fake.objects[(SYNC_BUCKET, OBJECT)] = (fake._generation, json.dumps(doc).encode(), kind)

    fake.before_object_write = another_sync
    assert run_sync(fake, deployment)[0] == 200
    assert fake.before_object_write is None  # the interleaving happened
    assert {PG, "other"} <= set(_stored(fake))


def test_a_token_for_another_jobs_audience_is_refused(start: Start, fake: FakeGcp) -> None:
    deployment, cp = start()
    status, _ = run_sync(fake, deployment, audience="http://127.0.0.1:1/")
    assert status == 401 and not cp.bodies
