"""The gcp_iam template against a principal who can edit IAM policies: edited conditions,
titles and descriptions, labels moved between bindings, members added to the connector's
binding, concurrent writers; and the catalog's refusal of roles that hand out access."""

from __future__ import annotations

import gc
import json
import os
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from gcpfake import FakeGcp
from gcpharness import WorkerCredentials

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.errors import CatalogError
from jitc.local import MemorySink, NullScheduler
from jitc.messages import parse_request
from jitc.models import derive_grant_id
from jitc.secrets import EnvSecretStore, SecretStores

RUN = secrets.token_hex(2)
PROJECT = f"jitc-tmpl-{RUN}"
RESOURCE = f"projects/{PROJECT}"
ROLE = "roles/bigquery.dataViewer"
CUSTOM = f"projects/{PROJECT}/roles/jitc_iam_target"
NEIGHBOUR = "user:neighbour@example.com"
TOMBSTONES = f"{PROJECT}-jitc-tombstones"
# What the Terraform module binds on its tombstone bucket (google_storage_bucket.tombstones).
TOMBSTONE_ROLE = f"projects/{PROJECT}/roles/jitc_tombstones"


@pytest.fixture
def fake(worker_credentials: WorkerCredentials) -> Iterator[FakeGcp]:
    server = FakeGcp(PROJECT)
    email, info = server.service_account("jitc-worker")
    worker_credentials(
        info,
        {
            "JITC_GCP_ENDPOINT_CLOUDRESOURCEMANAGER": server.url + "/",
            "JITC_STORAGE_ENDPOINT": server.url,
            "JITC_GCP_TOMBSTONE_BUCKET": TOMBSTONES,
        },
    )
    server.buckets.add(TOMBSTONES)
    server.custom_roles[TOMBSTONE_ROLE] = frozenset(
        {"storage.objects.create", "storage.objects.get"}
    )
    server.bind(f"buckets/{TOMBSTONES}", TOMBSTONE_ROLE, f"serviceAccount:{email}")
    server.custom_roles[CUSTOM] = frozenset(
        {"resourcemanager.projects.getIamPolicy", "resourcemanager.projects.setIamPolicy"}
    )
    server.bind(RESOURCE, CUSTOM, f"serviceAccount:{email}")
    server.bind(RESOURCE, ROLE, NEIGHBOUR)
    yield server
    assert server.violations == []
    server.close()


def catalog_doc(**permission: Any) -> dict[str, Any]:
    return {
        "connector": {"label_key": "mem:label"},
        "integrations": {
            "iam": {
                "kind": "gcp_iam",
                "connection": {"resources": [RESOURCE], "allowed_members": ["user:*@example.com"]},
                "permissions": {"viewer": {"role": ROLE, "resources": [RESOURCE], **permission}},
            }
        },
    }


def engine() -> Engine:
    store = EnvSecretStore({"label": "label-key-" + "k" * 32})
    return Engine(
        parse_catalog(catalog_doc()), SecretStores({"mem": store}), NullScheduler(), MemorySink()
    )


def request(action: str = "grant", request_id: str = "r1", **fields: Any) -> Any:
    doc: dict[str, Any] = {"request_id": request_id, "action": action, "integration": "iam"}
    if action == "grant":
        doc.update(
            permission="viewer",
            resources=[RESOURCE],
            identity={"email": "ana@example.com"},
            duration="1h",
        )
    doc.update(fields)
    return parse_request(json.dumps(doc))


def bindings(fake: FakeGcp) -> list[dict[str, Any]]:
    return fake.policies[RESOURCE]["bindings"]


def ours(fake: FakeGcp, grant_id: str) -> dict[str, Any]:
    found = [
        b for b in bindings(fake)
        if (b.get("condition") or {}).get("title") == f"jitc {grant_id}"
        and "1970-01-01" not in b["condition"]["expression"]  # not the tombstone
    ]  # fmt: skip
    assert len(found) == 1, found
    return found[0]


def test_grant_is_one_conditional_binding_with_a_verified_label(fake: FakeGcp) -> None:
    outcome = engine().execute(request())
    assert outcome.status == "granted" and outcome.principal == "user:ana@example.com"
    assert "about 2 minutes" in str(outcome.message)  # IAM propagation, said in the outcome
    binding = ours(fake, outcome.grant_id or "")
    assert binding["role"] == ROLE and binding["members"] == ["user:ana@example.com"]
    assert binding["condition"]["description"].startswith("jitc:")
    assert fake.policies[RESOURCE]["version"] == 3
    assert fake.allowed("user:ana@example.com", "bigquery.tables.getData", RESOURCE)
    fake.advance(timedelta(minutes=61))  # Google ends it, with nobody revoking
    assert not fake.allowed("user:ana@example.com", "bigquery.tables.getData", RESOURCE)


def test_an_extended_condition_is_not_ours_any_more_and_the_revoke_says_so(fake: FakeGcp) -> None:
    grant_id = engine().execute(request()).grant_id or ""
    binding = ours(fake, grant_id)
    binding["condition"]["expression"] = 'request.time < timestamp("2999-01-01T00:00:00Z")'
    outcome = engine().execute(request("revoke"))
    assert outcome.status == "revoked" and "nothing to revoke" in str(outcome.message)
    assert any("left alone" in r for r in outcome.residual)
    assert ours(fake, grant_id)["condition"]["expression"].startswith(
        'request.time < timestamp("2999'
    )


def test_a_label_copied_onto_a_neighbours_binding_never_steers_a_revoke(fake: FakeGcp) -> None:
    grant_id = engine().execute(request()).grant_id or ""
    mine = ours(fake, grant_id)
    # The neighbour copies the connector's condition (title, description, expression) onto a
    # binding of their own member and another role, hoping the revoke removes it.
    stolen = {
        "role": "roles/storage.objectViewer",
        "members": [NEIGHBOUR],
        "condition": dict(mine["condition"]),
    }
    bindings(fake).append(stolen)
    outcome = engine().execute(request("revoke"))
    assert outcome.status == "revoked"
    assert any("left alone" in r for r in outcome.residual)
    assert stolen in bindings(fake)
    assert {"role": ROLE, "members": [NEIGHBOUR]} in bindings(fake)


def test_a_member_added_to_the_connectors_binding_stays_after_the_revoke(fake: FakeGcp) -> None:
    grant_id = engine().execute(request()).grant_id or ""
    ours(fake, grant_id)["members"].append(NEIGHBOUR)
    outcome = engine().execute(request("revoke"))
    assert outcome.status == "revoked" and outcome.verified, outcome
    kept = ours(fake, grant_id)
    assert kept["members"] == [NEIGHBOUR]  # only the connector's member left
    assert not fake.allowed("user:ana@example.com", "bigquery.tables.getData", RESOURCE)


def test_a_retitled_binding_is_left_alone(fake: FakeGcp) -> None:
    grant_id = engine().execute(request()).grant_id or ""
    other = derive_grant_id("iam", "r2")
    ours(fake, grant_id)["condition"]["title"] = f"jitc {other}"
    outcome = engine().execute(request("revoke", request_id="r2"))
    assert "nothing to revoke" in str(outcome.message)
    assert any(
        b["members"] == ["user:ana@example.com"] and b["role"] == ROLE for b in bindings(fake)
    )


def test_a_concurrent_writer_is_retried_with_the_new_etag(fake: FakeGcp) -> None:
    original = fake._set_policy
    raced = []

    def racing(resource: str, policy: dict[str, Any], storage: bool) -> dict[str, Any]:
        if not raced:
            raced.append(1)
            fake.bind(RESOURCE, "roles/storage.objectViewer", "user:late@example.com")
        return original(resource, policy, storage)

    fake._set_policy = racing  # type: ignore[method-assign]
    outcome = engine().execute(request())
    assert outcome.status == "granted"
    assert {"role": "roles/storage.objectViewer", "members": ["user:late@example.com"]} in bindings(
        fake
    )
    ours(fake, outcome.grant_id or "")


def test_a_grant_and_a_revoke_read_each_policy_once_before_writing(fake: FakeGcp) -> None:
    """Resource Manager's getIamPolicy has its own quota: a grant or a revoke reads a policy
    once to decide and write (the etag refuses the write if it changed), then once to check
    what it wrote."""

    def policy_calls() -> list[str]:
        with fake.lock:
            made = [c.method.rsplit(".", 1)[-1] for c in fake.calls if c.resource == RESOURCE]
            fake.calls.clear()
        return made

    policy_calls()
    granted = engine().execute(request())
    assert granted.status == "granted"
    assert policy_calls() == ["getIamPolicy", "setIamPolicy", "getIamPolicy"]
    revoked = engine().execute(request("revoke", "r2", grant_id=granted.grant_id))
    assert revoked.status == "revoked" and revoked.verified
    assert policy_calls() == ["getIamPolicy", "setIamPolicy", "getIamPolicy"]


@pytest.mark.parametrize(
    "role",
    ["roles/browser", "roles/iam.serviceAccountTokenCreator",
     "roles/resourcemanager.projectIamAdmin", "roles/storage.admin", "roles/iam.serviceAccountUser",
     f"projects/{PROJECT}/roles/custom"],
)  # fmt: skip
def test_roles_that_hand_out_access_need_privileged(role: str) -> None:
    with pytest.raises(CatalogError, match="privileged"):
        parse_catalog(catalog_doc(role=role))
    parse_catalog(catalog_doc(role=role, privileged=True))


def test_only_allowed_members_and_managed_resources(fake: FakeGcp) -> None:
    outside = engine().execute(request(identity={"email": "eve@evil.example"}))
    assert outside.status == "refused" and outside.field == "identity"
    assert len(bindings(fake)) == 2  # the connector's and the neighbour's, as before


def test_redelivery_after_revoke_and_revoke_before_grant_are_refused(fake: FakeGcp) -> None:
    e = engine()
    assert e.execute(request()).status == "granted"
    assert e.execute(request()).reissued
    assert e.execute(request("revoke")).status == "revoked"
    late = e.execute(request())
    assert late.status == "refused" and late.field == "request_id"
    early = e.execute(request("revoke", request_id="r9"))
    assert "nothing to revoke" in str(early.message)
    assert e.execute(request(request_id="r9")).status == "refused"
    assert not fake.allowed("user:ana@example.com", "bigquery.tables.getData", RESOURCE)
    assert datetime.now(UTC)  # the neighbour's binding is untouched
    assert {"role": ROLE, "members": [NEIGHBOUR]} in bindings(fake)


@pytest.mark.parametrize("role", ["roles/owner", "roles/editor", "roles/viewer"])
def test_legacy_basic_roles_are_refused_even_privileged(fake: FakeGcp, role: str) -> None:
    # Google refuses an IAM condition on a legacy basic role: a grant of one could never be
    # made, and every delivery of it would fail and be retried. The catalog says so at load.
    with pytest.raises(CatalogError, match="condition"):
        parse_catalog(catalog_doc(role=role, privileged=True))
    # ...and the loopback IAM refuses what Google refuses, through the real client.
    from googleapiclient.errors import HttpError

    from jitc.templates.gcp_iam import _Api

    api = _Api()
    policy = api.get(RESOURCE)
    policy["version"] = 3
    policy["bindings"].append(
        {
            "role": role,
            "members": ["user:ana@example.com"],
            "condition": {
                "title": "t",
                "expression": 'request.time < timestamp("2999-01-01T00:00:00Z")',
            },
        }
    )
    with pytest.raises(HttpError) as caught:
        api.set(RESOURCE, policy)
    assert caught.value.resp.status == 400


def test_repeated_grants_of_one_role_to_one_person_keep_working(fake: FakeGcp) -> None:
    e = engine()
    for index in range(21):
        granted = e.execute(request(request_id=f"again-{index}"))
        assert granted.status == "granted", (index, granted.message)
        assert e.execute(request("revoke", request_id=f"again-{index}")).status == "revoked"


def test_many_revokes_of_grants_never_made_keep_working(fake: FakeGcp) -> None:
    e = engine()
    for index in range(21):
        outcome = e.execute(request("revoke", request_id=f"never-{index}"))
        assert outcome.status == "revoked", (index, outcome.message)


def test_a_tombstone_is_an_object_of_the_connectors_bucket_not_a_binding(fake: FakeGcp) -> None:
    e = engine()
    grant_id = e.execute(request()).grant_id or ""
    before = len(bindings(fake))
    assert e.execute(request("revoke")).status == "revoked"
    assert len(bindings(fake)) == before - 1  # the grant's binding left; nothing came instead
    assert not any(f"jitc {grant_id}" in json.dumps(b) for b in bindings(fake))
    [(bucket, name)] = fake.objects
    assert bucket == TOMBSTONES and grant_id not in name  # keyed: the name tells nothing
    # The revoke's write is create-if-absent, so a second revoke leaves the first one's object.
    generation = fake.objects[(bucket, name)][0]
    assert e.execute(request("revoke")).status == "revoked"
    assert fake.objects[(bucket, name)][0] == generation
    assert e.execute(request()).status == "refused"


def test_an_object_the_connector_did_not_write_refuses_the_grant(fake: FakeGcp) -> None:
    e = engine()
    e.execute(request("revoke"))
    [key] = fake.objects
    generation, data, kind = fake.objects[key]
    fake.objects[key] = (generation, data.replace(b'"s":"t"', b'"s":"a"'), kind)
    late = e.execute(request())
    assert late.status == "refused" and "does not verify" in str(late.message)
    again = e.execute(request("revoke"))
    assert again.status == "revoked" and any("does not verify" in r for r in again.residual)
    assert fake.objects[key][1] != data  # left alone, never overwritten


def test_a_revoke_that_runs_while_the_grant_is_written_wins(fake: FakeGcp) -> None:
    """Cloud Tasks may run a grant and its revoke at once: the revoke's tombstone lands after the
    grant looked for it and before the grant wrote its binding, and the revoke reads the policy
    before that write. The grant sees the tombstone after its write and takes the binding out."""
    original = fake._set_policy
    revoked = []

    def racing(resource: str, policy: dict[str, Any], storage: bool) -> dict[str, Any]:
        if not revoked:
            revoked.append(engine().execute(request("revoke")))
        return original(resource, policy, storage)

    fake._set_policy = racing  # type: ignore[method-assign]
    outcome = engine().execute(request())
    assert revoked[0].status == "revoked" and "nothing to revoke" in str(revoked[0].message)
    assert outcome.status == "refused" and outcome.field == "request_id", outcome
    assert not any("user:ana@example.com" in b["members"] for b in bindings(fake))
    assert not fake.allowed("user:ana@example.com", "bigquery.tables.getData", RESOURCE)


def test_a_full_policy_refuses_the_grant_instead_of_failing_it_forever(fake: FakeGcp) -> None:
    for index in range(99):
        fake.bind(
            RESOURCE, "roles/storage.objectViewer", f"user:other{index}@example.com",
            {"title": f"other {index}", "expression": 'request.time < timestamp("2999-01-01T00:00:00Z")'},
        )  # fmt: skip
    e = engine()
    assert e.execute(request(request_id="fits")).status == "granted"  # the 100th
    outcome = e.execute(request(request_id="full"))
    assert outcome.status == "refused" and outcome.field == "resources", outcome
    assert "100 conditional role bindings" in str(outcome.message)
    assert len([b for b in bindings(fake) if b.get("condition")]) == 100


def test_without_its_tombstone_bucket_nothing_is_granted_or_revoked(
    fake: FakeGcp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JITC_GCP_TOMBSTONE_BUCKET")
    e = engine()
    for outcome in (e.execute(request()), e.execute(request("revoke"))):
        assert outcome.status == "failed" and outcome.message, outcome
    assert not any("user:ana@example.com" in b["members"] for b in bindings(fake))


def test_a_binding_left_beside_its_tombstone_goes_when_the_grant_comes_again(
    fake: FakeGcp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grant that met its revoke's tombstone after its write and then failed to take its
    binding out is retried by the queue: the retry refuses, and takes the binding out first."""
    from jitc.templates.gcp_iam import GcpIamSession

    e = engine()
    assert e.execute(request()).status == "granted"
    with monkeypatch.context() as patch:
        patch.setattr(GcpIamSession, "_strip", lambda self, resource, grant_id, who, policy=None, alone=None: [])
        e.execute(request("revoke"))  # the tombstone is written; the binding stays
    assert any("user:ana@example.com" in b["members"] for b in bindings(fake))
    retry = e.execute(request())
    assert retry.status == "refused" and retry.field == "request_id", retry
    assert not any("user:ana@example.com" in b["members"] for b in bindings(fake))


def test_on_cloud_run_the_metadata_servers_credentials_are_built_without_probing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import google.auth
    from google.auth import compute_engine

    from jitc.google_credentials import CLOUD_PLATFORM
    from jitc.templates.gcp_iam import _Api

    def probe(**kwargs: object) -> None:
        raise AssertionError("google.auth.default probed")

    monkeypatch.setenv("K_SERVICE", "jitc-worker")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setattr(google.auth, "default", probe)
    found = _Api().credentials()
    assert isinstance(found, compute_engine.Credentials)
    # The scope google.auth.default was asked for, and the instance's default account.
    assert tuple(found.scopes) == CLOUD_PLATFORM
    assert found.service_account_email == "default"


def test_a_key_file_on_cloud_run_is_still_used(monkeypatch: pytest.MonkeyPatch) -> None:
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    from jitc.templates.gcp_iam import _Api

    chosen = AnonymousCredentials()  # type: ignore[no-untyped-call]
    monkeypatch.setenv("K_SERVICE", "jitc-worker")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
    monkeypatch.setattr(google.auth, "default", lambda **kwargs: (chosen, None))
    assert _Api().credentials() is chosen


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_batch_after_batch_leaves_no_connection_open(fake: FakeGcp) -> None:
    """httplib2 holds its sockets until closed, and the discovery clients sit in reference
    cycles: without the session closing them, a warm function piles up connections until only
    the cycle collector, whenever it runs, would free them. It is kept from running here."""
    gc.collect()
    gc.disable()
    try:
        warm = engine()  # the process's credentials and their token are made once, and kept
        assert warm.execute(request(request_id="warm")).status == "granted"
        before = _descriptors()
        for n in range(5):
            batch = engine()
            assert batch.execute(request(request_id=f"fd-{n}")).status == "granted"
            assert batch.execute(request("revoke", request_id=f"fd-{n}")).status == "revoked"
        deadline = time.monotonic() + 5  # the fake's handler threads close their ends
        while _descriptors() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _descriptors() <= before, (before, _descriptors())
    finally:
        gc.enable()
    # google-cloud-storage's own bucket lookups: a 403 and an audit-log entry each, and a thread
    assert [c for c in fake.calls if not c.allowed] == [], fake.calls


def test_the_sync_state_leaves_no_connection_open(fake: FakeGcp) -> None:
    """The same for the inventory sync's state object (jitc.gcp.sync_state), read missing,
    written, read back, on a client closed after the run as the sync closes it."""
    from jitc.gcp.sync_state import GcsSyncState
    from jitc.google_storage import storage_client
    from jitc.inventory import Acked, version_of_hashes

    pages = ("ab" * 32,)
    acked = Acked(version_of_hashes(pages), pages, "cd" * 16)
    gc.collect()
    gc.disable()
    try:
        before = _descriptors()
        for n in range(3):
            client = storage_client(None, fake.url)
            state = GcsSyncState(client.bucket(TOMBSTONES), name=f"sync-{n}.json")
            assert state.load("iam") is None
            state.save("iam", acked)
            assert state.load("iam") == acked
            client.close()
        deadline = time.monotonic() + 5
        while _descriptors() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _descriptors() <= before, (before, _descriptors())
    finally:
        gc.enable()
