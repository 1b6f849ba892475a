"""The Identity Center ledger table as the module declares it, checked against what the template
writes (keys, TTL attribute) and against what each function may do with it."""

from __future__ import annotations

from typing import Any

from test_aws_least_privilege import _test_world
from tfmodule import as_list, load
from tfpolicy import render

from jitc.templates.aws_identity_center_ledger import GRANT_SK, grant_key

A, R = "123456789012", "us-east-1"
WORLD = _test_world(set())
TABLE = WORLD["local.ledger_arn"]


def _table() -> dict[str, Any]:
    return load().resource("aws_dynamodb_table", "ledger")


def test_the_table_has_the_templates_keys_and_ttl_attribute() -> None:
    table = _table()
    assert (table["hash_key"], table["range_key"]) == ("pk", "sk")
    assert {(a["name"], a["type"]) for a in as_list(table["attribute"])} == {
        ("pk", "S"),
        ("sk", "S"),
    }
    (ttl,) = as_list(table["ttl"])
    assert ttl == {"attribute_name": "expires", "enabled": True}
    assert grant_key("gx") == ("g#gx", GRANT_SK)
    from pathlib import Path

    from jitc.templates import aws_identity_center_ledger as ledger

    assert '"expires"' in Path(ledger.__file__).read_text()  # the attribute the TTL reads


def test_the_table_is_recoverable_encrypted_with_the_modules_key_and_protected() -> None:
    table = _table()
    (pitr,) = as_list(table["point_in_time_recovery"])
    assert pitr["enabled"] is True
    (sse,) = as_list(table["server_side_encryption"])
    assert sse == {"enabled": True, "kms_key_arn": "${aws_kms_key.this.arn}"}
    assert table["deletion_protection_enabled"] is True
    assert table["billing_mode"] == "PAY_PER_REQUEST"
    assert table["name"] == "${local.ledger_name}"
    conditions = " ".join(str(p["condition"]) for b in as_list(table["lifecycle"])
                          for p in as_list(b["precondition"]))  # fmt: skip
    assert "ledger_table" in conditions and "aws_identity_center" in conditions


def _ledger_actions(function: str) -> set[str]:
    document = render(function, WORLD)
    found: set[str] = set()
    for statement in document["Statement"]:
        actions = statement["Action"]
        for action in [actions] if isinstance(actions, str) else actions:
            if action.startswith("dynamodb:"):
                assert statement["Resource"] in ([TABLE], TABLE), statement
                found.add(action)
    return found


def test_least_privilege_on_the_table() -> None:
    common = {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Query"}
    assert _ledger_actions("worker") == common  # by key only: no Scan of every grant
    assert _ledger_actions("sweep") == common | {"dynamodb:Scan"}
    assert _ledger_actions("intake") == set()


def test_the_functions_may_use_the_tables_key_only_through_dynamodb() -> None:
    for function in ("worker", "sweep"):
        statements = [s for s in render(function, WORLD)["Statement"]
                      if s.get("Sid") == "IdentityCenterLedgerKey"]  # fmt: skip
        (statement,) = statements
        assert statement["Condition"] == {
            "StringEquals": {"kms:ViaService": [f"dynamodb.{R}.amazonaws.com"]}
        }
        assert "kms:Decrypt" in statement["Action"]


def test_no_role_may_tag_permission_sets_any_more() -> None:
    """The ledger left the tags: neither the functions nor the member-account role may write
    them (the tags are the company's)."""
    from tfmodule import MEMBER_MODULE

    text = "".join(p.read_text() for p in MEMBER_MODULE.glob("*.tf"))
    assert "sso:TagResource" not in text and "sso:UntagResource" not in text
    assert "sso:ListTagsForResource" not in text


def test_no_function_may_tag_permission_sets() -> None:
    for function in ("worker", "sweep"):
        for statement in render(function, WORLD)["Statement"]:
            actions = statement["Action"]
            for action in [actions] if isinstance(actions, str) else actions:
                assert action not in ("sso:TagResource", "sso:UntagResource"), function
