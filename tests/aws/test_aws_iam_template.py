"""The AWS IAM template against moto's IAM: labelled per-grant policies with AWS-enforced expiry,
idempotent grant and revoke, tombstones, overlapping grants, refusals, sweep and inventory."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from awsharness import ACCOUNT, acting_as, client

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.labels import LabelKey, verify_label
from jitc.local import MemorySink, NullScheduler
from jitc.models import AccessRequest, derive_grant_id, request_digest
from jitc.secrets import EnvSecretStore, SecretStores
from jitc.templates.aws_iam import LABEL_KIND, with_expiry

INTEGRATION = "awst-iam"
LABEL_KEY = "aws-iam-test-label-key-0123456789"
STORES = SecretStores({"mem": EnvSecretStore({"label": LABEL_KEY})})
DOC = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::{resource}/*"]},
        {"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "*"},
    ],
}
BOUNDARY = f"arn:aws:iam::{ACCOUNT}:policy/jitc-grant-boundary"
MANAGED_DOC = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "dynamodb:GetItem", "Resource": "*"}],
}


@pytest.fixture
def iam(aws: str) -> Any:
    iam = client("iam")
    trust = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "ec2.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )
    iam.create_policy(PolicyName="jitc-grant-boundary", PolicyDocument=json.dumps(MANAGED_DOC))
    for role in ("dev-ana", "dev-bob"):
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust, PermissionsBoundary=BOUNDARY)
    iam.create_role(RoleName="admin", AssumeRolePolicyDocument=trust)
    iam.create_role(RoleName="dev-free", AssumeRolePolicyDocument=trust)
    iam.create_user(UserName="dev-carl", PermissionsBoundary=BOUNDARY)
    iam.create_policy(PolicyName="TableRead", PolicyDocument=json.dumps(MANAGED_DOC))
    return iam


@pytest.fixture
def engine(iam: Any) -> Engine:
    catalog = parse_catalog(
        {
            "connector": {"label_key": "mem:label"},
            "integrations": {
                INTEGRATION: {
                    "kind": "aws_iam",
                    "connection": {
                        "account_id": ACCOUNT,
                        "permissions_boundary_arn": BOUNDARY,
                        "region": "us-east-1",
                        "allowed_principals": ["dev-*"],
                    },
                    "max_duration": "4h",
                    "permissions": {
                        "s3-read": {"policy": DOC, "resources": ["bucket-a", "bucket-b"]},
                        "table": {
                            "managed_policy_arn": f"arn:aws:iam::{ACCOUNT}:policy/TableRead",
                            "resources": ["all"],
                        },
                        "s3-user": {
                            "policy": DOC,
                            "principal_type": "user",
                            "resources": ["bucket-a"],
                        },
                        "sessions": {
                            "policy": DOC,
                            "revoke_role_sessions": True,
                            "resources": ["bucket-a"],
                        },
                    },
                }
            },
        }
    )
    return Engine(catalog, STORES, NullScheduler(), MemorySink())


def grant(
    permission: str, who: str, resources: list[str], seconds: int = 3600, rid: str | None = None
) -> AccessRequest:
    return AccessRequest.model_validate(
        {
            "request_id": rid or f"iam-{uuid.uuid4().hex[:8]}",
            "action": "grant",
            "integration": INTEGRATION,
            "permission": permission,
            "resources": resources,
            "identity": {"email": f"{who}@example.com", "username": who},
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


def ours(iam: Any) -> dict[str, dict[str, Any]]:
    """Our policies: name -> {description, document, roles, users}."""
    found = {}
    for p in iam.list_policies(Scope="Local", PathPrefix="/jitc/")["Policies"]:
        policy = iam.get_policy(PolicyArn=p["Arn"])["Policy"]
        doc = iam.get_policy_version(PolicyArn=p["Arn"], VersionId=policy["DefaultVersionId"])[
            "PolicyVersion"
        ]["Document"]
        ents = iam.list_entities_for_policy(PolicyArn=p["Arn"])
        found[p["PolicyName"]] = {
            "description": policy.get("Description", ""),
            "document": doc if isinstance(doc, dict) else json.loads(doc),
            "roles": [r["RoleName"] for r in ents["PolicyRoles"]],
            "users": [u["UserName"] for u in ents["PolicyUsers"]],
        }
    return found


def test_grant_attaches_a_labelled_policy_that_aws_ends_at_the_expiry(
    engine: Engine, iam: Any
) -> None:
    request = grant("s3-read", "dev-ana", ["bucket-a", "bucket-b"])
    outcome = run(engine, request)
    assert (outcome.status, outcome.principal) == ("granted", "role/dev-ana")
    gid = derive_grant_id(INTEGRATION, request.request_id)
    policy = ours(iam)[f"jitc-{gid}"]
    assert policy["roles"] == ["dev-ana"] and policy["users"] == []
    allow, deny = policy["document"]["Statement"]
    assert allow["Resource"] == ["arn:aws:s3:::bucket-a/*", "arn:aws:s3:::bucket-b/*"]
    # Fail closed: AWS refuses the Allow after the expiry, with or without the connector.
    expiry = outcome.expires_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert allow["Condition"] == {"DateLessThan": {"aws:CurrentTime": expiry}}
    assert "Condition" not in deny
    # MACed for this policy name (jitc.labels), with no email in clear.
    name = f"jitc-{gid}"
    label = verify_label(LabelKey.from_secret(LABEL_KEY), LABEL_KIND, name, policy["description"])
    assert label is not None and label["digest"] == request_digest(request)
    assert (label["grant_id"], label["integration"], label["principal"]) == (
        gid,
        INTEGRATION,
        "dev-ana",
    )
    assert "@" not in policy["description"]
    assert (
        verify_label(
            LabelKey.from_secret(LABEL_KEY), LABEL_KIND, "jitc-other", policy["description"]
        )
        is None
    )
    # Redelivered: the same policy, still one attachment.
    again = run(engine, request)
    assert again.status == "granted" and again.reissued
    assert list(ours(iam)) == [f"jitc-{gid}"] and ours(iam)[f"jitc-{gid}"]["roles"] == ["dev-ana"]


def test_plan_changes_nothing_and_shows_the_condition(engine: Engine, iam: Any) -> None:
    with acting_as("worker"):
        outcome = engine.plan(grant("s3-read", "dev-ana", ["bucket-a"]))
    assert outcome.status == "planned"
    assert "aws:CurrentTime" in outcome.statements[0] and "dev-ana" in outcome.statements[1]
    assert ours(iam) == {}


def test_a_managed_policy_is_copied_with_the_expiry_never_attached_bare(
    engine: Engine, iam: Any
) -> None:
    outcome = run(engine, grant("table", "dev-bob", ["all"]))
    assert outcome.status == "granted"
    (policy,) = ours(iam).values()
    statement = policy["document"]["Statement"][0]
    assert statement["Action"] == "dynamodb:GetItem"
    assert "aws:CurrentTime" in statement["Condition"]["DateLessThan"]
    attached = iam.list_attached_role_policies(RoleName="dev-bob")["AttachedPolicies"]
    assert [a["PolicyName"] for a in attached] == [next(iter(ours(iam)))]


def test_user_principal(engine: Engine, iam: Any) -> None:
    outcome = run(engine, grant("s3-user", "dev-carl", ["bucket-a"]))
    assert (outcome.status, outcome.principal) == ("granted", "user/dev-carl")
    (policy,) = ours(iam).values()
    assert policy["users"] == ["dev-carl"]
    rid = outcome.grant_id
    assert run(engine, revoke(rid)).status == "revoked"
    assert iam.list_attached_user_policies(UserName="dev-carl")["AttachedPolicies"] == []


@pytest.mark.parametrize(
    ("who", "field"),
    [
        ("admin", "identity.username"),
        ("dev-nobody", "identity.username"),
        ("bad name!", "identity.username"),
    ],
)
def test_refused_principals_change_nothing(engine: Engine, iam: Any, who: str, field: str) -> None:
    request = AccessRequest.model_validate(
        {
            "request_id": f"bad-{uuid.uuid4().hex[:6]}",
            "action": "grant",
            "integration": INTEGRATION,
            "permission": "s3-read",
            "resources": ["bucket-a"],
            "identity": {"email": "x@example.com", **({"username": who} if " " not in who else {})},
            "duration": "1h",
        }
    )
    outcome = run(engine, request)
    assert (outcome.status, outcome.field) == ("refused", field)
    assert [p for p in ours(iam) if not p.startswith("jitc-x-")] == []
    assert iam.list_attached_role_policies(RoleName="admin")["AttachedPolicies"] == []


def test_refused_resource_outside_the_catalog(engine: Engine, iam: Any) -> None:
    outcome = run(engine, grant("s3-read", "dev-ana", ["bucket-z"]))
    assert (outcome.status, outcome.field) == ("refused", "resources[0]")
    assert ours(iam) == {}


def test_revoke_removes_it_twice_safely_and_a_late_grant_is_refused(
    engine: Engine, iam: Any
) -> None:
    request = grant("s3-read", "dev-ana", ["bucket-a"])
    gid = run(engine, request).grant_id
    first = run(engine, revoke(gid))
    assert (first.status, first.verified, first.principal) == ("revoked", True, "role/dev-ana")
    assert iam.list_attached_role_policies(RoleName="dev-ana")["AttachedPolicies"] == []
    assert list(ours(iam)) == [f"jitc-x-{gid}"]
    tombstone = ours(iam)[f"jitc-x-{gid}"]
    assert tombstone["roles"] == [] and tombstone["document"]["Statement"][0]["Effect"] == "Deny"
    second = run(engine, revoke(gid))
    assert second.status == "revoked" and second.message and "nothing to revoke" in second.message
    late = run(engine, request)
    assert (late.status, late.field) == ("refused", "request_id")
    assert iam.list_attached_role_policies(RoleName="dev-ana")["AttachedPolicies"] == []


def test_revoke_before_grant(engine: Engine, iam: Any) -> None:
    request = grant("s3-read", "dev-ana", ["bucket-a"])
    gid = derive_grant_id(INTEGRATION, request.request_id)
    assert run(engine, revoke(gid)).status == "revoked"
    assert run(engine, request).status == "refused"
    assert iam.list_attached_role_policies(RoleName="dev-ana")["AttachedPolicies"] == []


def test_overlapping_grants_end_separately(engine: Engine, iam: Any) -> None:
    a = run(engine, grant("s3-read", "dev-ana", ["bucket-a"]))
    b = run(engine, grant("s3-read", "dev-ana", ["bucket-a"]))
    assert a.grant_id != b.grant_id
    assert run(engine, revoke(a.grant_id)).status == "revoked"
    attached = [
        p["PolicyName"]
        for p in iam.list_attached_role_policies(RoleName="dev-ana")["AttachedPolicies"]
    ]
    assert attached == [f"jitc-{b.grant_id}"]


def test_revoke_can_end_older_sessions_of_the_role(engine: Engine, iam: Any) -> None:
    gid = run(engine, grant("sessions", "dev-ana", ["bucket-a"])).grant_id
    before = datetime.now(UTC) - timedelta(seconds=1)
    assert run(engine, revoke(gid)).status == "revoked"
    # A managed policy under the connector's path, attached like a grant; no inline policy.
    assert iam.list_role_policies(RoleName="dev-ana")["PolicyNames"] == []
    attached = iam.list_attached_role_policies(RoleName="dev-ana")["AttachedPolicies"]
    assert [p["PolicyName"].startswith("jitc-s-dev-ana-") for p in attached] == [True]
    arn = attached[0]["PolicyArn"]
    assert ":policy/jitc/jitc-s-dev-ana-" in arn
    version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    doc = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
    statement = (doc if isinstance(doc, dict) else json.loads(doc))["Statement"][0]
    assert (statement["Effect"], statement["Action"]) == ("Deny", "*")
    cutoff = datetime.strptime(
        statement["Condition"]["DateLessThan"]["aws:TokenIssueTime"], "%Y-%m-%dT%H:%M:%SZ"
    )
    assert cutoff.replace(tzinfo=UTC) >= before.replace(microsecond=0)
    # Another revoke with a later cutoff replaces it: one such policy per role, whatever the
    # number of revokes.
    time.sleep(1.1)
    gid = run(engine, grant("sessions", "dev-ana", ["bucket-a"])).grant_id
    assert run(engine, revoke(gid)).status == "revoked"
    again = iam.list_attached_role_policies(RoleName="dev-ana")["AttachedPolicies"]
    assert len(again) == 1 and again[0]["PolicyArn"] != arn
    assert arn not in {p["Arn"] for p in iam.list_policies(Scope="Local")["Policies"]}


def test_sweep_revokes_expired_grants_only(engine: Engine, iam: Any) -> None:
    short = run(engine, grant("s3-read", "dev-ana", ["bucket-a"], seconds=2))
    long = run(engine, grant("s3-read", "dev-bob", ["bucket-a"], seconds=3600))
    time.sleep(2.2)
    with acting_as("sweep"):
        report = engine.sweep()
    assert report.revoked == [short.grant_id] and report.ok
    names = set(ours(iam))
    assert f"jitc-{long.grant_id}" in names and f"jitc-{short.grant_id}" not in names
    # Inventory is read by the operator's CLI, not by the deployed functions.
    integration = engine.catalog.integration(INTEGRATION)
    inventory = integration.template.open(
        INTEGRATION, integration.connection, None, label_key=LabelKey.from_secret(LABEL_KEY)
    ).inventory()
    assert inventory["roles"] == ["dev-ana", "dev-bob", "dev-free"]
    assert inventory["users"] == ["dev-carl"]


def test_with_expiry_keeps_an_earlier_deadline_and_ands_other_conditions() -> None:
    doc = {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "s3:*",
                "Resource": "*",
                "Condition": {
                    "DateLessThan": {"aws:CurrentTime": "2000-01-01T00:00:00Z"},
                    "Bool": {"aws:SecureTransport": "true"},
                },
            }
        ]
    }
    out = with_expiry(doc, datetime(2030, 1, 1, tzinfo=UTC))
    assert out["Statement"][0]["Condition"] == {
        "DateLessThan": {"aws:CurrentTime": "2000-01-01T00:00:00Z"},
        "Bool": {"aws:SecureTransport": "true"},
    }
    out = with_expiry(
        {"Statement": {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}},
        datetime(2030, 1, 1, tzinfo=UTC),
    )
    assert out["Statement"][0]["Condition"] == {
        "DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}
    }


def test_a_principal_without_the_connectors_boundary_gets_nothing(engine: Engine, iam: Any) -> None:
    outcome = run(engine, grant("s3-read", "dev-free", ["bucket-a"]))
    assert (outcome.status, outcome.field) == ("refused", "identity.username")
    assert "permissions boundary" in (outcome.message or "")
    assert [p for p in ours(iam) if not p.startswith("jitc-x-")] == []
    assert iam.list_attached_role_policies(RoleName="dev-free")["AttachedPolicies"] == []


def _catalog_with(permission: dict[str, Any]) -> dict[str, Any]:
    return {
        "connector": {"label_key": "mem:label"},
        "integrations": {
            INTEGRATION: {
                "kind": "aws_iam",
                "connection": {
                    "account_id": ACCOUNT,
                    "permissions_boundary_arn": BOUNDARY,
                    "allowed_principals": ["dev-*"],
                },
                "permissions": {"p": {"resources": ["r"], **permission}},
            }
        },
    }


def _allow(action: Any, key: str = "Action") -> dict[str, Any]:
    return {"policy": {"Statement": [{"Effect": "Allow", key: action, "Resource": "*"}]}}


@pytest.mark.parametrize(
    "permission",
    [
        _allow("iam:*"),
        _allow(["s3:GetObject", "IAM:PassRole"]),  # IAM matches actions case-insensitively
        _allow("sts:AssumeRole"),
        _allow("sts:Assume*"),
        _allow("iam:Put*Policy"),
        _allow("*"),
        _allow("i?m:Create*"),
        _allow("s3:GetObject", key="NotAction"),
        {"managed_policy_arn": "arn:aws:iam::aws:policy/AdministratorAccess"},
    ],
)
def test_a_permission_that_could_hand_out_more_than_itself_needs_to_say_so(
    permission: dict[str, Any],
) -> None:
    from jitc.errors import CatalogError

    with pytest.raises(CatalogError, match="privileged"):
        parse_catalog(_catalog_with(permission))
    parse_catalog(_catalog_with({**permission, "privileged": True}))


def test_plain_read_permissions_need_no_privilege_mark() -> None:
    for action in ("s3:GetObject", "iam:GetRole", "iam:List*", "ec2:Describe*"):
        parse_catalog(_catalog_with(_allow(action)))


def test_a_managed_policy_that_grew_escalating_rights_is_refused_at_grant(
    engine: Engine, iam: Any
) -> None:
    arn = f"arn:aws:iam::{ACCOUNT}:policy/TableRead"
    grown = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["dynamodb:GetItem", "iam:PassRole"],
                       "Resource": "*"}],
    }  # fmt: skip
    iam.create_policy_version(PolicyArn=arn, PolicyDocument=json.dumps(grown), SetAsDefault=True)
    outcome = run(engine, grant("table", "dev-bob", ["all"]))
    assert (outcome.status, outcome.field) == ("refused", "permission")
    assert iam.list_attached_role_policies(RoleName="dev-bob")["AttachedPolicies"] == []


def _cutoff(condition: Any, expires: datetime) -> Any:
    doc = {"Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
                          "Condition": {"DateLessThan": condition}}]}  # fmt: skip
    return with_expiry(doc, expires)["Statement"][0]["Condition"]["DateLessThan"]


def test_with_expiry_never_widens_an_existing_cutoff() -> None:
    deadline = datetime(2030, 1, 1, 0, 30, tzinfo=UTC)
    # A list is satisfied by any of its values: later ones would have widened the grant.
    assert _cutoff({"aws:CurrentTime": ["2031-01-01T00:00:00Z", "2032-01-01T00:00:00Z"]},
                   deadline) == {"aws:CurrentTime": "2030-01-01T00:30:00Z"}  # fmt: skip
    # 01:00 at +02:00 is 23:00 UTC the day before: earlier, although it sorts later as text.
    assert _cutoff({"aws:CurrentTime": "2030-01-01T01:00:00+02:00"}, deadline) == {
        "aws:CurrentTime": "2029-12-31T23:00:00Z"
    }
    assert _cutoff({"aws:CurrentTime": ["2031-01-01T00:00:00Z", "2029-06-01T00:00:00Z"]},
                   deadline) == {"aws:CurrentTime": "2029-06-01T00:00:00Z"}  # fmt: skip
    # Condition keys are case-insensitive: another spelling must not survive beside ours.
    assert _cutoff({"AWS:CurrentTime": "2099-01-01T00:00:00Z"}, deadline) == {
        "aws:CurrentTime": "2030-01-01T00:30:00Z"
    }
    assert _cutoff({"aws:CurrentTime": "1893456000"}, deadline) == {  # epoch 2030-01-01
        "aws:CurrentTime": "2030-01-01T00:00:00Z"
    }
    from jitc.errors import Refused

    with pytest.raises(Refused):
        _cutoff({"aws:CurrentTime": "next tuesday"}, deadline)
    with pytest.raises(Refused):
        _cutoff("2000-01-01T00:00:00Z", deadline)  # a DateLessThan that is no map


def test_arns_are_in_the_accounts_partition() -> None:
    for partition in ("aws-cn", "aws-us-gov"):
        doc = _catalog_with(_allow("s3:GetObject"))
        connection = doc["integrations"][INTEGRATION]["connection"]
        connection["permissions_boundary_arn"] = BOUNDARY.replace("arn:aws:", f"arn:{partition}:")
        engine = Engine(parse_catalog(doc), STORES, NullScheduler(), MemorySink())
        request = AccessRequest.model_validate(
            {"request_id": "part-1", "action": "grant", "integration": INTEGRATION,
             "permission": "p", "resources": ["r"], "duration": "1h",
             "identity": {"email": "a@example.com", "username": "dev-ana"}}
        )  # fmt: skip
        steps = engine.plan(request).statements
        assert steps[0].startswith(f"create policy arn:{partition}:iam::{ACCOUNT}:policy/jitc/")


def test_batches_share_one_session_and_its_clients(
    engine: Engine, iam: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    from jitc.templates import aws_session

    made: list[int] = []
    original = boto3.session.Session.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        made.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(boto3.session.Session, "__init__", counting)
    # Reset once counting: a thread an earlier test left running may make the session first.
    aws_session.reset()
    for _ in range(3):  # three batches
        assert run(engine, grant("s3-read", "dev-ana", ["bucket-a"])).status == "granted"
    assert len(made) == 1
    assert aws_session.client("iam", "us-east-1").meta.config.retries["mode"] == "standard"


MEMBER = "111111111111"


def test_a_member_account_is_reached_through_its_role_with_the_external_id(aws: str) -> None:
    from awsharness import REQUESTS

    from jitc.templates import aws_session

    aws_session.reset()
    role_arn = f"arn:aws:iam::{MEMBER}:role/jitc-connector"
    sts = client("sts")
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="setup", ExternalId="ext-1")[
        "Credentials"
    ]
    member = boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"], region_name="us-east-1",
    ).client("iam")  # fmt: skip
    boundary = f"arn:aws:iam::{MEMBER}:policy/jitc-grant-boundary"
    member.create_policy(PolicyName="jitc-grant-boundary", PolicyDocument=json.dumps(MANAGED_DOC))
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
             "Principal": {"Service": "ec2.amazonaws.com"}}]}  # fmt: skip
    member.create_role(
        RoleName="dev-ana", AssumeRolePolicyDocument=json.dumps(trust), PermissionsBoundary=boundary
    )
    doc = _catalog_with(_allow("s3:GetObject"))
    connection = doc["integrations"][INTEGRATION]["connection"]
    connection.update(account_id=MEMBER, permissions_boundary_arn=boundary,
                      role_arn=role_arn, external_id="ext-1")  # fmt: skip
    engine = Engine(parse_catalog(doc), STORES, NullScheduler(), MemorySink())
    start = len(REQUESTS)
    request = AccessRequest.model_validate(
        {"request_id": "member-1", "action": "grant", "integration": INTEGRATION,
         "permission": "p", "resources": ["r"], "duration": "1h",
         "identity": {"email": "a@example.com", "username": "dev-ana"}}
    )  # fmt: skip
    assert run(engine, request).status == "granted"
    attached = member.list_attached_role_policies(RoleName="dev-ana")["AttachedPolicies"]
    assert [a["PolicyArn"].split(":")[4] for a in attached] == [MEMBER]
    # The connector's own account holds nothing of it.
    assert client("iam").list_policies(Scope="Local", PathPrefix="/jitc/")["Policies"] == []
    assumed = [r for r in REQUESTS[start:] if r.operation == "AssumeRole"]
    assert [(r.params["RoleArn"], r.params["ExternalId"]) for r in assumed] == [(role_arn, "ext-1")]
    aws_session.reset()


@pytest.mark.parametrize(
    "action",
    [
        "iam:DeleteUserPermissionsBoundary",
        "iam:PutUserPermissionsBoundary",
        "iam:DeleteRolePermissionsBoundary",
        "sts:AssumeRoot",
        "iam:UpdateAccessKey",
        "iam:CreateServiceSpecificCredential",
        "iam:DetachRolePolicy",
        "iam:TagRole",
        "iam:G*",
        "sso:PutInlinePolicyToPermissionSet",
        "lambda:UpdateFunctionCode",
    ],
)
def test_lifting_a_boundary_or_minting_credentials_needs_the_mark(action: str) -> None:
    from jitc.templates.aws_iam import escalations

    assert escalations(_allow(action)["policy"]) == [f"Statement[0] allows {action}"]


def test_every_iam_and_sts_action_that_is_not_a_read_needs_the_mark() -> None:
    """Against the service models, so an action added to IAM later is judged the same way.
    IAM's reads go by verb; STS's are named (its "Get" verbs mint credentials and tokens), so
    an STS action added later needs the mark until it is judged a read."""
    import botocore.session

    from jitc.templates.aws_iam import escalations

    session = botocore.session.get_session()
    iam_reads = ("Get", "List", "Generate", "Simulate")
    sts_reads = {"GetCallerIdentity", "GetAccessKeyInfo", "DecodeAuthorizationMessage"}
    for service in ("iam", "sts"):
        for operation in session.get_service_model(service).operation_names:
            flagged = escalations(_allow(f"{service}:{operation}")["policy"])
            read = operation.startswith(iam_reads) if service == "iam" else operation in sts_reads
            assert bool(flagged) != read, (service, operation)
    # Wildcards: only what surely names reads passes.
    for action, read in [
        ("sts:Decode*", True),
        ("sts:GetCallerIdentity", True),
        ("STS:getcalleridentity", True),
        ("sts:GetCaller*", False),
        ("sts:Get*", False),
        ("sts:GetSessionToken", False),
        ("sts:GetFederationToken", False),
        ("s?s:GetWebIdentityToken", False),
    ]:
        assert (not escalations(_allow(action)["policy"])) == read, action


def test_planted_session_cutoffs_are_never_attached_nor_deleted(engine: Engine, iam: Any) -> None:
    """Someone who can create policies under the connector's path plants `jitc-s-<role>-<t>`
    for the seconds ahead (allowing everything) and an older one attached to the role: the
    revoke must neither attach the planted ones nor detach and delete the old one."""
    gid = run(engine, grant("sessions", "dev-ana", ["bucket-a"])).grant_id
    everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*",
                  "Resource": "*"}]}  # fmt: skip
    now = int(time.time())
    planted = [f"jitc-s-dev-ana-{t}" for t in range(now, now + 4)]
    for name in [*planted, "jitc-s-dev-ana-1000"]:
        iam.create_policy(PolicyName=name, Path="/jitc/", PolicyDocument=json.dumps(everything),
                          Description="jit-connector: denies sessions of role dev-ana")  # fmt: skip
    old = f"arn:aws:iam::{ACCOUNT}:policy/jitc/jitc-s-dev-ana-1000"
    iam.attach_role_policy(RoleName="dev-ana", PolicyArn=old)
    outcome = run(engine, revoke(gid))
    attached = {
        p["PolicyName"]
        for p in iam.list_attached_role_policies(RoleName="dev-ana")["AttachedPolicies"]
    }
    assert not attached & set(planted)
    assert "jitc-s-dev-ana-1000" in attached  # the old, foreign one is left where it was
    if outcome.status == "failed":  # the planted name was hit: retried later, under a new name
        assert "not created by this connector" in str(outcome.message)
    # Access itself is gone either way: the grant's policy is detached before the cutoff.
    assert ours(iam).get(f"jitc-{gid}", {"roles": []})["roles"] == []


def test_a_genuine_label_copied_onto_another_grants_policy_is_not_ours(
    engine: Engine, iam: Any
) -> None:
    first = run(engine, grant("s3-read", "dev-ana", ["bucket-a"]))
    label = ours(iam)[f"jitc-{first.grant_id}"]["description"]
    request = grant("s3-read", "dev-bob", ["bucket-a"])
    planned = f"jitc-{derive_grant_id(INTEGRATION, request.request_id)}"
    iam.create_policy(PolicyName=planned, Path="/jitc/", Description=label,
                      PolicyDocument=json.dumps(MANAGED_DOC))  # fmt: skip
    outcome = run(engine, request)
    assert outcome.status == "refused" and "not created by this connector" in str(outcome.message)
    assert ours(iam)[planned]["roles"] == []  # never attached


def test_the_inventory_sync_sends_principals_in_scope_and_no_policy_document(
    engine: Engine, iam: Any
) -> None:
    import io

    from jitc.inventory import JsonLinesTransport, MemorySyncState

    live = run(engine, grant("s3-read", "dev-ana", ["bucket-a"], seconds=3600))
    out = io.StringIO()
    with acting_as("sync"):
        report = engine.sync(JsonLinesTransport(out), MemorySyncState())
    assert report.ok, report.as_dict()
    records = [
        r for line in out.getvalue().splitlines()
        for r in json.loads(line)["inventory"].get("records", [])
    ]  # fmt: skip
    names = {(r["kind"], r["name"]) for r in records}
    # In scope (allowed_principals dev-*) only; the connector's own grant policy and its grant.
    assert {("role", "dev-ana"), ("role", "dev-bob"), ("role", "dev-free")} <= names
    assert ("user", "dev-carl") in names and ("role", "admin") not in names
    assert ("grant", live.grant_id) in names and ("policy", f"jitc-{live.grant_id}") in names
    assert all(r["arn"].startswith(f"arn:aws:iam::{ACCOUNT}:") for r in records if "arn" in r)
    # Names and ARNs only: no policy document, no trust policy leaves.
    assert "Statement" not in out.getvalue() and "s3:GetObject" not in out.getvalue()


def test_a_grant_whose_policy_cannot_fit_iams_quota_is_refused_not_retried(iam: Any) -> None:
    """A request may name up to 32 resources of up to 255 characters, and the catalog's
    document repeats each: the rendered policy then exceeds IAM's 6,144 characters, CreatePolicy
    answers LimitExceeded on every delivery, and the message is retried until it reaches the
    dead-letter queue (alarmed as a failure), where a request that can never succeed is a
    refusal, checked before anything is made."""
    buckets = [f"bucket-{i:02d}-" + "x" * 180 for i in range(32)]
    catalog = parse_catalog(
        {
            "connector": {"label_key": "mem:label"},
            "integrations": {
                INTEGRATION: {
                    "kind": "aws_iam",
                    "connection": {
                        "account_id": ACCOUNT,
                        "permissions_boundary_arn": BOUNDARY,
                        "region": "us-east-1",
                        "allowed_principals": ["dev-*"],
                    },
                    "max_duration": "4h",
                    "permissions": {"s3-read": {"policy": DOC, "resources": buckets}},
                }
            },
        }
    )
    engine = Engine(catalog, STORES, NullScheduler(), MemorySink())
    outcome = run(engine, grant("s3-read", "dev-ana", buckets))
    assert (outcome.status, outcome.field) == ("refused", "resources"), outcome.message
    assert ours(iam) == {}


@pytest.mark.parametrize("action", ["sts:GetWebIdentityToken", "sts:Get*Token"])
def test_minting_a_token_used_outside_aws_needs_the_mark(action: str) -> None:
    """STS "Get" verbs are judged reads, but GetWebIdentityToken (outbound identity federation)
    mints a JWT that the external service accepts until the token's own expiry: after the
    revoke, and outside any aws:CurrentTime condition. The module docstring promises that an
    action minting credentials needs `privileged: true`."""
    from jitc.templates.aws_iam import escalations

    assert escalations(_allow(action)["policy"]) == [f"Statement[0] allows {action}"]


def test_a_grant_policy_hung_on_a_group_is_taken_off_at_the_revoke(
    engine: Engine, iam: Any
) -> None:
    """Whoever may attach policies to a group can hang a grant's policy there (its members then
    hold the grant); IAM deletes no policy still attached anywhere (DeleteConflict, which the
    fake enforces too), so a revoke that left the group would fail for ever."""
    gid = run(engine, grant("s3-read", "dev-ana", ["bucket-a"])).grant_id
    arn = next(p["Arn"] for p in iam.list_policies(Scope="Local")["Policies"]
               if p["PolicyName"] == f"jitc-{gid}")  # fmt: skip
    iam.create_group(GroupName="everyone")
    iam.attach_group_policy(GroupName="everyone", PolicyArn=arn)
    done = run(engine, revoke(gid))
    assert (done.status, done.verified, done.residual) == ("revoked", True, [])
    assert iam.list_attached_group_policies(GroupName="everyone")["AttachedPolicies"] == []
    assert f"jitc-{gid}" not in ours(iam)


def test_the_fake_refuses_to_delete_an_attached_policy_as_iam_does(iam: Any) -> None:
    arn = iam.create_policy(PolicyName="attached", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                                  "Resource": "*"}]}))["Policy"]["Arn"]  # fmt: skip
    iam.create_group(GroupName="holders")
    iam.attach_group_policy(GroupName="holders", PolicyArn=arn)
    with pytest.raises(iam.exceptions.DeleteConflictException):
        iam.delete_policy(PolicyArn=arn)
    iam.detach_group_policy(GroupName="holders", PolicyArn=arn)
    iam.delete_policy(PolicyArn=arn)


def test_an_older_session_cutoff_hung_on_a_group_is_taken_off_before_it_goes(
    engine: Engine, iam: Any
) -> None:
    """The same for the connector's session cutoffs: a later revoke replaces the older one, and
    would fail on IAM's DeleteConflict at every revoke of that role if the older one stayed on a
    group someone hung it on."""
    gid = run(engine, grant("sessions", "dev-ana", ["bucket-a"])).grant_id
    assert run(engine, revoke(gid)).status == "revoked"
    [older] = iam.list_attached_role_policies(RoleName="dev-ana")["AttachedPolicies"]
    iam.create_group(GroupName="cutoffs")
    iam.attach_group_policy(GroupName="cutoffs", PolicyArn=older["PolicyArn"])
    time.sleep(1.1)  # a later cutoff second, so a later policy name
    gid = run(engine, grant("sessions", "dev-ana", ["bucket-a"])).grant_id
    assert run(engine, revoke(gid)).status == "revoked"
    assert iam.list_attached_group_policies(GroupName="cutoffs")["AttachedPolicies"] == []
    assert older["PolicyArn"] not in {
        p["Arn"] for p in iam.list_policies(Scope="Local")["Policies"]
    }


def test_a_renewed_role_keeps_one_client_and_closes_the_one_before_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each renewal of an assumed role's credentials makes a client (its own connections and
    ~10 MB of endpoint data): the one before last is closed, so a process that runs for days
    holds two, not one per hour."""
    from datetime import UTC, datetime, timedelta

    from jitc.templates import aws_session

    made: list[Any] = []

    class Client:
        closed = False

        def close(self) -> None:
            self.closed = True

    class Session:
        def __init__(self, **_: Any) -> None:
            """Credentials taken and ignored, as the client below needs none."""

        def client(self, *_: Any, **__: Any) -> Client:
            made.append(Client())
            return made[-1]

    class Sts:
        def assume_role(self, **_: Any) -> dict[str, Any]:
            # Within five minutes of its end: every call renews it.
            expiry = datetime.now(UTC) + timedelta(minutes=1, microseconds=len(made))
            keys = {"AccessKeyId": "a", "SecretAccessKey": "s", "SessionToken": "t"}
            return {"Credentials": {**keys, "Expiration": expiry}}

    aws_session.reset()
    monkeypatch.setattr(aws_session, "client", lambda service, region: Sts())
    monkeypatch.setattr(boto3.session, "Session", Session)
    try:
        got = [
            aws_session.assumed_client("iam", None, "arn:aws:iam::1:role/r", "x") for _ in range(6)
        ]
        assert got == made and len(made) == 6
        assert [c.closed for c in made] == [True, True, True, True, False, False]
        assert len(aws_session._assumed_clients) == 1
    finally:
        aws_session.reset()
