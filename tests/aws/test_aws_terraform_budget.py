"""The module's concurrency budget and provider-6 attributes, checked by Terraform itself: the
module's own `variable` blocks are copied into an empty configuration (no provider needed, so it
plans offline) and planned with the values under test."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from tfmodule import EXAMPLE, MEMBER_MODULE, MODULE, as_list, load

TERRAFORM = shutil.which("terraform")


def _block(text: str, header: str) -> str:
    """The HCL block that starts with `header`, braces balanced."""
    start = text.index(header)
    depth = 0
    for index in range(text.index("{", start), len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start : index + 1]
    raise AssertionError(f"unbalanced block {header}")


@pytest.fixture(scope="module")
def variables_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if TERRAFORM is None:
        pytest.skip("terraform is not installed")
    folder = tmp_path_factory.mktemp("tfvars")
    text = (MODULE / "variables.tf").read_text()
    blocks = [
        _block(text, f'variable "{name}" {{')
        for name in ("concurrency_budget", "reserved_concurrency")
    ]
    (folder / "main.tf").write_text("\n\n".join(blocks) + "\n")
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    subprocess.run([TERRAFORM, "init", "-input=false", "-no-color"], cwd=folder, env=env,
                   check=True, capture_output=True)  # fmt: skip
    return folder


def _plan(folder: Path, **values: object) -> tuple[bool, str]:
    args = [f"-var={name}={json.dumps(value)}" for name, value in values.items()]
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    done = subprocess.run(
        [TERRAFORM, "plan", "-input=false", "-no-color", "-lock=false", *args],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("values", "accepted", "why"),
    [
        ({}, True, ""),
        ({"reserved_concurrency": {}}, True, ""),
        ({"concurrency_budget": 900, "reserved_concurrency": {"intake": 600, "worker": 299, "sweep": 1}}, True, ""),
        ({"concurrency_budget": 901}, False, "concurrency_budget"),
        ({"concurrency_budget": 1000, "reserved_concurrency": {"intake": 990, "worker": 9, "sweep": 1}}, False, "concurrency_budget"),
        ({"reserved_concurrency": {"intake": 10, "worker": 5, "sweep": 2}}, False, "more than concurrency_budget"),
        ({"reserved_concurrency": {"intake": 10, "worker": 5, "sweep": 1, "sync": 1}}, False, "more than concurrency_budget"),
        ({"reserved_concurrency": {"intake": 10, "worker": 0}}, False, "1 or more"),
        ({"reserved_concurrency": {"intake": 10, "worker": 1}}, False, "at least 2"),
        ({"reserved_concurrency": {"worker": 2.5}}, False, "whole numbers"),
        ({"concurrency_budget": 4.5}, False, "whole number"),
    ],
)  # fmt: skip
def test_reserved_concurrency_stays_within_a_budget_the_account_allows(
    variables_dir: Path, values: dict[str, object], accepted: bool, why: str
) -> None:
    ok, output = _plan(variables_dir, **values)
    assert ok == accepted, output
    if not accepted:
        assert why in " ".join(output.split()), output


def test_the_default_budget_is_what_the_defaults_reserve_and_functions_read_the_map() -> None:
    module = load()
    assert module.variables["concurrency_budget"]["default"] == 16
    assert sum(module.variables["reserved_concurrency"]["default"].values()) == 16
    function = module.resource("aws_lambda_function", "this")
    # A function left out of the map reserves nothing (-1), rather than failing the plan.
    assert function["reserved_concurrent_executions"] == (
        "${lookup(var.reserved_concurrency, each.key, -1)}"
    )


def test_the_queue_never_polls_beyond_the_workers_reservation() -> None:
    mapping = load().resource("aws_lambda_event_source_mapping", "worker")
    (scaling,) = as_list(mapping["dynamic"])
    body = scaling["scaling_config"]
    assert '"worker"' in body["for_each"] and "var.reserved_concurrency" in body["for_each"]
    (content,) = as_list(body["content"])
    assert content["maximum_concurrency"] == "${scaling_config.value}"


def test_no_deprecated_region_name_attribute() -> None:
    """Provider 6 (the module pins >= 6.19) deprecates `aws_region`'s `name` for `region`."""
    for folder in (MODULE, MEMBER_MODULE, EXAMPLE):
        for path in folder.glob("*.tf"):
            text = path.read_text()
            assert not re.search(r"data\.aws_region\.\w+\.name\b", text), path
    assert load().locals["region"] == "${data.aws_region.current.region}"


def test_the_inventory_sync_reserves_within_the_budget_and_nothing_with_an_empty_map() -> None:
    """concurrency_budget is what the module may reserve, all its functions together, and `{}`
    is for accounts that cannot reserve at all. The sync (deployed whenever the catalog names
    a webhook) reserves a literal 1 that neither the budget's validation nor the map sees: the
    defaults then reserve 17 of a budget of 16, a budget of 900 fully mapped reserves 901 (AWS
    refuses the reservation that leaves fewer than 100 unreserved), and an account below the
    1,000 quota that set `{}` still fails at PutFunctionConcurrency."""
    module = load()
    sync = module.resource("aws_lambda_function", "sync")
    reserved = sync["reserved_concurrent_executions"]
    budget = module.variables["concurrency_budget"]["default"]
    mapped = sum(module.variables["reserved_concurrency"]["default"].values())
    if isinstance(reserved, int):
        # A literal reservation must be counted by the budget's validation.
        checks = " ".join(
            str(v["condition"])
            for v in as_list(module.variables["reserved_concurrency"]["validation"])
        )
        assert mapped + reserved <= budget or "sync" in checks, (mapped, reserved, budget)
    else:
        # Read from the map (or -1 when left out), as every other function does.
        assert "var.reserved_concurrency" in str(reserved), reserved


@pytest.fixture(scope="module")
def limits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if TERRAFORM is None:
        pytest.skip("terraform is not installed")
    folder = tmp_path_factory.mktemp("tflimits")
    text = (MODULE / "variables.tf").read_text()
    names = ("memory_size", "log_retention_days", "max_receive_count")
    blocks = [_block(text, f'variable "{name}" {{') for name in names]
    (folder / "main.tf").write_text("\n\n".join(blocks) + "\n")
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    subprocess.run([TERRAFORM, "init", "-input=false", "-no-color"], cwd=folder, env=env,
                   check=True, capture_output=True)  # fmt: skip
    return folder


@pytest.mark.parametrize(
    "values",
    [
        # Lambda's MemorySize: at least 128 (botocore's model, min 128).
        {"memory_size": 64},
        # CloudWatch Logs' retentionInDays: one of 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180,
        # 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653 (botocore's Days shape).
        {"log_retention_days": 100},
        # SQS's RedrivePolicy maxReceiveCount: 1 to 1,000.
        {"max_receive_count": 0},
        {"max_receive_count": 1001},
        {"memory_size": 128.5},
    ],
)
def test_variables_refuse_at_plan_what_aws_refuses_at_apply(
    limits_dir: Path, values: dict[str, object]
) -> None:
    """A value the variable admits and AWS refuses fails `terraform apply` half-way, after
    the resources before it were made; the module's other numbers are validated at plan."""
    ok, output = _plan(limits_dir, **values)
    assert not ok, output
    assert all(name in " ".join(output.split()) for name in values), output


def test_the_defaults_and_aws_edges_pass_those_validations(limits_dir: Path) -> None:
    for values in (
        {},
        {"memory_size": 10240, "log_retention_days": 0, "max_receive_count": 1000},
        {"memory_size": 128, "log_retention_days": 3653, "max_receive_count": 1},
    ):
        ok, output = _plan(limits_dir, **values)
        assert ok, output


@pytest.fixture(scope="module")
def rotation_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if TERRAFORM is None:
        pytest.skip("terraform is not installed")
    folder = tmp_path_factory.mktemp("tfrotation")
    block = _block((MODULE / "rotation.tf").read_text(), 'variable "rotation" {')
    (folder / "main.tf").write_text(block + "\n")
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    subprocess.run([TERRAFORM, "init", "-input=false", "-no-color"], cwd=folder, env=env,
                   check=True, capture_output=True)  # fmt: skip
    return folder


@pytest.mark.parametrize(
    ("rotation", "accepted"),
    [
        (None, True),
        ({}, True),
        ({"window": "24h"}, True),
        ({"schedule_expression": "rate(4 hours)", "window": "4h"}, True),
        ({"schedule_expression": "cron(0 2 ? * SUN *)", "window": "2h"}, True),
        # Secrets Manager's Duration is whole hours, "<n>h" (botocore: pattern [0-9]+h).
        ({"window": "3 hours"}, False),
        ({"window": "90m"}, False),
        # Nor into the next UTC day, nor into the next window of a rate in hours.
        ({"window": "25h"}, False),
        ({"schedule_expression": "rate(4 hours)", "window": "5h"}, False),
    ],
)  # fmt: skip
def test_the_rotation_window_is_one_secrets_manager_takes(
    rotation_dir: Path, rotation: dict[str, object] | None, accepted: bool
) -> None:
    ok, output = _plan(rotation_dir, rotation=rotation)
    assert ok == accepted, output
    if not accepted:
        assert "rotation.window" in " ".join(output.split()), output
