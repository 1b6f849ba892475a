"""Least privilege: every AWS call a function's code made during the AWS tests is allowed by that
function's policy in the Terraform module, and no policy grants a wildcard action, or a
wildcard resource beyond the few actions AWS offers no resource for."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import awsharness
import hcl2
from tfmodule import SOURCE_DOCUMENT

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "infra" / "terraform" / "aws"
FUNCTIONS = ("intake", "worker", "sweep", "sync", "rotation")
# The secrets the rotation function rotates in the tests (tests/aws/test_aws_rotation.py), and
# that function's ARN: the secrets' AllowRotationLambdaArn there.
ROTATED = ("jitc/pg-admin",)
ROTATION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:jitc-rotation"
# AWS defines no resource for these: "*" is the only possible scope.
UNSCOPABLE = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "iam:ListPolicies",
    "iam:ListRoles",
    "iam:ListUsers",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
}


def _unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(block: Any) -> list[dict[str, Any]]:
    """Every statement of a policy document, static or inside a `dynamic "statement"`."""
    found: list[dict[str, Any]] = []
    if isinstance(block, dict):
        if "actions" in block:
            found.append(block)
        for value in block.values():
            found += _statements(value)
    elif isinstance(block, list):
        for item in block:
            found += _statements(item)
    return found


def policies() -> dict[str, list[dict[str, Any]]]:
    docs: dict[str, list[dict[str, Any]]] = {}
    sources: dict[str, str] = {}
    for path in MODULE.glob("*.tf"):
        parsed = hcl2.load(path.open())
        for data in parsed.get("data", []):
            for kind, named in data.items():
                if _unquote(kind) != "aws_iam_policy_document":
                    continue
                for name, body in named.items():
                    sources[_unquote(name)] = str(body.get("source_policy_documents", ""))
                    docs[_unquote(name)] = [
                        {
                            "actions": [_unquote(a) for a in s["actions"]],
                            "resources": [_unquote(r) for r in _as_list(s.get("resources", []))],
                            "effect": _unquote(s.get("effect", "Allow")),
                        }
                        for s in _statements(body)
                    ]
    # The statements of the documents a document takes in are its own (tfmodule.Module.policy).
    for name, taken in sources.items():
        docs[name] += [s for source in SOURCE_DOCUMENT.findall(taken) for s in docs[source]]
    return docs


@dataclass
class Record:
    calls: dict[str, set[str]]
    requests: list[awsharness.Request]
    secret_refs: set[str]


@cache
def recorded() -> Record:
    calls = awsharness.CALLS
    complete = (
        all(calls.get(f) for f in FUNCTIONS)
        and any(c.startswith("sso:") for c in calls.get("worker", set()))
        and any(c.startswith("iam:") for c in calls.get("sweep", set()))
        and any(c.startswith("sso:") for c in calls.get("sync", set()))
        and "dynamodb:GetItem" in calls.get("sync", set())
    )
    if complete:
        return Record(calls, list(awsharness.REQUESTS), set(awsharness.SECRET_REFS))
    # Run alone (or without the other AWS tests): run them now, in a child, and read its record.
    target = Path(os.environ.get("TMPDIR", "/tmp")) / f"jitc-aws-calls-{os.getpid()}.json"
    env = {**os.environ, awsharness.CALLS_FILE_ENV: str(target)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(Path(__file__).parent),
            "-k",
            "not least_privilege and not packag",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    doc = json.loads(target.read_text())
    return Record(
        {k: set(v) for k, v in doc["calls"].items()},
        [awsharness.Request(**r) for r in doc["requests"]],
        set(doc["secret_refs"]),
    )


def recorded_calls() -> dict[str, set[str]]:
    return recorded().calls


def test_every_call_is_allowed_and_nothing_more_than_needed_is_wildcarded() -> None:
    docs = policies()
    calls = recorded_calls()
    assert set(FUNCTIONS) <= set(docs)
    # The suite exercised every function and both AWS targets.
    assert {"sqs:SendMessage"} <= calls["intake"]
    assert {
        "secretsmanager:GetSecretValue",
        "scheduler:CreateSchedule",
        "events:PutEvents",
        "iam:CreatePolicy",
        "sso:CreateAccountAssignment",
        "identitystore:GetUserId",
    } <= calls["worker"]
    assert {"scheduler:DeleteSchedule", "iam:DeletePolicy", "sso:DeleteAccountAssignment"} <= calls[
        "sweep"
    ]
    # The inventory sync reads: its state, the catalog's secrets, and both AWS targets' names.
    assert {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "secretsmanager:GetSecretValue",
        "iam:ListRoles",
        "sso:DescribePermissionSet",
        "identitystore:ListGroups",
    } <= calls["sync"]
    # ... and never changes a target.
    changes = ("Create", "Delete", "Put", "Attach", "Detach", "Tag", "Untag", "Update")
    writes = {c for c in calls["sync"] if c.split(":")[1].startswith(changes)}
    assert writes <= {"dynamodb:PutItem", "dynamodb:DeleteItem"}, writes
    assert {
        "secretsmanager:PutSecretValue",
        "secretsmanager:UpdateSecretVersionStage",
        "secretsmanager:ListSecretVersionIds",
    } <= calls["rotation"]
    missing = {}
    for function in FUNCTIONS:
        allowed = {a for s in docs[function] if s["effect"] == "Allow" for a in s["actions"]}
        lacking = sorted(calls.get(function, set()) - allowed)
        if lacking:
            missing[function] = lacking
    assert missing == {}, f"the Terraform policies lack calls the code makes: {missing}"

    for function in FUNCTIONS:
        for statement in docs[function]:
            for action in statement["actions"]:
                assert "*" not in action, f"{function}: wildcard action {action}"
            if "*" in statement["resources"]:
                assert set(statement["actions"]) <= UNSCOPABLE, (function, statement)


def test_secrets_and_queues_come_from_the_variables_only() -> None:
    docs = policies()
    for function in FUNCTIONS:
        for statement in docs[function]:
            if any(a.startswith("secretsmanager:") for a in statement["actions"]):
                # The rotation function: only the admin secrets it rotates (rotation.tf).
                own = "rotation_secret_arns" if function == "rotation" else "secret_arns"
                assert statement["resources"] == [f"${{local.{own}}}"]
            if any(a.startswith("sqs:") for a in statement["actions"]):
                assert statement["resources"] == ["${aws_sqs_queue.requests.arn}"]
            for resource in statement["resources"]:
                # No account-wide or service-wide ARN like arn:aws:sqs:*:*:* or secret:*.
                assert not re.search(r":\*|secret:\*$", resource), (function, resource)


# -- resources and conditions -------------------------------------------------------------------
# moto decides on actions (and SQS and IAM resources) only; here each recorded request is
# matched, as IAM would match it, against the statements of the function's rendered document:
# action, every resource the request touches, and the conditions on the keys it carries.

A = awsharness.ACCOUNT
R = awsharness.REGION
BOUNDARY = f"arn:aws:iam::{A}:policy/jitc-grant-boundary"


IDC_ACCOUNTS = ("111111111111", "222222222222")  # the Identity Center tests' catalog


def _test_world(secret_refs: set[str]) -> dict[str, Any]:
    """The module's references in the test deployments (names from awsharness.deploy and the
    template tests; Identity Center instances are moto's, made afresh for each test)."""
    return {
        "aws_sqs_queue.requests.arn": f"arn:aws:sqs:{R}:{A}:jitc-requests.fifo",
        "aws_kms_key.this.arn": f"arn:aws:kms:{R}:{A}:key/11111111-2222-3333-4444-555555555555",
        **{f'local.log_arns["{f}"]': f"arn:aws:logs:{R}:{A}:log-group:/aws/lambda/jitc-{f}:*"
           for f in FUNCTIONS},
        "local.schedule_arn": f"arn:aws:scheduler:{R}:{A}:schedule/jitc-expiry/*",
        "local.sync_log_arn": f"arn:aws:logs:{R}:{A}:log-group:/aws/lambda/jitc-sync:*",
        "aws_dynamodb_table.sync_state[0].arn": f"arn:aws:dynamodb:{R}:{A}:table/jitc-inventory-state",
        "aws_iam_role.scheduler.arn": f"arn:aws:iam::{A}:role/jitc-scheduler",
        "local.secret_arns": [f"arn:aws:secretsmanager:{R}:{A}:secret:{ref}-??????"
                              for ref in sorted(secret_refs)],
        "local.rotation_log_arn": f"arn:aws:logs:{R}:{A}:log-group:/aws/lambda/jitc-rotation:*",
        "local.rotation_secret_arns": [f"arn:aws:secretsmanager:{R}:{A}:secret:{ref}-??????"
                                       for ref in ROTATED],
        "local.rotation_function_arn": ROTATION_ARN,
        "local.bus_arn": f"arn:aws:events:{R}:{A}:event-bus/jitc-events",
        "local.region": R,
        "local.partition": "aws",
        "local.account": A,
        "var.iam_target.principal_arns": [f"arn:aws:iam::{A}:role/dev-*",
                                          f"arn:aws:iam::{A}:user/dev-*"],
        "var.iam_target.managed_policy_arns": [f"arn:aws:iam::{A}:policy/TableRead"],
        "local.iam_grant_policy_arn": f"arn:aws:iam::{A}:policy/jitc/jitc-*",
        "local.iam_boundary_arn": BOUNDARY,
        "local.idc_resources": ["arn:aws:sso:::instance/ssoins-*",
                                "arn:aws:sso:::permissionSet/ssoins-*/ps-*",
                                # The catalog's accounts, not a wildcard: an assignment
                                # to any other account must show as refused here.
                                *[f"arn:aws:sso:::account/{a}" for a in IDC_ACCOUNTS]],
        "local.idc.identity_store_id": "d-1234567890",
        "local.ledger_arn": f"arn:aws:dynamodb:{R}:{A}:table/jitc-test-ledger",
        "var.member_role_arns": ["arn:aws:iam::111111111111:role/jitc-connector"],
    }  # fmt: skip


def _resources(request: awsharness.Request) -> tuple[list[str], dict[str, str]]:
    """The ARNs a request acts on, and the condition keys it carries, as IAM sees them."""
    p = request.params
    context: dict[str, str] = {}
    if request.service == "sqs":
        return [f"arn:aws:sqs:{R}:{A}:{p['QueueUrl'].rsplit('/', 1)[1]}"], context
    if request.service == "secretsmanager":
        ref = p["SecretId"]
        arn = (
            ref if ref.startswith("arn:") else f"arn:aws:secretsmanager:{R}:{A}:secret:{ref}-AbCdEf"
        )
        if request.function == "rotation":
            # The tests' rotated secrets name this function as their rotation function.
            context["secretsmanager:resource/AllowRotationLambdaArn"] = ROTATION_ARN
        return [arn], context
    if request.service == "scheduler":
        return [f"arn:aws:scheduler:{R}:{A}:schedule/{p['GroupName']}/{p['Name']}"], context
    if request.service == "events":
        buses = {e.get("EventBusName", "default") for e in p["Entries"]}
        return [f"arn:aws:events:{R}:{A}:event-bus/{b}" for b in sorted(buses)], context
    if request.service == "iam":
        if "PolicyArn" in p:
            context["iam:PolicyARN"] = p["PolicyArn"]
        if "RoleName" in p or "UserName" in p:
            # The template attaches only to principals carrying the boundary (checked first).
            context["iam:PermissionsBoundary"] = BOUNDARY
            kind, name = ("role", p["RoleName"]) if "RoleName" in p else ("user", p["UserName"])
            return [f"arn:aws:iam::{A}:{kind}/{name}"], context
        if "GroupName" in p:
            # A group (any group: a neighbour may hang a grant's policy on one) is the resource.
            return [f"arn:aws:iam::{A}:group/{p['GroupName']}"], context
        if request.operation == "CreatePolicy":
            return [f"arn:aws:iam::{A}:policy{p.get('Path', '/')}{p['PolicyName']}"], context
        if "PolicyArn" in p:
            return [p["PolicyArn"]], context
        return ["*"], context
    if request.service == "sso-admin":
        found = [p["InstanceArn"]]
        for key in ("PermissionSetArn", "ResourceArn"):
            if key in p:
                found.append(p[key])
        if "TargetId" in p:
            found.append(f"arn:aws:sso:::account/{p['TargetId']}")
        if "AccountId" in p:
            found.append(f"arn:aws:sso:::account/{p['AccountId']}")
        return found, context
    if request.service == "sts":
        return [p["RoleArn"]], context
    if request.service == "dynamodb":
        return [f"arn:aws:dynamodb:{R}:{A}:table/{p['TableName']}"], context
    if request.service == "identitystore":
        return [f"arn:aws:identitystore::{A}:identitystore/{p['IdentityStoreId']}"], context
    raise AssertionError(f"no resource mapping for {request.service}:{request.operation}")


def _glob(pattern: str, value: str, case: bool = True) -> bool:
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, value, 0 if case else re.IGNORECASE) is not None


def _conditions_hold(statement: dict[str, Any], context: dict[str, str]) -> bool:
    for test, keys in statement.get("Condition", {}).items():
        for key, values in keys.items():
            if key not in context:
                return False  # a key the request does not carry: IAM does not match
            actual = context[key]
            if test == "StringEquals":
                ok = actual in values
            elif test == "ArnLike":
                ok = any(_glob(v, actual) for v in values)
            else:
                raise AssertionError(f"no evaluation for condition {test}")
            if not ok:
                return False
    return True


def _allowed(document: dict[str, Any], action: str, resource: str, context: dict[str, str]) -> bool:
    for statement in document["Statement"]:
        if statement["Effect"] != "Allow":
            continue
        if not any(_glob(a, action, case=False) for a in statement["Action"]):
            continue
        if not any(_glob(r, resource) for r in statement["Resource"]):
            continue
        if _conditions_hold(statement, context):
            return True
    return False


def test_every_request_is_allowed_on_its_resources_and_under_its_conditions() -> None:
    from tfpolicy import render

    record = recorded()
    world = _test_world(record.secret_refs)
    documents = {f: render(f, world) for f in FUNCTIONS}
    refused: set[str] = set()
    for request in record.requests:
        if request.function not in documents:
            continue  # made through a member account's role: that role's policy governs it
        action = f"{request.prefix}:{request.operation}"
        resources, context = _resources(request)
        for resource in resources:
            if not _allowed(documents[request.function], action, resource, context):
                refused.add(f"{request.function}: {action} on {resource} {context or ''}")
    assert refused == set(), sorted(refused)
    assert len(record.requests) > 50


def test_the_resource_check_refuses_what_the_policy_does_not_name() -> None:
    from tfpolicy import render

    document = render("worker", _test_world({"jitc/pg-admin"}))
    secret = f"arn:aws:secretsmanager:{R}:{A}:secret:jitc/pg-admin-AbCdEf"
    assert _allowed(document, "secretsmanager:GetSecretValue", secret, {})
    other = secret.replace("pg-admin", "payroll")
    assert not _allowed(document, "secretsmanager:GetSecretValue", other, {})
    role = f"arn:aws:iam::{A}:role/dev-ana"
    mine = {"iam:PolicyARN": f"arn:aws:iam::{A}:policy/jitc/jitc-gx",
            "iam:PermissionsBoundary": BOUNDARY}  # fmt: skip
    assert _allowed(document, "iam:AttachRolePolicy", role, mine)
    admin = {**mine, "iam:PolicyARN": "arn:aws:iam::aws:policy/AdministratorAccess"}
    assert not _allowed(document, "iam:AttachRolePolicy", role, admin)
    unbounded = {**mine, "iam:PermissionsBoundary": "arn:aws:iam::aws:policy/Other"}
    assert not _allowed(document, "iam:PutRolePolicy", role, unbounded)


def test_an_identity_center_assignment_outside_the_catalogs_accounts_is_refused() -> None:
    from tfpolicy import render

    document = render("worker", _test_world(set()))
    instance = "arn:aws:sso:::instance/ssoins-1"
    ps = "arn:aws:sso:::permissionSet/ssoins-1/ps-1"
    for account, allowed in ((IDC_ACCOUNTS[0], True), ("333333333333", False)):
        for resource in (instance, ps, f"arn:aws:sso:::account/{account}"):
            verdict = _allowed(document, "sso:CreateAccountAssignment", resource, {})
            assert verdict == (allowed or resource != f"arn:aws:sso:::account/{account}")
