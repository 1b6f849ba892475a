"""The IAM Identity Center template against moto: account assignments of a permission set to a
user found by email, the permission set's tags as the ledger, never touching assignments the
connector did not make, tombstones, overlapping grants, sweep and inventory."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from awsharness import REQUESTS, acting_as, client

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.local import MemorySink, NullScheduler
from jitc.models import AccessRequest, derive_grant_id

INTEGRATION = "awst-idc"
STORE = "d-1234567890"
ACCOUNTS = ["111111111111", "222222222222"]


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
        "sso": sso,
        "instance": instance,
        "ps": ps["PermissionSet"]["PermissionSetArn"],
        "other": other["PermissionSet"]["PermissionSetArn"],
        "users": users,
    }


@pytest.fixture
def engine(idc: dict[str, Any]) -> Engine:
    catalog = parse_catalog(
        {
            "integrations": {
                INTEGRATION: {
                    "kind": "aws_identity_center",
                    "connection": {
                        "instance_arn": idc["instance"],
                        "identity_store_id": STORE,
                        "region": "us-east-1",
                    },
                    "max_duration": "8h",
                    "permissions": {
                        "read": {"permission_set_arn": idc["ps"], "resources": ACCOUNTS}
                    },
                }
            }
        }
    )
    return Engine(catalog, None, NullScheduler(), MemorySink())  # type: ignore[arg-type]


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
    got = idc["sso"].list_tags_for_resource(InstanceArn=idc["instance"], ResourceArn=idc["ps"])[
        "Tags"
    ]
    return {t["Key"]: t["Value"] for t in got}


def test_grant_assigns_the_users_permission_set_labelled_in_its_tags(
    engine: Engine, idc: dict[str, Any]
) -> None:
    request = grant("ana", ACCOUNTS)
    outcome = run(engine, request)
    ana = idc["users"]["ana"]
    assert (outcome.status, outcome.principal) == ("granted", f"user/{ana}")
    assert assigned(idc, ACCOUNTS[0]) == [ana] and assigned(idc, ACCOUNTS[1]) == [ana]
    gid = derive_grant_id(INTEGRATION, request.request_id)
    ledger = tags(idc)
    assert set(ledger) == {f"jitc:{gid}:{a}" for a in ACCOUNTS}
    assert (
        ledger[f"jitc:{gid}:{ACCOUNTS[0]}"]
        == f"active {outcome.expires_at.isoformat()} {ana} {INTEGRATION}"
    )
    again = run(engine, request)
    assert again.status == "granted" and again.reissued
    assert assigned(idc, ACCOUNTS[0]) == [ana] and len(tags(idc)) == 2


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
    assert tags(idc) == {}


def test_plan_has_no_side_effects(engine: Engine, idc: dict[str, Any]) -> None:
    with acting_as("worker"):
        outcome = engine.plan(grant("ana", ACCOUNTS))
    assert outcome.status == "planned" and len(outcome.statements) == 3
    assert assigned(idc, ACCOUNTS[0]) == [] and tags(idc) == {}


def test_revoke_twice_before_and_after_and_overlapping(engine: Engine, idc: dict[str, Any]) -> None:
    ana = idc["users"]["ana"]
    first_req = grant("ana", ACCOUNTS[:1])
    first = run(engine, first_req)
    second = run(engine, grant("ana", ACCOUNTS))
    # Revoking the first keeps the assignment the second still needs.
    out = run(engine, revoke(first.grant_id))
    assert (out.status, out.verified) == ("revoked", True)
    assert assigned(idc, ACCOUNTS[0]) == [ana] and assigned(idc, ACCOUNTS[1]) == [ana]
    # The grant's own tag became its tombstone, in place.
    assert tags(idc)[f"jitc:{first.grant_id}:{ACCOUNTS[0]}"].startswith("tombstone ")
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
    assert not [v for v in tags(idc).values() if v.startswith("active ")]


def test_sweep_and_inventory(engine: Engine, idc: dict[str, Any]) -> None:
    short = run(engine, grant("ana", ACCOUNTS[:1], seconds=2))
    long = run(engine, grant("bob", ACCOUNTS[1:], seconds=3600))
    time.sleep(2.2)
    with acting_as("sweep"):
        report = engine.sweep()
    assert report.revoked == [short.grant_id] and report.ok
    assert assigned(idc, ACCOUNTS[0]) == [] and assigned(idc, ACCOUNTS[1]) == [idc["users"]["bob"]]
    assert any(k.startswith(f"jitc:{long.grant_id}:") for k in tags(idc))
    integration = engine.catalog.integration(INTEGRATION)
    # Inventory is read by the operator's CLI, not by the deployed functions.
    session = integration.template.open(INTEGRATION, integration.connection, None)
    inventory = session.inventory()
    assert inventory["permission_sets"] == ["Billing", "ReadOnly"]
    assert inventory["users"] == ["ana", "bob"]


def _fill(idc: dict[str, Any], room: int) -> None:
    """The company's own tags on the permission set, leaving `room` of AWS's 50."""
    have = len(tags(idc))
    own = [{"Key": f"team-{i}", "Value": "x"} for i in range(50 - have - room)]
    for start in range(0, len(own), 25):
        idc["sso"].tag_resource(
            InstanceArn=idc["instance"], ResourceArn=idc["ps"], Tags=own[start : start + 25]
        )
    assert len(tags(idc)) == 50 - room


def test_a_full_tag_ledger_never_keeps_an_assignment_alive(
    engine: Engine, idc: dict[str, Any]
) -> None:
    request = grant("ana", ACCOUNTS)
    granted = run(engine, request)
    assert granted.status == "granted"
    _fill(idc, room=0)
    out = run(engine, revoke(granted.grant_id))
    assert (out.status, out.verified) == ("revoked", True)
    assert assigned(idc, ACCOUNTS[0]) == [] and assigned(idc, ACCOUNTS[1]) == []
    ledger = tags(idc)
    assert len(ledger) == 50
    # The grant's tags became its tombstone in place: a late redelivery is still refused.
    assert not [v for v in ledger.values() if v.startswith("active ")]
    late = run(engine, request)
    assert (late.status, late.field) == ("refused", "request_id")
    assert assigned(idc, ACCOUNTS[0]) == []


def test_a_revoke_racing_a_grant_of_the_same_assignment_leaves_the_grant_its_access(
    engine: Engine, idc: dict[str, Any]
) -> None:
    ana = idc["users"]["ana"]
    first = run(engine, grant("ana", ACCOUNTS[:1]))
    second_request = grant("ana", ACCOUNTS[:1])
    integration = engine.catalog.integration(INTEGRATION)
    revoker = integration.template.open(INTEGRATION, integration.connection, None)
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
    ledger = tags(idc)
    assert ledger[f"jitc:{raced[0].grant_id}:{ACCOUNTS[0]}"].startswith("active ")
    assert ledger[f"jitc:{first.grant_id}:{ACCOUNTS[0]}"].startswith("tombstone ")


def test_only_the_catalogs_permission_sets_are_read_tagged_or_assigned(
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


def test_a_revoke_of_a_grant_never_made_tags_one_permission_set_and_still_stops_it(
    idc: dict[str, Any],
) -> None:
    permissions = {
        "read": {"permission_set_arn": idc["ps"], "resources": ACCOUNTS},
        "billing": {"permission_set_arn": idc["other"], "resources": ACCOUNTS},
    }
    catalog = parse_catalog(
        {
            "integrations": {
                INTEGRATION: {
                    "kind": "aws_identity_center",
                    "connection": {
                        "instance_arn": idc["instance"],
                        "identity_store_id": STORE,
                        "region": "us-east-1",
                    },
                    "max_duration": "8h",
                    "permissions": permissions,
                }
            }
        }
    )
    engine = Engine(catalog, None, NullScheduler(), MemorySink())  # type: ignore[arg-type]

    def tag_count(arn: str) -> int:
        got = idc["sso"].list_tags_for_resource(InstanceArn=idc["instance"], ResourceArn=arn)
        return len(got["Tags"])

    late = {
        name: AccessRequest.model_validate(
            {**grant("ana", ACCOUNTS[:1]).model_dump(), "permission": name}
        )
        for name in permissions
    }
    for request in late.values():
        assert (
            run(engine, revoke(derive_grant_id(INTEGRATION, request.request_id))).status
            == "revoked"
        )
    # Two revokes of unmade grants: two tags in all, not two on every permission set.
    assert sorted([tag_count(idc["ps"]), tag_count(idc["other"])]) == [0, 2]
    for request in late.values():
        assert run(engine, request).status == "refused"
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
