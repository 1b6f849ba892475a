"""rotation.tf read as AWS would apply it: the function Secrets Manager invokes, who may invoke
it, which secrets rotate, and that its policy binds it to the secrets it is the rotation
function of."""

from __future__ import annotations

import importlib
import re

from tfmodule import load

from jitc.rotation import ROTATORS


def test_the_handler_is_the_rotation_module_in_the_package() -> None:
    function = load().resource("aws_lambda_function", "rotation")
    module, _, name = function["handler"].rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))
    assert function["layers"] == ["${aws_lambda_layer_version.catalog.arn}"]
    env = function["environment"][0]["variables"]
    assert env["JITC_CATALOG_SHA256"] == "${local.catalog_sha256}"


def test_only_secrets_manager_of_this_account_may_invoke_it_for_the_rotated_secrets() -> None:
    module = load()
    permission = module.resource("aws_lambda_permission", "rotation")
    assert permission["principal"] == "secretsmanager.amazonaws.com"
    assert permission["action"] == "lambda:InvokeFunction"
    assert permission["source_account"] == "${local.account}"
    assert permission["for_each"] == "${local.rotated_secrets}"
    assert permission["source_arn"] == "${each.value}"
    rotation = module.resource("aws_secretsmanager_secret_rotation", "this")
    assert rotation["for_each"] == "${local.rotated_secrets}"
    # Secrets Manager checks it may invoke the function when rotation is turned on.
    assert "${aws_lambda_permission.rotation}" in rotation["depends_on"]
    assert rotation["rotation_lambda_arn"] == "${aws_lambda_function.rotation[0].arn}"


def test_the_rotated_secrets_are_those_of_the_kinds_the_function_can_rotate() -> None:
    text = load().texts["rotation.tf"]
    kinds = re.search(r"contains\(\[([^\]]*)\], try\(integration\.kind", text)
    assert kinds is not None
    assert sorted(k.strip().strip('"') for k in kinds.group(1).split(",")) == sorted(ROTATORS)


def test_its_secret_rights_hold_only_while_it_is_the_secrets_rotation_function() -> None:
    module = load()
    document = module.policy("rotation")
    secret_statements = [
        s
        for s in document["statement"]
        if any(a.startswith("secretsmanager:") for a in s["actions"])
    ]
    assert len(secret_statements) == 1
    statement = secret_statements[0]
    assert statement["resources"] == "${local.rotation_secret_arns}"
    condition = statement["condition"][0]
    assert condition["variable"] == "secretsmanager:resource/AllowRotationLambdaArn"
    assert condition["values"] == ["${local.rotation_function_arn}"]
    assert "function:${local.rotation_function}" in module.locals["rotation_function_arn"]
    function = module.resource("aws_lambda_function", "rotation")
    assert function["function_name"] == "${local.rotation_function}"


def test_it_reaches_the_databases_as_the_worker_does() -> None:
    module = load()
    mine = module.resource("aws_lambda_function", "rotation")["dynamic"][0]["vpc_config"]
    theirs = module.resource("aws_lambda_function", "this")["dynamic"][0]["vpc_config"]
    assert mine["content"] == theirs["content"]
    assert mine["for_each"] == "${var.vpc_config == null ? [] : [var.vpc_config]}"


def test_a_schedule_over_90_days_is_refused_at_plan() -> None:
    validation = load().variables["rotation"]["validation"][0]["condition"]
    found = re.search(r'regex\("([^"]+)"', validation)
    assert found is not None
    schedule = re.compile(found.group(1))  # RE2 and Python agree on this pattern's syntax
    for ok in (
        "rate(30 days)",
        "rate(1 day)",
        "rate(90 days)",
        "rate(4 hours)",
        "cron(0 3 ? * SUN *)",
    ):
        assert schedule.fullmatch(ok), ok
    for bad in ("rate(91 days)", "rate(365 days)", "rate(2 hours)", "rate(0 days)", "every month"):
        assert not schedule.fullmatch(bad), bad
