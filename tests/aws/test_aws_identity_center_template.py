"""The IAM Identity Center template against moto: account assignments of a permission set to a
user found by email, a MACed DynamoDB ledger (no tags on the permission set), never touching
assignments the connector did not make, tombstones with a TTL, overlapping grants, sweep and
inventory, and a hostile writer of ledger items."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from awsharness import REQUESTS, acting_as, client

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.labels import LabelKey
from jitc.local import MemorySink, NullScheduler
from jitc.models import AccessRequest, derive_grant_id
from jitc.secrets import EnvSecretStore, SecretStores
from jitc.templates.aws_identity_center_ledger import Ledger, grant_key, hold_key

INTEGRATION = "awst-idc"
STORE = "d-1234567890"
ACCOUNTS = ["111111111111", "222222222222"]
TABLE = "jitc-test-ledger"
LABEL_KEY = "idc-test-label-key-0123456789abcdef"
STORES = SecretStores({"mem": EnvSecretStore({"label": LABEL_KEY})})


def make_table() -> Any:
    """The table as the module makes it: pk/sk strings, TTL on `expires`."""
    db = client("dynamodb")
    db.create_table(
        TableName=TABLE,
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    db.update_time_to_live(
        TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires"}
    )
    return db


def catalog_doc(idc: dict[str, Any], permissions: dict[str, Any]) -> dict[str, Any]:
    return {
        "connector": {"label_key": "mem:label"},
        "integrations": {
            INTEGRATION: {
                "kind": "aws_identity_center",
                "connection": {
                    "instance_arn": idc["instance"],
                    "identity_store_id": STORE,
                    "region": "us-east-1",
                    "ledger_table": TABLE,
                },
                "max_duration": "8h",
                "permissions": permissions,
            }
        },
    }


@pytest.fixture
def idc(aws: str) -> dict[str, Any]:
    sso, store = client("sso-admin"), client("identitystore")
    instance = sso.list_instances()["Instances"][0]["InstanceArn"]
    ps = sso.create_permission_set(InstanceArn=instance, Name="ReadOnly", SessionDuration="PT1H")
    other = sso.create_permission_set(InstanceArn=instance, Name="Billing", SessionDuration="PT1H")
    users = {}
    for name in ("ana", "bob"):
        users[name] = store.create_user(
            IdentityStoreId=STORE,
            UserName=name,
            DisplayName=name,
            Name={"GivenName": name, "FamilyName": "Example"},
            Emails=[{"Value": f"{name}@example.com", "Type": "work", "Primary": True}],
        )["UserId"]
    return {
        "db": make_table(),
        "sso": sso,
        "instance": instance,
        "ps": ps["PermissionSet"]["PermissionSetArn"],
        "other": other["PermissionSet"]["PermissionSetArn"],
        "users": users,
    }


@pytest.fixture
def engine(idc: dict[str, Any]) -> Engine:
    permissions = {"read": {"permission_set_arn": idc["ps"], "resources": ACCOUNTS}}
    return Engine(
        parse_catalog(catalog_doc(idc, permissions)), STORES, NullScheduler(), MemorySink()
    )


def session(engine: Engine) -> Any:
    integration = engine.catalog.integration(INTEGRATION)
    return integration.template.open(
        INTEGRATION, integration.connection, None, label_key=LabelKey.from_secret(LABEL_KEY)
    )


def grant(who: str, accounts: list[str], seconds: int = 3600) -> AccessRequest:
    return AccessRequest.model_validate(
        {
            "request_id": f"idc-{uuid.uuid4().hex[:8]}",
            "action": "grant",
            "integration": INTEGRATION,
            "permission": "read",
            "resources": accounts,
            "identity": {"email": f"{who}@example.com"},
            "duration": f"{seconds}s",
        }
    )


def revoke(grant_id: str) -> AccessRequest:
    return AccessRequest(
        request_id=f"r-{uuid.uuid4().hex[:8]}",
        action="revoke",
        integration=INTEGRATION,
        grant_id=grant_id,
    )


def run(engine: Engine, request: AccessRequest) -> Any:
    with acting_as("worker"):
        return engine.execute(request)


def assigned(idc: dict[str, Any], account: str) -> list[str]:
    got = idc["sso"].list_account_assignments(
        InstanceArn=idc["instance"], AccountId=account, PermissionSetArn=idc["ps"]
    )["AccountAssignments"]
    return sorted(a["PrincipalId"] for a in got)


def tags(idc: dict[str, Any]) -> dict[str, str]:
    got = {}
    for arn in (idc["ps"], idc["other"]):
        for tag in idc["sso"].list_tags_for_resource(InstanceArn=idc["instance"], ResourceArn=arn)[
            "Tags"
        ]:
            got[tag["Key"]] = tag["Value"]
    return got


def items(idc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The ledger table: (pk, sk) -> item."""
    found = idc["db"].scan(TableName=TABLE)["Items"]
    return {(i["pk"]["S"], i["sk"]["S"]): i for i in found}


def state(idc: dict[str, Any], grant_id: str) -> str | None:
    item = items(idc).get(grant_key(grant_id))
    if item is None:
        return None
    body = json.loads(item["label"]["S"].split(".", 1)[1])
    return str(body["state"])


def test_grant_assigns_the_users_permission_set_recorded_in_the_ledger(
    engine: Engine, idc: dict[str, Any]
) -> None:
    request = grant("ana", ACCOUNTS)
    outcome = run(engine, request)
    ana = idc["users"]["ana"]
    assert (outcome.status, outcome.principal) == ("granted", f"user/{ana}")
    assert assigned(idc, ACCOUNTS[0]) == [ana] and assigned(idc, ACCOUNTS[1]) == [ana]
    gid = derive_grant_id(INTEGRATION, request.request_id)
    ledger = items(idc)
    assert set(ledger) == {grant_key(gid)} | {hold_key(idc["ps"], a, ana, gid) for a in ACCOUNTS}
    assert state(idc, gid) == "active" and "expires" not in ledger[grant_key(gid)]
    assert "@" not in json.dumps(list(ledger.values()))  # no email in the table
    again = run(engine, request)
    assert again.status == "granted" and again.reissued
    assert assigned(idc, ACCOUNTS[0]) == [ana] and len(items(idc)) == 3
    # Nothing is written on the permission set: its 50 tags stay the company's.
    assert tags(idc) == {}
    # The same request id for another request is refused, not merged.
    other = AccessRequest.model_validate({**request.model_dump(), "duration": "60s"})
    refused = run(engine, other)
    assert (refused.status, refused.field) == ("refused", "request_id")


def test_unknown_email_and_foreign_assignment_are_refused(
    engine: Engine, idc: dict[str, Any]
) -> None:
    outcome = run(engine, grant("nobody", ACCOUNTS[:1]))
    assert (outcome.status, outcome.field) == ("refused", "identity.email")
    # bob already holds the permission set on an account, outside the connector.
    bob = idc["users"]["bob"]
    idc["sso"].create_account_assignment(
        InstanceArn=idc["instance"],
        TargetId=ACCOUNTS[1],
        TargetType="AWS_ACCOUNT",
        PermissionSetArn=idc["ps"],
        PrincipalType="USER",
        PrincipalId=bob,
    )
    outcome = run(engine, grant("bob", ACCOUNTS))
    assert (outcome.status, outcome.field) == ("refused", "resources[1]")
    assert assigned(idc, ACCOUNTS[0]) == [] and assigned(idc, ACCOUNTS[1]) == [bob]
    assert items(idc) == {}


def test_plan_has_no_side_effects(engine: Engine, idc: dict[str, Any]) -> None:
    with acting_as("worker"):
        outcome = engine.plan(grant("ana", ACCOUNTS))
    assert outcome.status == "planned" and len(outcome.statements) == 3
    assert assigned(idc, ACCOUNTS[0]) == [] and items(idc) == {}


def test_revoke_twice_before_and_after_and_overlapping(engine: Engine, idc: dict[str, Any]) -> None:
    ana = idc["users"]["ana"]
    first_req = grant("ana", ACCOUNTS[:1])
    first = run(engine, first_req)
    second = run(engine, grant("ana", ACCOUNTS))
    # Revoking the first keeps the assignment the second still needs.
    out = run(engine, revoke(first.grant_id))
    assert (out.status, out.verified) == ("revoked", True)
    assert assigned(idc, ACCOUNTS[0]) == [ana] and assigned(idc, ACCOUNTS[1]) == [ana]
    # The grant's record became its tombstone, which the table's TTL deletes after the expiry.
    assert state(idc, first.grant_id) == "tombstone"
    stone = items(idc)[grant_key(first.grant_id)]
    assert int(stone["expires"]["N"]) >= int(first.expires_at.timestamp())
    assert hold_key(idc["ps"], ACCOUNTS[0], ana, first.grant_id) not in items(idc)
    assert run(engine, revoke(first.grant_id)).status == "revoked"
    assert (run(engine, first_req).status, run(engine, first_req).field) == (
        "refused",
        "request_id",
    )
    assert run(engine, revoke(second.grant_id)).status == "revoked"
    assert assigned(idc, ACCOUNTS[0]) == [] and assigned(idc, ACCOUNTS[1]) == []
    # Revoke before grant: the late grant is refused.
    late = grant("ana", ACCOUNTS[:1])
    assert run(engine, revoke(derive_grant_id(INTEGRATION, late.request_id))).status == "revoked"
    assert run(engine, late).status == "refused"
    assert assigned(idc, ACCOUNTS[0]) == []
    assert [k for k in items(idc) if k[0].startswith("a#")] == []  # no hold is left
    assert tags(idc) == {}


def test_sweep_and_inventory(engine: Engine, idc: dict[str, Any]) -> None:
    short = run(engine, grant("ana", ACCOUNTS[:1], seconds=2))
    long = run(engine, grant("bob", ACCOUNTS[1:], seconds=3600))
    time.sleep(2.2)
    with acting_as("sweep"):
        report = engine.sweep()
    assert report.revoked == [short.grant_id] and report.ok
    assert assigned(idc, ACCOUNTS[0]) == [] and assigned(idc, ACCOUNTS[1]) == [idc["users"]["bob"]]
    assert state(idc, long.grant_id) == "active"
    # Inventory is read by the operator's CLI, not by the deployed functions.
    inventory = session(engine).inventory()
    assert inventory["permission_sets"] == ["Billing", "ReadOnly"]
    assert inventory["users"] == ["ana", "bob"]


def test_many_grants_and_revokes_of_a_permission_set_at_its_tag_limit(
    engine: Engine, idc: dict[str, Any]
) -> None:
    """The company's 50 tags fill the permission set; 30 grants and revokes still work (the
    tag ledger ran out after 50 tombstones)."""
    own = [{"Key": f"team-{i}", "Value": "x"} for i in range(50)]
    for start in range(0, 50, 25):
        idc["sso"].tag_resource(
            InstanceArn=idc["instance"], ResourceArn=idc["ps"], Tags=own[start : start + 25]
        )
    for _ in range(30):
        granted = run(engine, grant("ana", ACCOUNTS[:1]))
        assert granted.status == "granted"
        assert run(engine, revoke(granted.grant_id)).status == "revoked"
    assert assigned(idc, ACCOUNTS[0]) == [] and len(tags(idc)) == 50


def test_a_revoke_racing_a_grant_of_the_same_assignment_leaves_the_grant_its_access(
    engine: Engine, idc: dict[str, Any]
) -> None:
    ana = idc["users"]["ana"]
    first = run(engine, grant("ana", ACCOUNTS[:1]))
    second_request = grant("ana", ACCOUNTS[:1])
    revoker = session(engine)
    original = revoker.sso.delete_account_assignment
    raced: list[Any] = []

    def delete_while_a_grant_lands(**params: Any) -> Any:
        # The second grant runs (another worker) after the revoke looked at the ledger and
        # before its deletion: it finds the assignment in place and relies on it.
        if not raced:
            raced.append(run(engine, second_request))
        return original(**params)

    revoker.sso.delete_account_assignment = delete_while_a_grant_lands
    with acting_as("worker"):
        result = revoker.revoke(first.grant_id, first.expires_at)
    assert raced[0].status == "granted" and result.verified
    assert assigned(idc, ACCOUNTS[0]) == [ana]
    assert state(idc, raced[0].grant_id) == "active"
    assert state(idc, first.grant_id) == "tombstone"


def test_only_the_catalogs_permission_sets_are_read_or_assigned(
    engine: Engine, idc: dict[str, Any]
) -> None:
    # The policy covers the catalog's permission sets only; a call naming any other (or
    # listing them all) is AccessDenied on a real instance.
    start = len(REQUESTS)
    granted = run(engine, grant("ana", ACCOUNTS))
    run(engine, revoke(granted.grant_id))
    run(engine, revoke(derive_grant_id(INTEGRATION, "never-granted")))
    with acting_as("sweep"):
        assert engine.sweep().ok
    sent = REQUESTS[start:]
    assert sent and not [r for r in sent if r.operation == "ListPermissionSets"]
    named = {
        r.params.get("PermissionSetArn") or r.params.get("ResourceArn")
        for r in sent
        if r.service == "sso-admin"
    }
    assert named == {idc["ps"]}
    assert not [r for r in sent if r.operation in ("TagResource", "UntagResource")]
    assert {r.params.get("TableName") for r in sent if r.service == "dynamodb"} == {TABLE}


def test_a_revoke_of_a_grant_never_made_writes_one_item_and_still_stops_it(
    idc: dict[str, Any],
) -> None:
    permissions = {
        "read": {"permission_set_arn": idc["ps"], "resources": ACCOUNTS},
        "billing": {"permission_set_arn": idc["other"], "resources": ACCOUNTS},
    }
    engine = Engine(
        parse_catalog(catalog_doc(idc, permissions)), STORES, NullScheduler(), MemorySink()
    )
    late = {
        name: AccessRequest.model_validate(
            {**grant("ana", ACCOUNTS[:1]).model_dump(), "permission": name}
        )
        for name in permissions
    }
    for request in late.values():
        gid = derive_grant_id(INTEGRATION, request.request_id)
        assert run(engine, revoke(gid)).status == "revoked"
        assert state(idc, gid) == "tombstone" and "expires" in items(idc)[grant_key(gid)]
    assert len(items(idc)) == 2 and tags(idc) == {}
    for request in late.values():
        assert run(engine, request).status == "refused"
    assert assigned(idc, ACCOUNTS[0]) == []


# -- a hostile writer of ledger items -------------------------------------------------------


def _plant(idc: dict[str, Any], pk: str, sk: str, body: dict[str, Any]) -> None:
    """An item as the connector writes it, but signed with a key that is not the connector's
    (or copied from elsewhere)."""
    from jitc.labels import sign_label
    from jitc.templates.aws_identity_center_ledger import KIND

    forged = LabelKey.from_secret("not-the-connectors-label-key-000")
    label = sign_label(forged, KIND, f"{pk}\n{sk}", {**body, "integration": INTEGRATION})
    idc["db"].put_item(
        TableName=TABLE, Item={"pk": {"S": pk}, "sk": {"S": sk}, "label": {"S": label}}
    )


def _record(idc: dict[str, Any], grant_id: str, user: str, state: str = "active") -> dict[str, Any]:
    return {
        "grant_id": grant_id, "state": state, "expires_at": "2020-01-01T00:00:00+00:00",
        "user_id": user, "permission_set": idc["ps"], "accounts": [ACCOUNTS[0]], "digest": "x",
    }  # fmt: skip


def _assign_outside(idc: dict[str, Any], user: str, account: str) -> None:
    idc["sso"].create_account_assignment(
        InstanceArn=idc["instance"], TargetId=account, TargetType="AWS_ACCOUNT",
        PermissionSetArn=idc["ps"], PrincipalType="USER", PrincipalId=user,
    )  # fmt: skip


def test_a_forged_ledger_entry_never_makes_the_sweep_remove_an_assignment(
    engine: Engine, idc: dict[str, Any]
) -> None:
    """Someone who can write items plants an expired "grant" of bob's assignment, which the
    company made outside the connector: the sweep must not remove it."""
    bob = idc["users"]["bob"]
    _assign_outside(idc, bob, ACCOUNTS[0])
    gid = derive_grant_id(INTEGRATION, "planted")
    _plant(idc, *grant_key(gid), _record(idc, gid, bob))
    _plant(idc, *hold_key(idc["ps"], ACCOUNTS[0], bob, gid), {"grant_id": gid})
    with acting_as("sweep"):
        report = engine.sweep()
    assert report.ok and gid not in report.revoked
    assert assigned(idc, ACCOUNTS[0]) == [bob]
    # A revoke of that grant id does not act on it either: it fails, retried and alarmed.
    outcome = run(engine, revoke(gid))
    assert outcome.status == "failed" and "left alone" in str(outcome.message)
    assert assigned(idc, ACCOUNTS[0]) == [bob]


def test_a_forged_or_replayed_hold_never_keeps_an_assignment_alive(
    engine: Engine, idc: dict[str, Any]
) -> None:
    ana = idc["users"]["ana"]
    old = run(engine, grant("ana", ACCOUNTS[:1]))
    old_hold = items(idc)[hold_key(idc["ps"], ACCOUNTS[0], ana, old.grant_id)]
    assert run(engine, revoke(old.grant_id)).status == "revoked"
    current = run(engine, grant("ana", ACCOUNTS[:1]))
    # A replay of the revoked grant's genuine hold, and a forged hold of a made-up grant.
    idc["db"].put_item(TableName=TABLE, Item=old_hold)
    fake = derive_grant_id(INTEGRATION, "fake")
    _plant(idc, *hold_key(idc["ps"], ACCOUNTS[0], ana, fake), {"grant_id": fake})
    _plant(
        idc,
        *grant_key(fake),
        {**_record(idc, fake, ana), "expires_at": "2099-01-01T00:00:00+00:00"},
    )
    out = run(engine, revoke(current.grant_id))
    assert (out.status, out.verified) == ("revoked", True)
    assert assigned(idc, ACCOUNTS[0]) == []


def test_a_genuine_record_moved_to_another_key_is_not_ours(
    engine: Engine, idc: dict[str, Any]
) -> None:
    granted = run(engine, grant("ana", ACCOUNTS[:1]))
    genuine = items(idc)[grant_key(granted.grant_id)]
    request = grant("ana", ACCOUNTS[1:])
    target = derive_grant_id(INTEGRATION, request.request_id)
    idc["db"].put_item(TableName=TABLE, Item={**genuine, "pk": {"S": grant_key(target)[0]}})
    outcome = run(engine, request)
    assert (outcome.status, outcome.field) == ("refused", "request_id")
    assert assigned(idc, ACCOUNTS[1]) == []


def test_two_integrations_on_one_permission_set_keep_each_others_assignment(
    idc: dict[str, Any],
) -> None:
    """Two integrations of one connector (one table, one label key) grant the same user the same
    permission set on the same account: revoking one leaves the other its access."""
    doc = catalog_doc(idc, {"read": {"permission_set_arn": idc["ps"], "resources": ACCOUNTS}})
    doc["integrations"]["awst-idc-2"] = doc["integrations"][INTEGRATION]
    engine = Engine(parse_catalog(doc), STORES, NullScheduler(), MemorySink())
    first = run(engine, grant("ana", ACCOUNTS[:1]))
    other = AccessRequest.model_validate(
        {**grant("ana", ACCOUNTS[:1]).model_dump(), "integration": "awst-idc-2"}
    )
    second = run(engine, other)
    assert (first.status, second.status) == ("granted", "granted")
    assert run(engine, revoke(first.grant_id)).status == "revoked"
    assert assigned(idc, ACCOUNTS[0]) == [idc["users"]["ana"]]
    last = AccessRequest(
        request_id="r-last", action="revoke", integration="awst-idc-2", grant_id=second.grant_id
    )
    assert run(engine, last).status == "revoked"
    assert assigned(idc, ACCOUNTS[0]) == []


def test_the_inventory_sync_sends_the_catalogs_permission_sets_users_and_groups(
    engine: Engine, idc: dict[str, Any]
) -> None:
    import io
    import json

    from jitc.inventory import JsonLinesTransport, MemorySyncState

    client("identitystore").create_group(IdentityStoreId=STORE, DisplayName="admins")
    live = run(engine, grant("ana", ACCOUNTS[:1]))
    # Provisioned as an assignment provisions it on AWS (moto then lists its own account).
    idc["sso"].provision_permission_set(
        InstanceArn=idc["instance"],
        PermissionSetArn=idc["ps"],
        TargetType="ALL_PROVISIONED_ACCOUNTS",
    )
    out = io.StringIO()
    with acting_as("sync"):
        report = engine.sync(JsonLinesTransport(out), MemorySyncState())
    assert report.ok, report.as_dict()
    records = [
        r for line in out.getvalue().splitlines()
        for r in json.loads(line)["inventory"].get("records", [])
    ]  # fmt: skip
    names = {(r["kind"], r["name"]) for r in records}
    # The catalog's permission set only (Billing is not in it), its accounts, the store.
    assert ("permission_set", "ReadOnly") in names and ("permission_set", "Billing") not in names
    assert ("account", "123456789012") in names
    assert {("user", "ana"), ("user", "bob"), ("group", "admins")} <= names
    assert ("grant", live.grant_id) in names


def test_a_sweep_racing_a_redelivered_grant_leaves_no_orphaned_assignment(
    engine: Engine, idc: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grant's first delivery made the record and the assignment, then failed (say the
    assignment was still in progress); SQS redelivers it once it expired. The sweep (its own
    function, not serialised by the FIFO group) revokes the expired grant between the
    redelivery's read of the record and its hold: the record becomes a tombstone, and then the
    redelivery puts the assignment back. Nothing ever removes it: the scheduled revoke and
    every later sweep find a tombstone."""
    ana = idc["users"]["ana"]
    request = grant("ana", ACCOUNTS[:1], seconds=2)
    first = run(engine, request)
    assert first.status == "granted" and assigned(idc, ACCOUNTS[0]) == [ana]
    time.sleep(2.2)

    original = Ledger.hold
    raced: list[Any] = []

    def hold_after_a_sweep(self: Ledger, record: Any, account: str) -> None:
        if not raced:
            with acting_as("sweep"):
                raced.append(engine.sweep())
        original(self, record, account)

    monkeypatch.setattr(Ledger, "hold", hold_after_a_sweep)
    redelivered = run(engine, request)
    monkeypatch.setattr(Ledger, "hold", original)
    assert raced[0].revoked == [first.grant_id]
    assert state(idc, first.grant_id) == "tombstone"
    # The scheduled expiry and the next sweep: whatever they do, no access may be left.
    with acting_as("worker"):
        session(engine).revoke(first.grant_id, first.expires_at)
    with acting_as("sweep"):
        engine.sweep()
    assert assigned(idc, ACCOUNTS[0]) == [], (redelivered.status, redelivered.message)


@pytest.mark.parametrize("then", ["redelivery", "revoke"])
def test_a_delivery_that_dies_after_assigning_past_a_revoke_is_cleaned_up_next_time(
    engine: Engine, idc: dict[str, Any], monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    """As above, but the redelivery dies after assigning, before it reads its record again:
    the assignment is there and the record is a tombstone. The next delivery of the grant, or
    the next revoke of it, finds the tombstone listing the account and removes the assignment."""
    from jitc.errors import TargetError
    from jitc.templates.aws_identity_center import AwsIdentityCenterSession

    ana = idc["users"]["ana"]
    request = grant("ana", ACCOUNTS[:1], seconds=2)
    first = run(engine, request)
    assert first.status == "granted"
    time.sleep(2.2)

    original = Ledger.hold
    raced: list[Any] = []

    def hold_after_a_sweep(self: Ledger, record: Any, account: str) -> None:
        if not raced:
            with acting_as("sweep"):
                raced.append(engine.sweep())
        original(self, record, account)

    still_active = AwsIdentityCenterSession._still_active

    def dies(self: Any, record: Any) -> bool:
        raise TargetError("the worker died here")

    monkeypatch.setattr(Ledger, "hold", hold_after_a_sweep)
    monkeypatch.setattr(AwsIdentityCenterSession, "_still_active", dies)
    assert run(engine, request).status == "failed"
    monkeypatch.setattr(Ledger, "hold", original)
    monkeypatch.setattr(AwsIdentityCenterSession, "_still_active", still_active)
    assert raced[0].revoked == [first.grant_id]
    assert state(idc, first.grant_id) == "tombstone" and assigned(idc, ACCOUNTS[0]) == [ana]
    if then == "redelivery":
        again = run(engine, request)
        assert again.status == "refused", again.message
    else:
        with acting_as("worker"):
            result = session(engine).revoke(first.grant_id, first.expires_at)
        assert result.found and result.verified and not result.residual
    assert assigned(idc, ACCOUNTS[0]) == []


def test_a_conflict_from_identity_center_is_retried_never_taken_for_an_assignment(
    engine: Engine, idc: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ConflictException is AWS's "a previous write has not propagated yet; retry with
    backoff" (sso-admin's API model), not "the assignment exists": a grant that met it and
    assigned nothing must not report `granted`, and its retry makes the assignment."""
    from botocore.exceptions import ClientError

    ana = idc["users"]["ana"]
    request = grant("ana", ACCOUNTS[:1])
    conflicts: list[dict[str, Any]] = []

    def conflict_once(self: Any, **params: Any) -> Any:
        conflicts.append(params)
        raise ClientError(
            {"Error": {"Code": "ConflictException", "Message": "retry"}},
            "CreateAccountAssignment",
        )

    from jitc.templates.aws_identity_center import AwsIdentityCenterSession

    original = AwsIdentityCenterSession._assign

    def assign(self: Any, account: str, permission_set: str, user_id: str) -> None:
        if not conflicts:
            real = self.sso.create_account_assignment
            self.sso.create_account_assignment = lambda **p: conflict_once(self, **p)
            try:
                original(self, account, permission_set, user_id)
            finally:
                self.sso.create_account_assignment = real
            return
        original(self, account, permission_set, user_id)

    monkeypatch.setattr(AwsIdentityCenterSession, "_assign", assign)
    first = run(engine, request)
    assert conflicts and first.status == "failed", (first.status, assigned(idc, ACCOUNTS[0]))
    again = run(engine, request)
    assert again.status == "granted" and assigned(idc, ACCOUNTS[0]) == [ana]
