"""Least privilege: every AWS call a function's code made during the AWS tests is allowed by that
function's policy in the Terraform module, and no policy grants a wildcard action, or a
wildcard resource beyond the few actions AWS offers no resource for."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import awsharness
import hcl2

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "infra" / "terraform" / "aws"
FUNCTIONS = ("intake", "worker", "sweep")
# AWS defines no resource for these: "*" is the only possible scope.
UNSCOPABLE = {"xray:PutTraceSegments", "xray:PutTelemetryRecords", "iam:ListPolicies"}


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
    for path in MODULE.glob("*.tf"):
        parsed = hcl2.load(path.open())
        for data in parsed.get("data", []):
            for kind, named in data.items():
                if _unquote(kind) != "aws_iam_policy_document":
                    continue
                for name, body in named.items():
                    docs[_unquote(name)] = [
                        {
                            "actions": [_unquote(a) for a in s["actions"]],
                            "resources": [_unquote(r) for r in _as_list(s.get("resources", []))],
                            "effect": _unquote(s.get("effect", "Allow")),
                        }
                        for s in _statements(body)
                    ]
    return docs


def recorded_calls() -> dict[str, set[str]]:
    calls = awsharness.CALLS
    complete = (
        all(calls.get(f) for f in FUNCTIONS)
        and any(c.startswith("sso:") for c in calls.get("worker", set()))
        and any(c.startswith("iam:") for c in calls.get("sweep", set()))
    )
    if complete:
        return calls
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
    return {k: set(v) for k, v in json.loads(target.read_text()).items()}


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
                assert statement["resources"] == ["${local.secret_arns}"]
            if any(a.startswith("sqs:") for a in statement["actions"]):
                assert statement["resources"] == ["${aws_sqs_queue.requests.arn}"]
            for resource in statement["resources"]:
                # No account-wide or service-wide ARN like arn:aws:sqs:*:*:* or secret:*.
                assert not re.search(r":\*|secret:\*$", resource), (function, resource)
