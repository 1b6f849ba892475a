"""End to end on the loopback GCP, with IAM enforced as the Terraform binds it.

The real entry file (`gcp/main.py`) runs in three functions-framework processes, each with
its own service account's key; every API call goes through the real Google clients to the fake,
which checks it against the discovery documents and against the bindings rendered from
infra/terraform/gcp (nothing else is bound). Cloud Tasks delivers each task to the worker with
an OIDC token the worker verifies against the fake's certificates.

signed request -> intake -> task -> worker -> PostgreSQL grant -> expiry task -> delivered at
its (fake) time -> revoke; the gcp_iam target's conditional binding; duplicated and reordered
deliveries; hostile callers of every endpoint; then the least-privilege comparison.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import tfgcp
from gcpfake import FakeGcp, _rsa_key, sign_jwt
from gcpharness import (
    NAME,
    PG_PREFIX,
    PG_SCHEMA,
    PROJECT,
    QUEUE,
    REGION,
    RUN,
    TOMBSTONE_BUCKET,
    Deployment,
    deploy,
    http_post,
    pg_integration,
    wait_for,
)

from jitc.gcp.tasks import task_id
from jitc.models import derive_grant_id
from jitc.sealing import box_keypair
from jitc.signing import sign, signing_keypair

BOX_PRIVATE, BOX_PUBLIC = box_keypair()
TARGET_PROJECT = f"jitc-tgt-{RUN}"
TARGET_BUCKET = f"jitc-tgt-{RUN}-exports"
GRANTEE = f"user:ana-{RUN}@example.com"
TOPIC = f"projects/{PROJECT}/topics/{NAME}-events"


class Webhook:
    """The control plane's webhook: records every event the connector sends."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                hook.events.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def outcomes(self, grant_id: str) -> list[dict[str, Any]]:
        return [
            e["outcome"] for e in self.events
            if e.get("type") == "outcome" and e["outcome"].get("grant_id") == grant_id
        ]  # fmt: skip


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.server.shutdown()


@pytest.fixture(scope="module")
def deployment(
    fake: FakeGcp, pg_admin: Any, webhook: Webhook, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("gcp")
    sign_private, sign_public = signing_keypair()
    connector_private, _ = signing_keypair()
    emails: dict[str, str] = {}
    keys: dict[str, dict[str, Any]] = {}
    for name in ("intake", "worker", "sweep", "sync", "invoker"):
        emails[name], keys[name] = fake.service_account(f"{NAME}-{name}")
    pg_secret = fake.add_secret("jitc-pg-admin", json.dumps({"password": "pg-admin-canary"}))
    label_secret = fake.add_secret("jitc-label-key", "label-key-" + secrets.token_hex(16))
    signing_secret = fake.add_secret("jitc-signing-key", connector_private)
    catalog = {
        "control_plane": {"keys": {"cp1": sign_public}, "max_skew": "5m"},
        "connector": {
            "label_key": f"gcp-sm:{label_secret}/versions/latest",
            "signing_key": f"gcp-sm:{signing_secret}/versions/1",
            "webhook_url": webhook.url,
        },
        "integrations": {
            **pg_integration("orders-db", f"gcp-sm:{pg_secret}/versions/latest#password"),
            "analytics-iam": {
                "kind": "gcp_iam",
                "connection": {
                    "resources": [f"projects/{TARGET_PROJECT}", f"buckets/{TARGET_BUCKET}"],
                    "allowed_members": ["user:*@example.com"],
                },
                "max_duration": "45d",
                "permissions": {
                    "viewer": {
                        "role": "roles/bigquery.dataViewer",
                        "resources": [f"projects/{TARGET_PROJECT}"],
                    },
                    "exports": {
                        "role": "roles/storage.objectViewer",
                        "resources": [f"buckets/{TARGET_BUCKET}"],
                    },
                },
            },
        },
    }
    facts = tfgcp.facts_from_catalog(catalog, PROJECT, REGION, NAME, publish_events=True)
    fake.topics.add(TOPIC)
    fake.custom_roles.update(tfgcp.custom_roles(facts))
    for binding in tfgcp.bindings(facts, emails):
        fake.bind(
            binding.resource, binding.role, f"serviceAccount:{emails[binding.function]}",
            binding.condition,
        )  # fmt: skip
    # Someone else's binding on the target project, which nothing the connector does may touch.
    fake.bind(f"projects/{TARGET_PROJECT}", "roles/bigquery.dataViewer", "user:owner@example.com")
    deployed = deploy(
        fake, tmp, catalog, sign_private, emails, emails["invoker"], keys,
        functions=("intake", "worker", "sweep"),
    )  # fmt: skip
    yield deployed
    deployed.stop()


def signed(deployment: Deployment, doc: dict[str, Any], **kw: Any) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(doc).encode()
    envelope = sign(body, deployment.sign_private, "cp1", kw.get("timestamp"))
    return body, {"Content-Type": "application/json", **envelope.headers()}


def pg_grant(request_id: str, duration: str = "30s") -> dict[str, Any]:
    return {
        "request_id": request_id, "action": "grant", "integration": "orders-db",
        "permission": "read", "resources": [PG_SCHEMA],
        "identity": {"email": f"ana-{RUN}@example.com", "public_key": BOX_PUBLIC},
        "duration": duration,
    }  # fmt: skip


def pg_roles(pg_admin: Any) -> set[str]:
    rows = pg_admin.execute(
        "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s) AND rolcanlogin",
        (PG_PREFIX,),
    ).fetchall()
    return {name for (name,) in rows}


def settled(fake: FakeGcp, timeout: float = 30.0) -> None:
    """Every task that is due has been delivered successfully."""
    wait_for(lambda: not fake.due(), timeout, "due tasks to be delivered")


def statuses(webhook: Webhook, grant_id: str) -> list[str]:
    return [o["status"] for o in webhook.outcomes(grant_id)]


# -- the PostgreSQL path ------------------------------------------------------------------------


def test_signed_grant_runs_and_expires_on_time(
    deployment: Deployment, fake: FakeGcp, pg_admin: Any, webhook: Webhook
) -> None:
    before = pg_roles(pg_admin)
    request_id = f"r-{secrets.token_hex(4)}"
    grant_id = derive_grant_id("orders-db", request_id)
    status, body = deployment.post("intake", *signed(deployment, pg_grant(request_id)))
    assert status == 202, body
    assert body["grant_id"] == grant_id
    settled(fake)
    wait_for(lambda: "granted" in statuses(webhook, grant_id), what="the grant's outcome")
    assert len(pg_roles(pg_admin) - before) == 1
    # The same outcome on the event topic, with ids as attributes for consumers to filter on.
    published = fake.published.get(TOPIC, [])
    assert any(
        m["attributes"].get("grant_id") == grant_id and m["attributes"]["type"] == "jitc.outcome"
        for m in published
    )
    # The expiry is a task named from the grant id, due at the expiry, not yet delivered.
    expiry = f"{deployment.fake.url and ''}projects/{PROJECT}/locations/{REGION}/queues/{NAME}-requests/tasks/{task_id('expire', grant_id)}"
    assert expiry in fake.tasks
    task = fake.tasks[expiry]
    assert (
        task.oidc_email == deployment.invoker
        and task.audience == deployment.functions["worker"].url
    )
    assert json.loads(task.body) == {
        "kind": "expire",
        "grant_id": grant_id,
        "integration": "orders-db",
    }
    fake.advance(timedelta(seconds=40))
    settled(fake)
    wait_for(lambda: "revoked" in statuses(webhook, grant_id), what="the expiry's revoke")
    assert pg_roles(pg_admin) == before


def test_duplicated_and_reordered_deliveries(
    deployment: Deployment, fake: FakeGcp, pg_admin: Any, webhook: Webhook
) -> None:
    request_id = f"r-{secrets.token_hex(4)}"
    grant_id = derive_grant_id("orders-db", request_id)
    body, headers = signed(deployment, pg_grant(request_id, "10m"))
    from jitc.messages import envelope_message
    from jitc.signing import Envelope

    message = envelope_message(Envelope.from_headers(headers, body)).encode()
    worker = deployment.functions["worker"].url
    token = {"Authorization": "Bearer " + fake.oidc_token(worker, deployment.invoker)}
    revoke = {
        "request_id": f"x-{request_id}",
        "action": "revoke",
        "integration": "orders-db",
        "grant_id": grant_id,
    }
    rbody, rheaders = signed(deployment, revoke)
    revoke_message = envelope_message(Envelope.from_headers(rheaders, rbody)).encode()
    # Reordered: the revoke arrives first (nothing to revoke), then the grant: refused.
    assert http_post(worker, revoke_message, token)[0] == 200
    status, answer = http_post(worker, message, token)
    assert status == 200 and answer["status"] == "refused", answer
    # Duplicated: the grant of another request twice -> one principal, reissued.
    request_id2 = f"r-{secrets.token_hex(4)}"
    body2, headers2 = signed(deployment, pg_grant(request_id2, "10m"))
    message2 = envelope_message(Envelope.from_headers(headers2, body2)).encode()
    before = pg_roles(pg_admin)
    assert http_post(worker, message2, token) == (
        200,
        {
            "status": "granted",
            "request_id": request_id2,
            "grant_id": derive_grant_id("orders-db", request_id2),
        },
    )
    assert http_post(worker, message2, token)[1]["status"] == "granted"
    assert len(pg_roles(pg_admin) - before) == 1
    # The expiry task was created once (ALREADY_EXISTS on the second delivery is success).
    expiry_name = task_id("expire", derive_grant_id("orders-db", request_id2))
    assert sum(1 for name in fake.tasks if name.endswith(expiry_name)) == 1


# -- the GCP IAM target -------------------------------------------------------------------------


def test_gcp_iam_grant_is_a_conditional_binding_that_google_ends_on_time(
    deployment: Deployment, fake: FakeGcp, webhook: Webhook
) -> None:
    request_id = f"r-{secrets.token_hex(4)}"
    grant_id = derive_grant_id("analytics-iam", request_id)
    doc = {
        "request_id": request_id, "action": "grant", "integration": "analytics-iam",
        "permission": "viewer", "resources": [f"projects/{TARGET_PROJECT}"],
        "identity": {"email": GRANTEE.removeprefix("user:")}, "duration": "20m",
    }  # fmt: skip
    assert deployment.post("intake", *signed(deployment, doc))[0] == 202
    settled(fake)
    wait_for(lambda: "granted" in statuses(webhook, grant_id), what="the IAM grant")
    resource = f"projects/{TARGET_PROJECT}"
    ours = [b for b in fake.policies[resource]["bindings"] if GRANTEE in b["members"]]
    assert len(ours) == 1 and ours[0]["condition"]["title"] == f"jitc {grant_id}"
    assert ours[0]["condition"]["expression"].startswith('request.time < timestamp("')
    assert fake.allowed(GRANTEE, "bigquery.tables.getData", resource)
    # The connector is down from here on: Google's condition alone ends the access.
    fake.advance(timedelta(minutes=21))
    assert not fake.allowed(GRANTEE, "bigquery.tables.getData", resource)
    settled(fake)
    wait_for(lambda: "revoked" in statuses(webhook, grant_id), what="the expiry revoke")
    remaining = [b for b in fake.policies[resource]["bindings"] if GRANTEE in b["members"]]
    # Nothing of the grant remains in the policy: its tombstone is an object of the connector's
    # bucket. The neighbour's binding is untouched.
    assert remaining == []
    assert any(bucket == TOMBSTONE_BUCKET for bucket, _ in fake.objects)
    assert any(
        "user:owner@example.com" in b["members"] for b in fake.policies[resource]["bindings"]
    )


def test_an_expiry_beyond_30_days_hops_and_still_revokes(
    deployment: Deployment, fake: FakeGcp, webhook: Webhook
) -> None:
    """The hop chain: the first task of a 40-day grant is a hop inside Cloud Tasks' 30 days
    (the fake refuses more); a hop delivered to the worker schedules the next step, a hop again
    while the expiry is still beyond 30 days, else the expiry itself, which revokes."""
    request_id = f"r-{secrets.token_hex(4)}"
    grant_id = derive_grant_id("analytics-iam", request_id)
    member = f"user:long-{RUN}@example.com"
    doc = {
        "request_id": request_id, "action": "grant", "integration": "analytics-iam",
        "permission": "exports", "resources": [f"buckets/{TARGET_BUCKET}"],
        "identity": {"email": member.removeprefix("user:")}, "duration": "40d",
    }  # fmt: skip
    assert deployment.post("intake", *signed(deployment, doc))[0] == 202
    settled(fake)
    wait_for(lambda: "granted" in statuses(webhook, grant_id), what="the long grant")
    hop = fake.tasks[f"{QUEUE}/tasks/{task_id('expire', grant_id)}"]
    assert json.loads(hop.body)["kind"] == "hop"
    # A week of Cloud Tasks' 31-day retention left for the hop's retries.
    assert timedelta(days=23) < hop.schedule - fake.now() <= timedelta(days=24)
    worker = deployment.functions["worker"].url
    token = {"Authorization": "Bearer " + fake.oidc_token(worker, deployment.invoker)}
    # The hop as it would arrive in 30 days, still 10 days short: a hop again.
    expires = datetime.fromisoformat(json.loads(hop.body)["expires_at"])

    def mine() -> list[Any]:
        return [t for t in fake.tasks.values() if grant_id in t.body.decode() and t is not hop]

    far = {
        **json.loads(hop.body),
        "expires_at": (datetime.now(UTC) + timedelta(days=35)).isoformat(),
    }
    assert http_post(worker, json.dumps(far).encode(), token)[0] == 200
    assert [json.loads(t.body)["kind"] for t in mine()] == ["hop"]
    with fake.lock:
        for task in mine():
            del fake.tasks[task.name]
    # ... and the last hop, with the expiry now inside 30 days: the expiry task itself.
    near = {
        **json.loads(hop.body),
        "expires_at": (datetime.now(UTC) + timedelta(seconds=8)).isoformat(),
    }
    assert http_post(worker, json.dumps(near).encode(), token)[0] == 200
    [final] = mine()
    assert json.loads(final.body) == {
        "kind": "expire",
        "grant_id": grant_id,
        "integration": "analytics-iam",
    }
    assert expires > datetime.now(UTC) + timedelta(days=39)
    with fake.lock:
        del fake.tasks[hop.name]
    fake.advance(timedelta(seconds=10))
    settled(fake)
    wait_for(lambda: "revoked" in statuses(webhook, grant_id), what="the revoke after the hops")
    assert not fake.allowed(member, "storage.objects.get", f"buckets/{TARGET_BUCKET}")


def test_the_sweep_revokes_a_grant_whose_expiry_task_was_lost(
    deployment: Deployment, fake: FakeGcp, pg_admin: Any, webhook: Webhook
) -> None:
    before = pg_roles(pg_admin)
    request_id = f"r-{secrets.token_hex(4)}"
    grant_id = derive_grant_id("orders-db", request_id)
    fake.lose = lambda task: grant_id.encode() in task.body and b'"expire"' in task.body
    try:
        assert deployment.post("intake", *signed(deployment, pg_grant(request_id, "7s")))[0] == 202
        settled(fake)
        wait_for(lambda: "granted" in statuses(webhook, grant_id), what="the short grant")
    finally:
        fake.lose = None
    [lost] = [t for t in fake.lost if grant_id.encode() in t.body]
    assert lost.name.endswith(task_id("expire", grant_id))
    sweep = deployment.functions["sweep"].url
    wait_for(lambda: datetime.now(UTC).timestamp() > lost.schedule.timestamp() + 1, 15, "expiry")
    token = {"Authorization": "Bearer " + fake.oidc_token(sweep, deployment.invoker)}
    status, answer = http_post(sweep, b"", token)
    assert status == 200, answer
    assert grant_id in answer["revoked"]
    assert pg_roles(pg_admin) == before
    assert any(
        d.get("message") == "sweep done" and d.get("complete") for d in deployment.logs("sweep")
    )


def test_the_sweep_revokes_a_lost_gcp_iam_expiry_and_leaves_its_tombstone(
    deployment: Deployment, fake: FakeGcp, webhook: Webhook
) -> None:
    """The sweep's account writes tombstones too: a late delivery of a grant it revoked is
    refused like one the worker revoked."""
    request_id = f"r-{secrets.token_hex(4)}"
    grant_id = derive_grant_id("analytics-iam", request_id)
    doc = {
        "request_id": request_id, "action": "grant", "integration": "analytics-iam",
        "permission": "exports", "resources": [f"buckets/{TARGET_BUCKET}"],
        "identity": {"email": f"swept-{RUN}@example.com"}, "duration": "7s",
    }  # fmt: skip
    fake.lose = lambda task: grant_id.encode() in task.body and b'"expire"' in task.body
    try:
        assert deployment.post("intake", *signed(deployment, doc))[0] == 202
        settled(fake)
        wait_for(lambda: "granted" in statuses(webhook, grant_id), what="the short IAM grant")
    finally:
        fake.lose = None
    [lost] = [t for t in fake.lost if grant_id.encode() in t.body]
    tombstones = {key for key in fake.objects if key[0] == TOMBSTONE_BUCKET}
    sweep = deployment.functions["sweep"].url
    wait_for(lambda: datetime.now(UTC).timestamp() > lost.schedule.timestamp() + 1, 15, "expiry")
    token = {"Authorization": "Bearer " + fake.oidc_token(sweep, deployment.invoker)}
    status, answer = http_post(sweep, b"", token)
    assert status == 200 and grant_id in answer["revoked"], answer
    created = [
        c for c in fake.calls
        if c.caller == deployment.emails["sweep"] and c.permission == "storage.objects.create"
    ]  # fmt: skip
    assert created and all(c.allowed for c in created)
    assert len({key for key in fake.objects if key[0] == TOMBSTONE_BUCKET} - tombstones) == 1


# -- hostile callers ----------------------------------------------------------------------------


def test_intake_refuses_unsigned_forged_and_replayed_requests(
    deployment: Deployment, fake: FakeGcp
) -> None:
    tasks_before = set(fake.tasks) | {t.name for t in fake.delivered}
    doc = pg_grant(f"r-{secrets.token_hex(4)}")
    raw = json.dumps(doc).encode()
    status, answer = deployment.post("intake", raw, {"Content-Type": "application/json"})
    assert status == 401 and answer["field"].startswith("header")
    body, headers = signed(deployment, doc)
    tampered = body.replace(b'"read"', b'"READ"')
    assert deployment.post("intake", tampered, headers)[0] == 401
    bad = {**doc, "resources": ["pg_catalog"]}
    status, answer = deployment.post("intake", *signed(deployment, bad))
    assert status == 403 and answer["field"].startswith("resources")
    huge = json.dumps({**doc, "justification": "x" * 200_000}).encode()
    status, answer = deployment.post("intake", huge, {"Content-Type": "application/json"})
    assert status == 413 and answer["field"] == "body"
    old = int(datetime.now(UTC).timestamp()) - 3600
    assert deployment.post("intake", *signed(deployment, doc, timestamp=old))[0] == 401
    settled(fake)
    assert (set(fake.tasks) | {t.name for t in fake.delivered}) == tasks_before
    # Accepted once; the same signed request again is a replay, whichever instance gets it.
    assert deployment.post("intake", body, headers)[0] == 202
    assert deployment.post("intake", body, headers)[0] == 409


@pytest.mark.parametrize(
    "case",
    ["none", "unsigned", "foreign-key", "audience", "email", "expired", "issuer", "unverified"],
)
def test_worker_and_sweep_refuse_a_caller_without_the_invokers_oidc_token(
    deployment: Deployment, fake: FakeGcp, webhook: Webhook, case: str
) -> None:
    request_id = f"r-{secrets.token_hex(4)}"
    body, headers = signed(deployment, pg_grant(request_id, "10m"))
    from jitc.messages import envelope_message
    from jitc.signing import Envelope

    message = envelope_message(Envelope.from_headers(headers, body)).encode()
    for function in ("worker", "sweep"):
        url = deployment.functions[function].url
        now = int(datetime.now(UTC).timestamp())
        claims = {
            "iss": "https://accounts.google.com", "aud": url, "email": deployment.invoker,
            "email_verified": True, "sub": "1", "iat": now, "exp": now + 600,
        }  # fmt: skip
        token: str | None
        if case == "none":
            token = None
        elif case == "unsigned":
            token = fake.oidc_token(url, deployment.invoker).rsplit(".", 1)[0] + "."
        elif case == "foreign-key":
            token = sign_jwt(_rsa_key(), fake.oidc_kid, claims)
        elif case == "audience":
            token = fake.oidc_token(deployment.functions["intake"].url, deployment.invoker)
        elif case == "email":
            token = fake.oidc_token(url, deployment.emails["intake"])
        elif case == "expired":
            token = fake.oidc_token(url, deployment.invoker, iat=now - 7200, exp=now - 3600)
        elif case == "issuer":
            token = fake.oidc_token(url, deployment.invoker, iss="https://evil.example")
        else:
            token = fake.oidc_token(url, deployment.invoker, email_verified=False)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        status, answer = http_post(url, message, headers)
        assert status == 401, (function, answer)
        assert answer["field"] == "authorization"
    # Nothing ran: the engine reported nothing about this grant.
    assert statuses(webhook, derive_grant_id("orders-db", request_id)) == []


def test_a_hop_for_a_made_up_grant_is_refused_and_schedules_nothing(
    deployment: Deployment, fake: FakeGcp
) -> None:
    worker = deployment.functions["worker"].url
    token = {"Authorization": "Bearer " + fake.oidc_token(worker, deployment.invoker)}
    made_up = ("../../x", "g" + "a" * 24)
    before = set(fake.tasks)
    for doc in (
        {"kind": "hop", "grant_id": made_up[0], "integration": "orders-db", "expires_at": "2030-01-01T00:00:00+00:00"},
        {"kind": "hop", "grant_id": made_up[1], "integration": "nope", "expires_at": "2030-01-01T00:00:00+00:00"},
        {"kind": "hop", "grant_id": made_up[1], "integration": "orders-db", "expires_at": "2030-01-01T00:00:00"},
    ):  # fmt: skip
        status, answer = http_post(worker, json.dumps(doc).encode(), token)
        assert status == 200 and answer["error"] == "refused", answer
    # Nothing new for these grants. (Tasks of earlier tests still running meanwhile may queue
    # their own next steps: a grant's expiry, a hop's next hop.)
    new = [fake.tasks.get(name) for name in set(fake.tasks) - before]
    assert [t.name for t in new if t is not None and any(g.encode() in t.body for g in made_up)] == []


def test_no_secret_reaches_a_log_an_event_or_an_answer(
    deployment: Deployment, fake: FakeGcp, webhook: Webhook
) -> None:
    """Runs after the flows above: every line the three functions logged and every event the
    control plane received, searched for the secrets Secret Manager handed out."""
    canaries = [value.decode() for name, value in fake.secrets.items() if name.endswith("/1")]
    canaries += [json.loads(c)["password"] for c in canaries if c.startswith("{")]
    assert canaries and webhook.events
    texts = [deployment.functions[f].log.read_text() for f in ("intake", "worker", "sweep")]
    texts += [json.dumps(event) for event in webhook.events]
    for text in texts:
        for canary in canaries:
            assert canary not in text


# -- least privilege: method *and* resource --------------------------------------------------------


def test_every_call_was_allowed_valid_and_every_binding_was_needed(
    deployment: Deployment, fake: FakeGcp
) -> None:
    """Runs after the flows above (same module): what each function called, against what the
    Terraform binds to its account."""
    assert fake.violations == []
    calls = [c for c in fake.calls if c.caller in deployment.emails.values()]
    assert calls, "no API calls recorded"
    by_email = {email: name for name, email in deployment.emails.items()}
    denied = [(by_email[c.caller], c.permission, c.resource) for c in calls if not c.allowed]
    assert denied == []
    facts = tfgcp.facts_from_catalog(deployment.catalog, PROJECT, REGION, NAME, publish_events=True)
    roles = tfgcp.custom_roles(facts)
    from gcpfake import ROLE_PERMISSIONS

    used = {(by_email[c.caller], c.permission, c.resource) for c in calls}
    unused = []
    for binding in tfgcp.bindings(facts, deployment.emails):
        if binding.function == "sync":
            continue  # not deployed here: test_gcp_inventory_sync.py runs it under its bindings
        permissions = roles.get(binding.role) or ROLE_PERMISSIONS[binding.role]
        if not any((binding.function, p, binding.resource) in used for p in permissions):
            unused.append((binding.function, binding.role, binding.resource))
    assert unused == []
