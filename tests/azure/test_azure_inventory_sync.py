"""The inventory sync timer on local Azure and the real PostgreSQL: it sends the inventory to a
real control plane over HTTP (signed with the connector's key from Key Vault), keeps the
acknowledged version in a blob on Azurite (through a proxy judging every call under the rights
rendered from the module), logs the heartbeat the silence alert counts only when complete, and
cannot lose another sync's update of the state."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azharness
import pytest
from azblob import AzuriteBlob, BlobProxy, admin_container
from azharness import Deployment, timer_request
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from inventory_cp import ControlPlane, serving

from jitc.azure.sync_state import BLOB
from jitc.signing import signing_keypair

PG = f"azsync{azharness.RUN}"  # per run, as in test_azure_flow
DEAD = "azsyncdead"
CONTAINER = "jitc-inventory-state"  # the module's azurerm_storage_container.sync
ROW = f"row-data-{azharness.RUN}-never-sent"
SIGNING: dict[str, str] = {}  # the connector's private key of the current deployment


@pytest.fixture
def container(blobs: tuple[AzuriteBlob, BlobProxy], cloud: azharness.Cloud) -> Any:
    made = admin_container(blobs[0], cloud.tls, CONTAINER)
    for blob in made.list_blobs():
        made.delete_blob(blob.name)
    return made


def _closed_port() -> int:
    return azharness.azfakes.free_port()


def _deploy(
    cloud: azharness.Cloud, blobs: tuple[AzuriteBlob, BlobProxy], with_dead: bool
) -> Iterator[tuple[Deployment, ControlPlane]]:
    vault = cloud.vault
    connector_private, connector_public = signing_keypair()
    SIGNING["private"] = connector_private
    vault.put("sync-signing", connector_private)
    vault.put("sync-pg", json.dumps({"password": "sync-admin-password"}))
    vault.put("sync-label", "sync-label-key-" + "k" * 24)
    cp = ControlPlane(connector_public)
    with serving(cp) as url:
        integrations = azharness.pg_integration(PG, vault.reference("sync-pg", "password"))
        if with_dead:
            dead = json.loads(json.dumps(integrations[PG]))
            dead["connection"].update(port=_closed_port(), connect_timeout=2)
            integrations[DEAD] = dead
        catalog = {
            "connector": {
                "label_key": vault.reference("sync-label"),
                "signing_key": vault.reference("sync-signing"),
                "webhook_url": url,
            },
            "integrations": integrations,
        }
        sign_private, sign_public = signing_keypair()
        deployment = azharness.deploy(
            cloud, catalog, sign_public=sign_public, sign_private=sign_private,
            secret_names=["sync-signing", "sync-pg", "sync-label"], blob_service_uri=blobs[1].blob_service_uri,
        )  # fmt: skip
        yield deployment, cp


@pytest.fixture
def synced(
    cloud: azharness.Cloud, blobs: tuple[AzuriteBlob, BlobProxy], container: Any, pg_admin: Any
) -> Iterator[tuple[Deployment, ControlPlane]]:
    table = sql.Identifier(azharness.PG_SCHEMA, "items")
    pg_admin.execute(sql.SQL("INSERT INTO {} (name) VALUES (%s)").format(table), (ROW,))
    yield from _deploy(cloud, blobs, with_dead=True)


@pytest.fixture
def synced_ok(
    cloud: azharness.Cloud, blobs: tuple[AzuriteBlob, BlobProxy], container: Any, pg_admin: Any
) -> Iterator[tuple[Deployment, ControlPlane]]:
    yield from _deploy(cloud, blobs, with_dead=False)


def _timer(name: str) -> Any:
    """The app's timer function for a job, as the host registers it from function_app.py."""
    from function_app_loader import load

    functions = {f.get_function_name(): f for f in load().get_functions()}
    return functions[name].get_user_function()


def _stored(container: Any) -> dict[str, Any]:
    return dict(json.loads(container.download_blob(BLOB).readall())["integrations"])


def _heartbeats(caplog: pytest.LogCaptureFixture) -> int:
    return sum("inventory sync completed" in r.getMessage() for r in caplog.records)


def test_the_sync_timer_sends_then_only_changes_and_a_dead_target_fails_alone(
    synced: tuple[Deployment, ControlPlane], container: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from jitc.azure import scheduled

    _, cp = synced
    caplog.set_level(logging.INFO, logger="jitc.azure")
    assert _timer("sync")(timer_request()) is None  # the registered timer function runs it
    part = cp.current.get(PG)
    assert part is not None and DEAD in cp.failed
    stored = _stored(container)
    assert set(stored) == {PG} and stored[PG]["version"] == part
    assert _heartbeats(caplog) == 0  # one target down: no heartbeat, the alert will see it
    second = scheduled.run("sync")["integrations"][PG]
    assert second["acked"] and second["base_version"] == part and not second["full"]
    assert second["status"] == "complete"
    # Names only: the schema is there, not the row in its table, nor any secret.
    assert azharness.PG_SCHEMA in {r["name"] for r in cp.records(PG) if r["kind"] == "schema"}
    everything = b"\n".join(cp.bodies)
    for secret in (ROW, "sync-admin-password", SIGNING["private"]):
        assert secret.encode() not in everything


def test_a_complete_sync_logs_the_heartbeat_the_silence_alert_counts(
    synced_ok: tuple[Deployment, ControlPlane], caplog: pytest.LogCaptureFixture
) -> None:
    import tfazure

    from jitc.azure import scheduled

    alert = tfazure.load().resources[
        ("azurerm_monitor_scheduled_query_rules_alert_v2", "sync_silence")
    ]
    query = alert["criteria"][0]["query"]
    caplog.set_level(logging.INFO, logger="jitc.azure")
    assert scheduled.run("sync")["ok"]
    assert _heartbeats(caplog) == 1 and "'inventory sync completed'" in query


def test_blob_calls_are_only_on_the_sync_container_and_need_its_role(
    synced_ok: tuple[Deployment, ControlPlane],
    cloud: azharness.Cloud,
    caplog: pytest.LogCaptureFixture,
) -> None:

    from jitc.azure import scheduled

    cloud.authz.calls.clear()
    assert scheduled.run("sync")["integrations"][PG]["acked"]
    blob_calls = [c for c in cloud.authz.calls if "/blobServices/" in c.scope]
    scope = f"{azharness.STORAGE_ID}/blobServices/default/containers/{CONTAINER}/blobs/{BLOB}"
    assert blob_calls and {c.scope for c in blob_calls} == {scope}
    assert all(c.allowed and c.principal == azharness.APP_OID for c in blob_calls)
    assert {c.action.rsplit("/", 1)[1] for c in blob_calls} == {"read", "write"}
    # The control: without the module's assignment on the container, the state is refused:
    # the inventory still goes (the state is a cache), the refusal is reported on the part,
    # and no heartbeat is logged, so the silence alert sees it.
    cloud.authz.assignments[:] = [
        a for a in cloud.authz.assignments if not a.role.startswith("sync_state:")
    ]
    caplog.set_level(logging.INFO, logger="jitc.azure")
    caplog.clear()  # the run above logged its heartbeat
    part = scheduled.run("sync")["integrations"][PG]
    assert "AuthorizationPermissionMismatch" in str(part["error"])
    assert [c for c in cloud.authz.calls if "/blobServices/" in c.scope and not c.allowed]
    assert _heartbeats(caplog) == 0


def test_two_syncs_writing_the_state_at_once_lose_neither_update(
    synced_ok: tuple[Deployment, ControlPlane],
    blobs: tuple[AzuriteBlob, BlobProxy],
    container: Any,
) -> None:
    """Another sync writes the blob between this sync's read and its write: the ETag condition
    refuses the stale write (412 from Azurite), the adapter reads again, both entries stay."""
    from jitc.azure import scheduled
    from jitc.inventory import Acked, version_of_hashes

    other = Acked(version_of_hashes(["a" * 64]), ("a" * 64,), "b" * 32)

    def another_sync() -> None:
        body = {"v": 1, "integrations": {"other": {**other.__dict__, "pages": list(other.pages)}}}
        container.upload_blob(BLOB, json.dumps(body), overwrite=True)

    scheduled.run("sync")  # the blob exists: the next write is a conditional replace
    blobs[1].before_put = another_sync
    assert scheduled.run("sync")["integrations"][PG]["acked"]
    assert blobs[1].before_put is None  # the interleaving happened
    assert set(_stored(container)) == {PG, "other"}
    # And a first write (no blob yet) does not replace one made meanwhile.
    container.delete_blob(BLOB)
    blobs[1].before_put = another_sync
    assert scheduled.run("sync")["integrations"][PG]["status"] == "complete"
    assert set(_stored(container)) == {PG, "other"}


def test_a_tampered_state_blob_costs_a_full_sync_and_is_rewritten(
    synced_ok: tuple[Deployment, ControlPlane], container: Any
) -> None:
    from jitc.azure import scheduled

    first = scheduled.run("sync")["integrations"][PG]
    assert first["acked"]
    # Hashes that do not add up to the version, then not JSON at all: nothing is skipped.
    stored = _stored(container)
    stored[PG]["pages"] = ["0" * 64]
    container.upload_blob(BLOB, json.dumps({"v": 1, "integrations": stored}), overwrite=True)
    second = scheduled.run("sync")["integrations"][PG]
    assert second["full"] and second["sent"] == second["pages"] and second["acked"]
    container.upload_blob(BLOB, b"\xff not json", overwrite=True)
    third = scheduled.run("sync")["integrations"][PG]
    assert third["full"] and third["acked"]
    assert _stored(container)[PG]["version"] == third["version"]


def test_an_unreachable_control_plane_is_reported_with_no_heartbeat_and_no_state(
    cloud: azharness.Cloud,
    blobs: tuple[AzuriteBlob, BlobProxy],
    container: Any,
    pg_admin: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from jitc.azure import runtime, scheduled

    for deployment, _ in _deploy(cloud, blobs, with_dead=False):
        catalog = dict(deployment.catalog)
        url = f"http://127.0.0.1:{_closed_port()}/events"
        catalog["connector"] = {**catalog["connector"], "webhook_url": url}
        os.environ["JITC_CATALOG"] = json.dumps(catalog)
        os.environ.pop("JITC_CATALOG_SHA256", None)
        runtime.reset()
        caplog.set_level(logging.INFO, logger="jitc.azure")
        report = scheduled.run("sync")
        # Reported, not acknowledged: the silence alert sees no heartbeat, nothing is held.
        assert report["integrations"][PG]["status"] == "not_sent" and not report["ok"]
        assert _heartbeats(caplog) == 0 and not list(container.list_blobs())


def test_without_a_webhook_the_timer_only_says_so(
    cloud: azharness.Cloud, blobs: tuple[AzuriteBlob, BlobProxy], caplog: pytest.LogCaptureFixture
) -> None:
    from jitc.azure import scheduled

    vault = cloud.vault
    vault.put("sync-nohook-pg", json.dumps({"password": "x"}))
    vault.put("sync-nohook-label", "label-key-" + "n" * 24)
    sign_private, sign_public = signing_keypair()
    catalog = {
        "connector": {"label_key": vault.reference("sync-nohook-label")},
        "integrations": azharness.pg_integration(PG, vault.reference("sync-nohook-pg", "password")),
    }
    azharness.deploy(
        cloud, catalog, sign_public=sign_public, sign_private=sign_private,
        secret_names=["sync-nohook-pg", "sync-nohook-label"],
        blob_service_uri=blobs[1].blob_service_uri,
    )  # fmt: skip
    caplog.set_level(logging.INFO, logger="jitc.azure")
    cloud.authz.calls.clear()
    assert scheduled.run("sync") == {"configured": False}
    assert _heartbeats(caplog) == 0 and not cloud.authz.calls
