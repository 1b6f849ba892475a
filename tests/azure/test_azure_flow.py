"""End to end on local Azure and the real PostgreSQL: signed `func.HttpRequest` -> intake ->
Azurite queue -> worker (a `func.QueueMessage` built from what Azurite delivers) -> grant ->
delayed expiry message -> delivered after its delay -> revoke; a long grant hops; duplicates,
reordering, refusals, failures and the poison path; the timer's sweep. Every Key Vault call is
made by the real SDK under the rights the Terraform module gives, over TLS to a certificate the
test made."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import azharness
import psycopg
import pytest
from azharness import PG_SCHEMA, Deployment, http_request, queue_message, timer_request

from jitc.models import derive_grant_id
from jitc.sealing import unseal
from jitc.signing import signing_keypair

# Per run: grant ids derive from the integration and the request id, and another run's live
# grants on the same server would otherwise be this run's to sweep, and its tombstones refuse ours.
PG = f"azpg{azharness.RUN}"
LABEL_KEY = "label-key-" + "k" * 24


@pytest.fixture
def deployment(cloud: azharness.Cloud, pg_admin: Any) -> Iterator[Deployment]:
    vault = cloud.vault
    vault.put("pg-admin", json.dumps({"password": "pg-admin-pw"}))
    vault.put("jitc-label", LABEL_KEY)
    sign_private, sign_public = signing_keypair()
    catalog = {
        "connector": {"label_key": vault.reference("jitc-label")},
        "integrations": {
            **azharness.pg_integration(PG, vault.reference("pg-admin", "password")),
            **azharness.pg_integration("azbroken", vault.reference("not-granted", "password")),
        },
    }
    yield azharness.deploy(
        cloud,
        catalog,
        sign_public=sign_public,
        sign_private=sign_private,
        secret_names=["pg-admin", "jitc-label"],
        max_delay_seconds=3,
    )


def grant_body(request_id: str, deployment: Deployment, duration: str = "30m") -> dict[str, Any]:
    return {
        "request_id": request_id,
        "action": "grant",
        "integration": PG,
        "permission": "read",
        "resources": [PG_SCHEMA],
        "identity": {"email": "ana@example.com", "public_key": deployment.box_public},
        "duration": duration,
    }


def post(deployment: Deployment, body: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    from jitc.azure import intake

    response = intake.handle(http_request(deployment, body, **kwargs))
    assert response.mimetype == "application/json"
    return response.status_code, json.loads(response.get_body())


def run_worker(deployment: Deployment, wait: float = 0.0) -> list[Any]:
    """Deliver every visible message once, as the host does: complete on return, make it
    visible again on an exception. Returns the outcomes (None for hops and refusals)."""
    from jitc.azure import worker

    results = []
    for message in deployment.receive(wait):
        try:
            results.append(worker.handle(queue_message(message)))
        except Exception:  # the host fails the invocation on any exception
            deployment.abandon(message)
            results.append("retry")
            continue
        deployment.complete(message)
    return results


def login(credentials: dict[str, str]) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=credentials["host"],
        port=int(credentials["port"]),
        dbname=credentials["dbname"],
        user=credentials["username"],
        password=credentials["password"],
        connect_timeout=3,
    )


def test_signed_request_is_granted_then_revoked_by_its_delayed_expiry(
    deployment: Deployment,
) -> None:
    status, body = post(deployment, grant_body("az-e2e-1", deployment, duration="3s"))
    assert status == 202 and body["status"] == "accepted"
    grant_id = derive_grant_id(PG, "az-e2e-1")
    [outcome] = run_worker(deployment)
    assert outcome.status == "granted" and outcome.grant_id == grant_id
    credentials = unseal(outcome.sealed_credentials, deployment.box_private)
    with login(credentials) as conn:
        conn.execute(f"SELECT count(*) FROM {PG_SCHEMA}.items").fetchone()
    # The expiry message is on the queue, invisible until the grant's end.
    assert deployment.receive() == []
    started = time.monotonic()
    results = run_worker(deployment, wait=10)
    assert time.monotonic() - started >= 1.0  # it waited for its delay
    [revoked] = [r for r in results if r is not None]
    assert revoked.status == "revoked" and revoked.request_id == f"expire-{grant_id}"
    with pytest.raises(psycopg.OperationalError):
        login(credentials)


def test_a_grant_longer_than_the_delay_cap_hops_until_its_time(deployment: Deployment) -> None:
    # The cap is 3 s here (JITC_EXPIRY_MAX_DELAY_SECONDS), the grant 8 s: at least one hop.
    status, _ = post(deployment, grant_body("az-hop", deployment, duration="8s"))
    assert status == 202
    [granted] = run_worker(deployment)
    assert granted.status == "granted"
    hops = 0
    deadline = time.monotonic() + 20
    revoked = None
    while revoked is None and time.monotonic() < deadline:
        for result in run_worker(deployment, wait=5):
            if result is None:
                hops += 1
            elif result != "retry":
                revoked = result
    assert hops >= 1
    assert revoked is not None and revoked.status == "revoked"
    assert revoked.expires_at is not None and azharness.now() >= revoked.expires_at


def test_duplicates_and_reordering_stay_idempotent(deployment: Deployment) -> None:
    body = grant_body("az-dup", deployment)
    assert post(deployment, body)[0] == 202
    # The same signed request again, as a second intake instance would accept it (each
    # instance's replay guard is its own): two messages of one grant.
    from jitc.azure import runtime

    runtime.intake.cache_clear()
    assert post(deployment, body)[0] == 202
    outcomes = [o for o in run_worker(deployment) if o is not None]
    assert [o.status for o in outcomes] == ["granted", "granted"]
    assert outcomes[1].reissued and outcomes[0].principal == outcomes[1].principal
    grant_id = derive_grant_id(PG, "az-dup")
    revoke = {"request_id": "az-dup-r", "action": "revoke", "integration": PG, "grant_id": grant_id}
    # One signature sent twice (signed at one second: two posts straddling a second boundary
    # would be two different signed requests, not a replay).
    signed_at = int(time.time())
    assert post(deployment, revoke, timestamp=signed_at)[0] == 202
    assert post(deployment, revoke, timestamp=signed_at)[0] == 409  # a replay, remembered
    [first] = [o for o in run_worker(deployment) if o is not None]
    assert first.status == "revoked"
    # Reordered: a grant delivered after its revoke is refused and completed.
    runtime.intake.cache_clear()
    assert post(deployment, body)[0] == 202
    [late] = [o for o in run_worker(deployment) if o is not None]
    assert late.status == "refused" and late.field == "request_id"
    assert deployment.receive() == []


def test_an_expiry_beyond_any_grant_revokes_at_once_instead_of_hopping_for_ever(
    deployment: Deployment,
) -> None:
    """Expiry messages are not signed: anyone who may send to the queue (the control plane's
    sender role) can write one whose `at` is a century away. No grant lasts that long, so the
    `at` is damaged: the revoke runs at once, rather than the message hopping every 7 days
    for ever while the grant it names stays."""
    status, _ = post(deployment, grant_body("az-far", deployment))
    assert status == 202
    [granted] = run_worker(deployment)
    assert granted.status == "granted"
    credentials = unseal(granted.sealed_credentials, deployment.box_private)
    far = {
        "kind": "expire",
        "grant_id": granted.grant_id,
        "integration": PG,
        "at": (azharness.now() + dt.timedelta(days=36500)).isoformat(),
    }
    deployment.cloud.queue_admin(deployment.queue).send_message(json.dumps(far))
    [outcome] = run_worker(deployment)
    assert outcome is not None and outcome.status == "revoked"
    with pytest.raises(psycopg.OperationalError):
        login(credentials)


def test_hostile_http_callers_change_nothing(deployment: Deployment) -> None:
    body = grant_body("az-hostile", deployment)
    assert post(deployment, body, sign=False)[0] == 401
    assert post(deployment, body, tamper=True)[0] == 401
    assert post(deployment, body, timestamp=int(time.time()) - 3600)[0] == 401
    assert post(deployment, body, key_id="other")[0] == 401
    status, refused = post(deployment, {**body, "permission": "write"})
    assert status == 403 and refused["field"] == "permission"
    status, refused = post(deployment, b"{not json")
    assert status == 400 and refused["field"] == "body"
    status, refused = post(deployment, body, method="GET")
    assert status == 405 and refused["field"] == "method"
    signed_at = int(time.time())
    assert post(deployment, body, timestamp=signed_at)[0] == 202
    assert post(deployment, body, timestamp=signed_at)[0] == 409  # replayed to the same instance
    assert len(deployment.receive()) == 1  # only the one accepted request was queued


def test_refused_messages_are_completed_and_audited(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jitc.azure")
    queue = deployment.cloud.queue_admin(deployment.queue)
    queue.send_message("not json")
    queue.send_message(json.dumps({"kind": "request", "envelope": {"body": "x"}}))
    results = run_worker(deployment)
    assert results == [None, None]
    assert deployment.receive() == []
    refusals = [r for r in caplog.records if '"event": "audit"' in r.getMessage()]
    assert len(refusals) == 2


def test_a_failing_operation_is_retried_then_poisoned_and_the_sweep_alarms(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    from jitc.azure import scheduled, worker

    caplog.set_level(logging.INFO, logger="jitc.azure")
    body = {**grant_body("az-fail", deployment), "integration": "azbroken"}
    assert post(deployment, body)[0] == 202
    for attempt in range(1, worker.MAX_DEQUEUE_COUNT + 1):
        [message] = deployment.receive(wait=2)
        assert message.dequeue_count == attempt
        with pytest.raises(worker.RetryLater):
            worker.handle(queue_message(message))
        if attempt < worker.MAX_DEQUEUE_COUNT:
            deployment.abandon(message)
        else:
            deployment.to_poison(message)
    # Key Vault refused the secret the module does not grant (ForbiddenByRbac): named, no value.
    assert any("Key Vault answered Forbidden" in r.getMessage() for r in caplog.records)
    assert any("moving to the poison queue" in r.getMessage() for r in caplog.records)
    summary = scheduled.run("sweep")
    assert summary["poisoned"] == 1
    assert any("poison queue not empty" in r.getMessage() for r in caplog.records)


def test_the_sweep_runs_from_a_real_timer_request(deployment: Deployment) -> None:
    import function_app_loader

    app = function_app_loader.load()
    functions = {f.get_function_name(): f for f in app.get_functions()}
    assert set(functions) == {"intake", "worker", "sweep", "sync"}
    sweep = functions["sweep"].get_user_function()
    assert sweep(timer_request()) is None


def test_a_body_too_large_for_the_queue_is_refused_at_once(deployment: Deployment) -> None:
    """The intake accepts 64 KiB; a Storage Queue message holds 64 KiB *after* base64, so a
    large justification fits the intake but not the queue: 413 naming the body, nothing
    queued, and the same request is not then taken for a replay."""
    body = {**grant_body("az-big", deployment), "justification": "x" * 2000}
    big = json.dumps(body).encode() + b" " * 55_000  # trailing whitespace: still valid JSON
    status, refused = post(deployment, big)
    assert status == 413 and refused["field"] == "body"
    assert deployment.receive() == []
    assert post(deployment, body)[0] == 202


def test_the_sweep_retries_a_poisoned_revoke_until_it_succeeds(
    deployment: Deployment, cloud: azharness.Cloud
) -> None:
    """A revoke that failed every delivery (its integration's secret was not readable) is sent
    back to the worker by each sweep, alarmed meanwhile; once the deployment is fixed (the
    secret added to the module's list), it succeeds. A poisoned grant is left for a person."""
    import tfazure

    from jitc.azure import scheduled

    grant_id = derive_grant_id("azbroken", "az-stuck")
    revoke = {
        "request_id": "az-stuck-r",
        "action": "revoke",
        "integration": "azbroken",
        "grant_id": grant_id,
    }
    grant = {**grant_body("az-stuck-g", deployment), "integration": "azbroken"}
    assert post(deployment, revoke)[0] == 202 and post(deployment, grant)[0] == 202
    for message in deployment.receive(wait=2):
        deployment.to_poison(message)
    summary = scheduled.run("sweep")
    assert summary["poisoned"] == 2 and summary["redriven"] == 1
    assert run_worker(deployment, wait=2) == ["retry"]  # still broken: back it goes
    [message] = deployment.receive(wait=3)
    deployment.to_poison(message)
    cloud.vault.put("not-granted", json.dumps({"password": "x"}))
    variables = {
        **deployment.variables,
        "key_vault_secret_names": ["pg-admin", "jitc-label", "not-granted"],
    }
    rendered = tfazure.render(
        variables, storage_account_id=azharness.STORAGE_ID, principal=azharness.APP_OID,
        client_id=azharness.APP_CLIENT_ID,
    )  # fmt: skip
    cloud.authz.assignments[:] = rendered.assignments
    assert scheduled.run("sweep")["redriven"] == 1
    [done] = run_worker(deployment, wait=2)
    assert done.status == "revoked" and done.grant_id == grant_id
    left = list(deployment.cloud.queue_admin(deployment.poison).peek_messages(max_messages=32))
    assert len(left) == 1 and '"action": "grant"' in json.loads(left[0].content)["envelope"]["body"]


def test_a_poisoned_message_that_is_not_base64_does_not_stop_the_redrive(
    deployment: Deployment, cloud: azharness.Cloud
) -> None:
    """Anyone who may send to the queue can send a message that is not base64; the host cannot
    decode it for the trigger, and after its retries it sits in the poison queue as it came.
    The sweep must still count the poison queue and send the revokes there back to the worker,
    rather than fail on that one message every run (no heartbeat, no redrive, for ever)."""
    from azure.storage.queue import QueueServiceClient

    from jitc.azure import scheduled

    raw = QueueServiceClient.from_connection_string(
        cloud.azurite.connection_string(), connection_verify=str(cloud.tls.cert)
    ).get_queue_client(deployment.poison)
    raw.send_message("%% not base64 %%")
    revoke = {
        "request_id": "az-b64-r",
        "action": "revoke",
        "integration": PG,
        "grant_id": derive_grant_id(PG, "az-b64"),
    }
    assert post(deployment, revoke)[0] == 202
    for message in deployment.receive(wait=2):
        deployment.to_poison(message)
    summary = scheduled.run("sweep")
    assert summary["poisoned"] == 2 and summary["redriven"] == 1
    [redriven] = run_worker(deployment, wait=2)
    assert redriven.status == "revoked"


def test_least_privilege_storage_and_key_vault_calls_match_the_module(
    deployment: Deployment, cloud: azharness.Cloud
) -> None:
    """Every queue and Key Vault call of a grant, its expiry and a sweep, judged under the
    rights rendered from the HCL and recorded by action and scope: all allowed, only on the two
    queues and the catalog's secrets; and without the queue right the intake is refused."""
    from jitc.azure import scheduled

    assert post(deployment, grant_body("az-lp", deployment, duration="2s"))[0] == 202
    run_worker(deployment)
    run_worker(deployment, wait=6)
    scheduled.run("sweep")
    # The fixture's `azbroken` integration names a secret the module was not told about: the
    # sweep's read of it is the one call refused, as it must be.
    calls = [c for c in cloud.authz.calls if not c.scope.endswith("/secrets/not-granted")]
    assert len(calls) < len(cloud.authz.calls)
    assert calls and all(c.allowed for c in calls), [c for c in calls if not c.allowed]
    queues = f"{azharness.STORAGE_ID}/queueServices/default/queues/".lower()
    storage = {c.scope.lower() for c in calls if c.service == "storage"}
    assert storage == {queues + deployment.queue, queues + deployment.poison}
    secrets = {c.scope for c in calls if c.service == "keyvault"}
    assert secrets == {
        f"{azharness.VAULT_ID}/secrets/pg-admin",
        f"{azharness.VAULT_ID}/secrets/jitc-label",
    }
    assert {c.principal for c in calls} == {azharness.APP_OID}
    # Without the queue role (the module's queue assignment removed), nothing is accepted.
    cloud.authz.assignments[:] = [a for a in cloud.authz.assignments if "Queue" not in a.role]
    status, body = post(deployment, grant_body("az-lp-2", deployment))
    assert status == 503 and body["field"] == "queue"
    assert not cloud.authz.calls[-1].allowed


def test_outcomes_reach_the_control_planes_webhook_signed_by_the_connector(
    cloud: azharness.Cloud, pg_admin: Any
) -> None:
    """The catalog names a webhook and the connector's signing key (a Key Vault reference, read
    at each delivery with the app's identity): the grant's outcome arrives signed, credentials
    sealed; a webhook that fails makes the invocation fail, so the message is retried."""
    import http.server
    import threading

    from jitc.signing import Envelope, verify

    received: list[tuple[dict[str, str], bytes]] = []
    status = [204]

    class Hook(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), body))
            self.send_response(status[0])
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        vault = cloud.vault
        connector_private, connector_public = signing_keypair()
        vault.put("hook-signing", connector_private)
        vault.put("hook-pg", json.dumps({"password": "x"}))
        vault.put("hook-label", LABEL_KEY)
        sign_private, sign_public = signing_keypair()
        catalog = {
            "connector": {
                "label_key": vault.reference("hook-label"),
                "signing_key": vault.reference("hook-signing"),
                "webhook_url": f"http://127.0.0.1:{server.server_address[1]}/events",
            },
            "integrations": azharness.pg_integration(PG, vault.reference("hook-pg", "password")),
        }
        deployment = azharness.deploy(
            cloud, catalog, sign_public=sign_public, sign_private=sign_private,
            secret_names=["hook-signing", "hook-pg", "hook-label"],
        )  # fmt: skip
        status[0] = 500  # the control plane is down: the invocation fails and is retried
        assert post(deployment, grant_body("az-hook", deployment))[0] == 202
        assert run_worker(deployment) == ["retry"]
        status[0] = 204
        [outcome] = run_worker(deployment, wait=5)
        assert outcome.status == "granted"
        headers, body = received[-1]
        envelope = Envelope.from_headers(headers, body)
        verify(envelope, {"connector": connector_public}, time.time(), 300, 300)
        doc = json.loads(body)
        assert doc["type"] == "outcome" and doc["outcome"]["status"] == "granted"
        assert doc["outcome"]["sealed_credentials"] and "credentials" not in doc["outcome"]
    finally:
        server.shutdown()
        server.server_close()
