"""The Azure RBAC template beyond the contract suite: PIM mode (Azure ends the assignment),
privileged roles, hostile neighbours who edit descriptions, and least privilege: every call the
app's identity makes, under the rights rendered from the Terraform module, compared with those
rights by action and scope."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import azharness
import azspec
import pytest
import tfazure
from azblob import AzuriteBlob, BlobProxy, admin_container
from azfakes import Call

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.errors import CatalogError
from jitc.local import MemorySink, NullScheduler
from jitc.messages import parse_request
from jitc.models import Outcome
from jitc.secrets import EnvSecretStore, SecretStores
from jitc.templates import azure_rbac

SUB = azharness.SUBSCRIPTION
SCOPE = f"subscriptions/{SUB}/resourceGroups/rbac-{azharness.RUN}"
OTHER_SCOPE = f"subscriptions/{SUB}/resourceGroups/other-{azharness.RUN}"
READER = azspec.BUILTIN_ROLES["Reader"][0]
OWNER = azspec.BUILTIN_ROLES["Owner"][0]
ESCALATOR = str(uuid.uuid4())  # a custom role that can write role assignments
LABEL_KEY = "rbac-label-key-" + "r" * 20
# The module's azurerm_storage_container.rbac_ledger.
LEDGER = tfazure.load().resources[("azurerm_storage_container", "rbac_ledger")]["name"]
LEDGER_SCOPE = f"{azharness.STORAGE_ID}/blobServices/default/containers/{LEDGER}"


class Env:
    def __init__(
        self,
        cloud: azharness.Cloud,
        mode: str,
        roles: list[str],
        scopes: list[str] | None = None,
        resources: list[str] | None = None,
    ) -> None:
        self.cloud = cloud
        self.arm = cloud.arm
        self.integration = f"rbac-{mode}"
        self.principals = [str(uuid.uuid4()) for _ in range(3)]
        scopes = scopes or [SCOPE]
        permissions: dict[str, Any] = {
            "reader": {"role_definition_id": READER, "resources": resources or [SCOPE]},
            "escalator": {"role_definition_id": ESCALATOR, "resources": [SCOPE]},
        }
        doc = {
            "connector": {"label_key": "mem:label"},
            "integrations": {
                self.integration: {
                    "kind": "azure_rbac",
                    "connection": {
                        "subscription_id": SUB,
                        "scopes": scopes,
                        "mode": mode,
                        "allowed_principal_ids": self.principals,
                        "arm_endpoint": self.arm.endpoint,
                    },
                    "max_duration": "8h",
                    "permissions": permissions,
                }
            },
        }
        self.catalog = parse_catalog(doc)
        self.sink = MemorySink()
        self.engine = Engine(
            self.catalog,
            SecretStores({"mem": EnvSecretStore({"label": LABEL_KEY})}),
            NullScheduler(),
            self.sink,
        )
        rendered = tfazure.render(
            {
                "name": "rbac",
                "key_vault_id": azharness.VAULT_ID,
                "key_vault_secret_names": [],
                "rbac_scopes": [f"/{s}" for s in scopes],
                "rbac_role_ids": roles,
                "rbac_pim": mode == "pim",
                "control_plane_principal_id": None,
            },
            storage_account_id=azharness.STORAGE_ID,
            principal=azharness.APP_OID,
            client_id=azharness.APP_CLIENT_ID,
        )
        cloud.authz.assignments[:] = rendered.assignments
        cloud.authz.calls.clear()

    def request(self, action: str = "grant", principal: int = 0, **fields: Any) -> Any:
        doc: dict[str, Any] = {
            "request_id": fields.pop("request_id", f"r-{uuid.uuid4().hex[:8]}"),
            "action": action,
            "integration": self.integration,
        }
        if action == "grant":
            doc |= {
                "permission": "reader",
                "resources": [SCOPE],
                "identity": {"email": "ana@example.com", "object_id": self.principals[principal]},
                "duration": "1h",
            }
        return parse_request(__import__("json").dumps(doc | fields))

    def run(self, action: str = "grant", **fields: Any) -> Outcome:
        return self.engine.execute(self.request(action, **fields))


@pytest.fixture
def ledger(blobs: tuple[AzuriteBlob, BlobProxy], cloud: azharness.Cloud) -> Iterator[Any]:
    """The module's ledger container (the test's own view, account key), emptied after."""
    from azure.storage.blob import BlobLeaseClient

    made = admin_container(blobs[0], cloud.tls, LEDGER)
    yield made
    for blob in made.list_blobs():
        with contextlib.suppress(Exception):  # most blobs have no lease to break
            BlobLeaseClient(made.get_blob_client(blob.name)).break_lease(lease_break_period=0)
        made.delete_blob(blob.name)


@pytest.fixture
def identity_env(
    cloud: azharness.Cloud, blobs: tuple[AzuriteBlob, BlobProxy], ledger: Any
) -> Iterator[None]:
    import azfakes
    from azure.identity import ManagedIdentityCredential

    with azfakes.environment(cloud.identity.env):
        azure_rbac.use(
            ManagedIdentityCredential(client_id=azharness.APP_CLIENT_ID),
            {"connection_verify": str(cloud.tls.cert)},
            f"{blobs[1].blob_service_uri}{LEDGER}",
        )
        yield
    azure_rbac.use(None, {})
    with cloud.arm.lock:
        cloud.arm.assignments.clear()
        cloud.arm.requests.clear()
        cloud.arm.clock_offset = dt.timedelta(0)
        cloud.arm.meanwhile = None
        cloud.arm.directory.clear()


@pytest.fixture
def plain(cloud: azharness.Cloud, identity_env: None) -> Env:
    cloud.arm.add_role(ESCALATOR, "Escalator", ["Microsoft.Authorization/*"])
    return Env(cloud, "assignment", [READER, ESCALATOR])


@pytest.fixture
def pim(cloud: azharness.Cloud, identity_env: None) -> Env:
    return Env(cloud, "pim", [READER])


def test_the_outcome_names_the_mode_and_the_propagation_delay(plain: Env) -> None:
    outcome = plain.run(request_id="note")
    assert outcome.status == "granted"
    assert "role assignment (the connector ends it" in str(outcome.message)
    assert "10 minutes" in str(outcome.message)


def test_pim_mode_lets_azure_end_the_assignment_on_time(pim: Env) -> None:
    outcome = pim.run(request_id="pim-1")
    assert outcome.status == "granted", outcome
    assert "PIM schedule (Azure ends it at expiry)" in str(outcome.message)
    [request] = pim.arm.requests.values()
    props = request["properties"]
    assert props["requestType"] == "AdminAssign"
    assert props["scheduleInfo"]["expiration"]["type"] == "AfterDateTime"
    end = dt.datetime.fromisoformat(
        props["scheduleInfo"]["expiration"]["endDateTime"].replace("Z", "+00:00")
    )
    assert abs((end - outcome.expires_at).total_seconds()) < 1  # type: ignore[operator]
    assert pim.arm.holds(pim.principals[0], READER, f"/{SCOPE}")
    assert [g.grant_id for g in pim.engine.live_grants()[pim.integration]] == [outcome.grant_id]  # type: ignore[union-attr]
    redelivered = pim.run(request_id="pim-1")
    assert redelivered.status == "granted" and redelivered.reissued
    # The connector is down past the expiry: Azure itself ends the access.
    pim.arm.clock_offset = dt.timedelta(hours=2)
    assert not pim.arm.holds(pim.principals[0], READER, f"/{SCOPE}")
    late = pim.run("revoke", request_id="pim-1")
    assert late.status == "revoked" and late.verified


def test_pim_mode_revoke_removes_the_assignment(pim: Env) -> None:
    assert pim.run(request_id="pim-2").status == "granted"
    revoke = pim.run("revoke", request_id="pim-2")
    assert revoke.status == "revoked" and revoke.verified and revoke.residual == []
    assert not pim.arm.holds(pim.principals[0], READER, f"/{SCOPE}")
    kinds = sorted(r["properties"]["requestType"] for r in pim.arm.requests.values())
    assert kinds == ["AdminAssign", "AdminRemove"]
    again = pim.run("revoke", request_id="pim-2")
    assert again.status == "revoked" and "nothing to revoke" in str(again.message)
    # PIM keeps the AdminRemove request: a grant redelivered after its revoke is refused.
    late = pim.run(request_id="pim-2")
    assert late.status == "refused" and late.field == "request_id"
    assert not pim.arm.holds(pim.principals[0], READER, f"/{SCOPE}")


def test_privileged_roles_need_the_catalog_mark() -> None:
    base = {
        "subscription_id": SUB, "scopes": [SCOPE], "allowed_principal_ids": ["*"],
    }  # fmt: skip
    doc = {
        "connector": {"label_key": "mem:label"},
        "integrations": {
            "rbac": {
                "kind": "azure_rbac", "connection": base, "max_duration": "1h",
                "permissions": {"owner": {"role_definition_id": OWNER, "resources": [SCOPE]}},
            }
        },
    }  # fmt: skip
    with pytest.raises(CatalogError, match="privileged"):
        parse_catalog(doc)
    doc["integrations"]["rbac"]["permissions"]["owner"]["privileged"] = True
    parse_catalog(doc)


def test_a_custom_role_that_writes_assignments_is_refused_at_grant(plain: Env) -> None:
    outcome = plain.run(request_id="esc", permission="escalator")
    assert outcome.status == "refused" and outcome.field == "permission"
    assert "can hand out access" in str(outcome.message)
    assert not plain.arm.assignments


def test_a_copied_genuine_label_never_steers_a_revoke(plain: Env) -> None:
    """A neighbour who may edit descriptions copies our label onto their own assignment of the
    same role (another principal): the MAC binds the label to our assignment's id, principal and
    role, so revoke and sweep leave theirs alone."""
    granted = plain.run(request_id="copy")
    assert granted.status == "granted"
    [ours] = plain.arm.assignments.values()
    theirs = plain.arm.assign(
        f"/{SCOPE}", str(uuid.uuid4()), READER, plain.principals[2], ours.description
    )
    # And one under the very name the connector would use for a grant it never made.
    squat_name = azure_rbac.assignment_name(
        str(plain.request(request_id="never").target_grant_id), SCOPE
    )
    squat = plain.arm.assign(f"/{SCOPE}", squat_name, READER, plain.principals[1], ours.description)
    revoke = plain.run("revoke", request_id="copy")
    assert revoke.status == "revoked" and revoke.verified
    never = plain.run("revoke", request_id="never")
    assert "nothing to revoke" in str(never.message)
    report = plain.engine.sweep(now=azharness.now() + dt.timedelta(hours=9))
    assert report.ok and not report.revoked
    assert {a.name for a in plain.arm.assignments.values()} == {theirs.name, squat.name}


def test_an_existing_assignment_of_the_same_access_is_left_alone(plain: Env) -> None:
    """The principal already holds the role on the scope through an assignment the connector
    did not make: ARM answers 409 to a second one; the grant is refused, nothing changes, and no
    later revoke or sweep touches the neighbour's assignment."""
    theirs = plain.arm.assign(f"/{SCOPE}", str(uuid.uuid4()), READER, plain.principals[0])
    outcome = plain.run(request_id="exists")
    assert outcome.status == "refused" and "not created by this connector" in str(outcome.message)
    assert plain.run("revoke", request_id="exists").status == "revoked"
    assert [a.name for a in plain.arm.assignments.values()] == [theirs.name]
    assert theirs.description is None


def test_shared_assignment_ends_only_with_its_last_grant(plain: Env) -> None:
    one = plain.run(request_id="share-1")
    two = plain.run(request_id="share-2", duration="2h")
    assert one.status == two.status == "granted"
    assert len(plain.arm.assignments) == 1  # ARM allows one per principal, role and scope
    assert plain.run("revoke", request_id="share-1").status == "revoked"
    assert plain.arm.holds(plain.principals[0], READER, f"/{SCOPE}")
    assert plain.run("revoke", request_id="share-2").status == "revoked"
    assert not plain.arm.assignments


def test_a_scope_outside_the_connection_is_refused(plain: Env) -> None:
    outcome = plain.run(request_id="out", resources=[OTHER_SCOPE])
    assert outcome.status == "refused" and outcome.field in ("resources[0]", "resources")
    assert not plain.arm.assignments


def test_the_connectors_own_resource_group_is_never_granted_on(
    cloud: azharness.Cloud, identity_env: None
) -> None:
    """The app's resource group holds its storage account (queues, ledger, package): a role
    there, even one ARM does not count as privileged, lets the grantee turn shared keys on or
    delete tombstones. With the module's JITC_AZURE_OWN_SCOPE, a grant on that group, on a
    resource in it or on a scope holding it is refused before any ARM write; others go on."""
    own = f"subscriptions/{SUB}/resourceGroups/{azharness.RESOURCE_GROUP}"
    account = azharness.STORAGE_ID.lstrip("/")
    subscription = f"subscriptions/{SUB}"
    shouting = f"{subscription}/resourceGroups/{azharness.RESOURCE_GROUP.upper()}"  # ARM: same
    env = Env(
        cloud, "assignment", [READER], scopes=[subscription],
        resources=[account, shouting, subscription, SCOPE],
    )  # fmt: skip
    azure_rbac.use(azure_rbac._credential, azure_rbac._transport, azure_rbac._ledger_url, f"/{own}")
    for index, resource in enumerate([account, shouting, subscription]):
        outcome = env.run(request_id=f"own-{index}", resources=[resource])
        assert outcome.status == "refused", outcome
        assert outcome.field == "resources[0]" and "own resource group" in str(outcome.message)
    assert not env.arm.assignments
    assert env.run(request_id="elsewhere").status == "granted"
    assert env.arm.holds(env.principals[0], READER, f"/{SCOPE}")


def _used(calls: list[Call]) -> set[tuple[str, str]]:
    return {(c.action, c.scope.lower()) for c in calls if c.service != "storage"}


def test_least_privilege_every_call_is_allowed_and_every_right_is_used(
    cloud: azharness.Cloud, identity_env: None
) -> None:
    """Both modes run every operation under the module's rights; the fakes record each call's
    action and scope. Every call was allowed, the custom role holds no action unused, and the
    ledger's blob calls stay in its container, under the module's assignment there."""
    used: set[tuple[str, str]] = set()
    granted_actions: set[str] = set()
    blob_calls: list[Call] = []
    for mode in ("assignment", "pim"):
        env = Env(cloud, mode, [READER])
        granted_actions |= set(tfazure.rbac_actions(tfazure.load(), pim=mode == "pim"))
        assert env.run(request_id=f"lp-{mode}").status == "granted"
        assert env.run("revoke", request_id=f"lp-{mode}").status == "revoked"
        env.engine.sweep()
        env.engine.live_grants()
        # Past the tombstone's time: the sweep forgets it.
        report = env.engine.sweep(now=azharness.now() + dt.timedelta(days=2))
        assert report.forgotten == (
            [] if mode == "pim" else [env.request(request_id=f"lp-{mode}").target_grant_id]
        )
        denied = [c for c in cloud.authz.calls if not c.allowed]
        assert denied == [], denied
        used |= _used(cloud.authz.calls)
        blob_calls += [c for c in cloud.authz.calls if c.service == "storage"]
    assert {action for action, _ in used} == granted_actions
    assert {scope for _, scope in used} == {f"/{SCOPE}".lower()}
    # Tombstones and locks: read, write (create, lease) and delete, in the ledger only.
    assert {c.action.rsplit("/", 1)[1] for c in blob_calls} == {"read", "write", "delete"}
    assert all(
        c.scope == LEDGER_SCOPE or c.scope.startswith(f"{LEDGER_SCOPE}/blobs/") for c in blob_calls
    ), {c.scope for c in blob_calls}
    [ledger_right] = [a for a in cloud.authz.assignments if a.role.startswith("rbac_ledger:")]
    assert ledger_right.scope == LEDGER_SCOPE
    assert ledger_right.role == "rbac_ledger:Storage Blob Data Contributor"


def test_without_the_ledgers_right_assignment_mode_fails_and_makes_nothing(
    cloud: azharness.Cloud, identity_env: None
) -> None:
    """The control for the test above: the module's assignment on the ledger container is what
    lets the blob calls through; without it a grant fails (and is retried) before any write."""
    env = Env(cloud, "assignment", [READER])
    cloud.authz.assignments[:] = [
        a for a in cloud.authz.assignments if not a.role.startswith("rbac_ledger:")
    ]
    outcome = env.run(request_id="no-ledger")
    assert outcome.status == "failed", outcome
    assert not env.arm.assignments
    assert [c for c in cloud.authz.calls if c.service == "storage" and not c.allowed]


def test_the_condition_keeps_the_connector_to_the_catalogs_roles(
    cloud: azharness.Cloud, identity_env: None
) -> None:
    """A catalog role the module was not told about (rbac_role_ids) is refused by ARM: the
    connector's right to write assignments cannot hand out anything else."""
    env = Env(cloud, "assignment", [str(uuid.uuid4())])
    outcome = env.run(request_id="cond")
    assert outcome.status == "failed" and "AuthorizationFailed" in str(outcome.message)
    assert not env.arm.assignments


def test_concurrent_revokes_of_a_shared_assignment_both_take_effect(plain: Env) -> None:
    """Two grants of the same access share one assignment; both are revoked at the same time
    (the control plane revoking a person's access, two messages in one batch, or two
    instances). The second revoke starts while the first is about to write its label back, and
    is given time to finish first: ARM keeps no ETag on an assignment, so only the ledger's lock
    keeps it from reading the old label and writing back the first's grant."""
    assert plain.run(request_id="race-1").status == "granted"
    assert plain.run(request_id="race-2", duration="2h").status == "granted"
    other = Engine(
        plain.catalog,
        SecretStores({"mem": EnvSecretStore({"label": LABEL_KEY})}),
        NullScheduler(),
        MemorySink(),
    )
    seen: list[Outcome] = []
    second = threading.Thread(
        target=lambda: seen.append(other.execute(plain.request("revoke", request_id="race-2")))
    )

    def meanwhile(method: str, path: str) -> None:
        if method == "PUT" and "/roleAssignments/" in path and not second.is_alive() and not seen:
            second.start()
            second.join(timeout=3)  # done by then, unless something makes it wait

    plain.arm.meanwhile = meanwhile
    first = plain.run("revoke", request_id="race-1")
    second.join(timeout=60)
    plain.arm.meanwhile = None
    assert seen and seen[0].status == "revoked" and seen[0].verified, seen
    assert first.status == "revoked" and first.verified
    # Both grants were revoked and both outcomes say so: the access must be gone.
    assert not plain.arm.holds(plain.principals[0], READER, f"/{SCOPE}")
    assert not plain.arm.assignments


def test_a_grant_delivered_after_its_revoke_is_refused(plain: Env) -> None:
    """Storage Queues redeliver and reorder: the revoke runs first and finds nothing, then the
    grant arrives. The revoke's tombstone refuses it; the sweep forgets the tombstone once no
    delivery of the grant could still be valid."""
    early = plain.run("revoke", request_id="late")
    assert early.status == "revoked" and "nothing to revoke" in str(early.message)
    late = plain.run(request_id="late")
    assert late.status == "refused" and late.field == "request_id", late
    assert not plain.arm.assignments
    grant_id = plain.request(request_id="late").target_grant_id
    [tombstone] = [
        g for g in plain.engine.live_grants()[plain.integration] if g.state == "tombstone"
    ]  # type: ignore[union-attr]
    assert tombstone.grant_id == grant_id
    assert plain.engine.sweep().forgotten == []  # still needed
    report = plain.engine.sweep(now=azharness.now() + dt.timedelta(hours=9))
    assert report.forgotten == [grant_id]
    assert plain.engine.live_grants()[plain.integration] == []


def _stop_at_delete(plain: Env) -> None:
    """The revoke's process dies once its tombstone is written, before ARM deletes anything."""

    def meanwhile(method: str, path: str) -> None:
        if method == "DELETE" and "/roleAssignments/" in path:
            raise RuntimeError("the instance went away")

    plain.arm.meanwhile = meanwhile


def test_a_revoke_stopped_after_its_tombstone_is_finished_by_the_sweep(plain: Env) -> None:
    assert plain.run(request_id="stop-1").status == "granted"
    _stop_at_delete(plain)
    stopped = plain.run("revoke", request_id="stop-1")
    plain.arm.meanwhile = None
    assert stopped.status == "failed"
    assert plain.arm.holds(plain.principals[0], READER, f"/{SCOPE}")
    found = plain.engine.live_grants()[plain.integration]
    assert not isinstance(found, str)
    [live] = [g for g in found if g.state != "tombstone"]
    assert live.state == "revoking"  # not left until its expiry an hour from now
    report = plain.engine.sweep()
    assert report.revoked == [live.grant_id] and report.ok
    assert not plain.arm.assignments


def test_a_revoke_stopped_after_its_tombstone_is_finished_by_a_late_grant(plain: Env) -> None:
    """Or the grant's own redelivery comes first: it finds the tombstone, removes what the
    grant made, and is refused."""
    assert plain.run(request_id="stop-2").status == "granted"
    _stop_at_delete(plain)
    assert plain.run("revoke", request_id="stop-2").status == "failed"
    plain.arm.meanwhile = None
    again = plain.run(request_id="stop-2")
    assert again.status == "refused" and again.field == "request_id", again
    assert not plain.arm.assignments


def test_a_lock_held_by_a_stalled_holder_stops_the_write(
    plain: Env, ledger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another instance holds the assignment's lock (stalled, or died holding it: its lease
    runs out after 60 s). A grant waits, then fails and is retried; it never writes without
    the lock, and nobody breaks another's lease."""
    from jitc.labels import LabelKey
    from jitc.templates import azure_rbac_ledger

    monkeypatch.setattr(azure_rbac_ledger, "LOCK_WAIT_SECONDS", 1.0)
    principal = plain.principals[0]
    role = azure_rbac.role_definition_id(SUB, READER)
    name = azure_rbac_ledger.LOCKS + LabelKey.from_secret(LABEL_KEY).keyed_hash(
        "azure_rbac lock", "\0".join([SCOPE.lower(), principal, role.lower()])
    )
    blob = ledger.get_blob_client(name)
    blob.upload_blob(b"", overwrite=True)
    lease = blob.acquire_lease(lease_duration=15)
    outcome = plain.run(request_id="locked")
    assert outcome.status == "failed" and "locked by another operation" in str(outcome.message)
    assert not plain.arm.assignments
    lease.release()
    assert plain.run(request_id="locked").status == "granted"


def test_a_full_shared_assignment_fits_arms_description_limit(plain: Env) -> None:
    """Grants of one access share an assignment whose description lists them all (up to
    MAX_SHARED). Request ids may be 128 characters: a grant that would not fit is refused,
    never a write ARM rejects (a failure retried into the poison queue)."""
    outcomes = [
        plain.run(request_id=f"{i}" + "x" * 127, duration=f"{i + 1}m")
        for i in range(azure_rbac.MAX_SHARED)
    ]
    statuses = [(o.status, o.field) for o in outcomes]
    assert set(statuses) == {("granted", None), ("refused", "identity.object_id")}, statuses
    assert outcomes[0].status == "granted"
    [shared] = plain.arm.assignments.values()
    assert len(shared.description or "") <= azspec.DESCRIPTION_MAX


def test_a_principal_of_another_type_is_refused_not_retried(plain: Env) -> None:
    """The catalog's permission is for users; the request names a group's object id. ARM
    answers 400 UnmatchedPrincipalType: no delivery can succeed, so the grant is refused with
    the field named, not failed and retried into the poison queue."""
    plain.arm.directory[plain.principals[1]] = "Group"
    outcome = plain.engine.execute(plain.request(principal=1, request_id="group"))
    assert outcome.status == "refused" and outcome.field == "identity.object_id", outcome
    assert not plain.arm.assignments


def test_a_late_pim_revoke_leaves_a_neighbours_later_assignment_alone(pim: Env) -> None:
    """Azure ends a PIM grant at its expiry; the revoke (its expiry message, or one delayed by
    an outage) comes later. Meanwhile someone with rights of their own assigned the same role to
    the same person on the same scope, directly. An AdminRemove acts on whatever active
    assignment matches principal, role and scope: the late revoke must not send one, or it
    deletes an assignment the connector never made."""
    granted = pim.run(request_id="pim-late", duration="2s")
    assert granted.status == "granted", granted
    assert granted.expires_at is not None
    time.sleep(max(0.0, (granted.expires_at - azharness.now()).total_seconds()) + 0.5)
    assert not pim.arm.holds(pim.principals[0], READER, f"/{SCOPE}")  # Azure ended it
    theirs = pim.arm.assign(f"/{SCOPE}", str(uuid.uuid4()), READER, pim.principals[0])
    late = pim.run("revoke", request_id="pim-late")
    assert late.status == "revoked" and late.verified, late
    assert theirs.id.lower() in pim.arm.assignments
    # Nor does the sweep take theirs for the ended grant, or report that grant as live.
    assert not pim.engine.sweep().revoked
    assert pim.engine.live_grants()[pim.integration] == []
    assert theirs.id.lower() in pim.arm.assignments


def test_the_inventory_sync_sends_scopes_and_assignments_never_their_descriptions(
    plain: Env,
) -> None:
    """The sync reads each managed scope's role assignments (role, scope, principal object id):
    the descriptions, which hold the connector's MACed labels, never leave."""
    import io
    import json

    from jitc.inventory import JsonLinesTransport, MemorySyncState

    granted = plain.run()
    assert granted.status == "granted", granted
    out = io.StringIO()
    report = plain.engine.sync(JsonLinesTransport(out), MemorySyncState())
    assert report.ok, report.as_dict()
    records = [
        r for line in out.getvalue().splitlines()
        for r in json.loads(line)["inventory"].get("records", [])
    ]  # fmt: skip
    assert {"kind": "scope", "name": SCOPE} in records
    mine = [r for r in records if r["kind"] == "role_assignment"]
    assert any(
        READER in r["name"]
        and r["parent"] == f"/{SCOPE}"
        and r["id"].startswith(plain.principals[0])
        for r in mine
    ), mine
    assert ("grant", granted.grant_id) in {(r["kind"], r["name"]) for r in records}
    assert "jitc:" not in out.getvalue()  # no label (assignment description) was sent


def test_a_blob_written_at_a_tombstones_name_neither_refuses_nor_blocks(
    plain: Env, ledger: Any
) -> None:
    """Someone who may write the container (they cannot compute a tombstone's name without the
    label key, but suppose they copy one) puts their own bytes there: a grant is not refused by
    a tombstone that does not verify, and a revoke replaces it with one that does."""
    from jitc.labels import LabelKey
    from jitc.templates.azure_rbac_ledger import TOMBSTONES

    grant_id = plain.request(request_id="squat").target_grant_id
    name = TOMBSTONES + LabelKey.from_secret(LABEL_KEY).keyed_hash(
        "azure_rbac tombstone", f"{plain.integration}\0{grant_id}"
    )
    ledger.upload_blob(name, b"jitc:forged.{}", metadata={"grant_id": grant_id, "until": "x"})
    assert plain.run(request_id="squat").status == "granted"
    revoked = plain.run("revoke", request_id="squat")
    assert revoked.status == "revoked" and revoked.verified
    assert b"forged" not in ledger.get_blob_client(name).download_blob().readall()
    late = plain.run(request_id="squat")
    assert late.status == "refused" and late.field == "request_id"
    assert not plain.arm.assignments


def test_adv_an_infinite_lease_on_a_lock_cannot_keep_access_past_its_expiry(
    plain: Env, ledger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone with Storage Blob Data Contributor on the container (or account) cannot compute
    a lock's name, but may list `locks/` and take an infinite lease on every lock blob. The
    connector never breaks a lease, so every revoke and every sweep of the grants behind those
    locks would fail forever, while the role assignments live on past their expiry: the
    connector, which never takes an infinite lease, breaks one."""
    from jitc.templates import azure_rbac_ledger

    monkeypatch.setattr(azure_rbac_ledger, "LOCK_WAIT_SECONDS", 1.0)
    assert plain.run(request_id="forever").status == "granted"
    for item in ledger.list_blobs(name_starts_with=azure_rbac_ledger.LOCKS):
        ledger.get_blob_client(item.name).acquire_lease(lease_duration=-1)
    plain.run("revoke", request_id="forever")
    plain.engine.sweep(now=azharness.now() + dt.timedelta(hours=2))
    plain.engine.sweep(now=azharness.now() + dt.timedelta(hours=3))
    assert not plain.arm.holds(plain.principals[0], READER, f"/{SCOPE}")


def test_adv_an_arm_write_slower_than_the_lease_cannot_undo_a_concurrent_revoke(
    plain: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewal right before a write only proves the lease was held when the write began. A
    `PUT` that takes longer than the lease (ARM throttling: azure-core retries 429s with their
    Retry-After, 10 times by default; a frozen instance) lands after the lease has run out and
    another holder has read, written and released: the stale label is written back. Two revokes
    of grants sharing one assignment then both report `revoked`, verified, while the assignment
    lives on. (The lease is 15 s here, Storage's minimum, to keep the test short.)"""
    from jitc.templates import azure_rbac_ledger

    monkeypatch.setattr(azure_rbac_ledger, "LEASE_SECONDS", 15)
    assert plain.run(request_id="slow-1").status == "granted"
    assert plain.run(request_id="slow-2", duration="2h").status == "granted"
    other = Engine(
        plain.catalog,
        SecretStores({"mem": EnvSecretStore({"label": LABEL_KEY})}),
        NullScheduler(),
        MemorySink(),
    )
    seen: list[Outcome] = []
    second = threading.Thread(
        target=lambda: seen.append(other.execute(plain.request("revoke", request_id="slow-2")))
    )
    started: list[bool] = []

    def meanwhile(method: str, path: str) -> None:
        if method == "PUT" and "/roleAssignments/" in path and not started:
            started.append(True)
            second.start()
            time.sleep(22)  # this PUT is still on its way when its 15 s lease runs out

    plain.arm.meanwhile = meanwhile
    first = plain.run("revoke", request_id="slow-1")
    second.join(timeout=90)
    plain.arm.meanwhile = None
    assert seen, "the second revoke did not finish"
    for outcome in (first, seen[0]):
        if outcome.status != "revoked" or not outcome.verified:  # the queue's retry
            plain.run("revoke", request_id=outcome.request_id)
    # Both grants were revoked (and retried if they said so): the access must be gone.
    assert not plain.arm.holds(plain.principals[0], READER, f"/{SCOPE}"), plain.arm.assignments


def test_an_arm_write_is_sent_once_and_bounded_by_the_read_timeout(
    plain: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """azure-core's defaults (300 s read timeout, a timed-out PUT retried) let one write outlive
    the ledger's lease. A write is one attempt, given up at the read timeout (30 s; 2 s here);
    the queue retries the message, and that delivery finds the write done."""
    monkeypatch.setattr(azure_rbac, "ARM_READ_SECONDS", 2)
    puts: list[float] = []

    def slow(method: str, path: str) -> None:
        if method == "PUT" and "/roleAssignments/" in path:
            puts.append(time.monotonic())
            if len(puts) == 1:
                time.sleep(4)

    plain.arm.meanwhile = slow
    started = time.monotonic()
    outcome = plain.run(request_id="bounded")
    took = time.monotonic() - started
    plain.arm.meanwhile = None
    assert outcome.status != "granted" and took < 4, (outcome, took)
    assert len(puts) == 1  # not sent again by azure-core
    time.sleep(3)  # the abandoned PUT lands meanwhile
    again = plain.run(request_id="bounded")
    assert again.status == "granted" and again.reissued, again
    assert len(puts) == 1


def test_adv_a_tombstone_the_sweep_cannot_delete_does_not_stop_expiry_revokes(
    plain: Env, ledger: Any
) -> None:
    """Someone who may write the container takes an infinite lease on a tombstone (listable
    under `tombstones/`). Once it is past its time the sweep's delete of it is refused
    (LeaseIdMissing), and that error must not end the sweep before it revokes the grants that
    are due: they would outlive their expiry for as long as the lease stands."""
    from azure.storage.blob import BlobLeaseClient

    from jitc.templates.azure_rbac_ledger import TOMBSTONES

    assert plain.run(request_id="due").status == "granted"  # for an hour
    assert plain.run("revoke", request_id="ghost").status == "revoked"  # a tombstone only
    for item in ledger.list_blobs(name_starts_with=TOMBSTONES):
        BlobLeaseClient(ledger.get_blob_client(item.name)).acquire(lease_duration=-1)
    report = plain.engine.sweep(now=azharness.now() + dt.timedelta(hours=9))
    assert not plain.arm.holds(plain.principals[0], READER, f"/{SCOPE}")
    assert report.forgotten == [] and len(report.failed) == 1, report  # said, and tried again


def test_adv_a_ledger_that_cannot_be_listed_fails_its_integration_not_the_sweep(
    plain: Env, ledger: Any
) -> None:
    """Storage Blob Data Contributor on the account may delete containers (the role's
    `containers/delete` action), and Storage can fail: `List Blobs` then raises an azure-core
    error, not a JitcError, which ended the whole sweep, so no integration's grant expired
    (other templates' included). It must be reported against this integration alone."""
    assert plain.run(request_id="gone").status == "granted"
    ledger.delete_container()
    try:
        report = plain.engine.sweep(now=azharness.now() + dt.timedelta(hours=9))
    finally:
        ledger.create_container()  # for the fixture's teardown
    assert list(report.failed) == [plain.integration], report


def test_an_assignment_of_the_grant_edited_by_someone_else_is_named_not_passed_over(
    plain: Env,
) -> None:
    """Whoever may write assignments edits the description of the grant's own: the label no
    longer verifies, so the connector leaves it alone, as it does anything not its own, and the
    revoke says so instead of "nothing to revoke" with nothing more."""
    assert plain.run(request_id="edited").status == "granted"
    [ours] = plain.arm.assignments.values()
    ours.description = "taken over"
    revoke = plain.run("revoke", request_id="edited")
    assert revoke.status == "revoked"
    assert [r for r in revoke.residual if ours.name in r and "left alone" in r], revoke.residual
    assert ours.name in {a.name for a in plain.arm.assignments.values()}  # never touched
    # A description that still names the grant, with its MAC broken, is named the same way.
    assert plain.run(request_id="edited-2", principal=1).status == "granted"
    [second] = [a for a in plain.arm.assignments.values() if a.name != ours.name]
    mac, _, body = str(second.description).partition(".")
    widened = body[:-1] + ',"extended":true}'  # the MAC no longer matches
    second.description = f"{mac}.{widened}"
    again = plain.run("revoke", request_id="edited-2")
    assert [r for r in again.residual if second.name in r and "left alone" in r], again.residual
