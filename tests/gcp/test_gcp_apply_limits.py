"""What Google refuses at apply, or later, that a plan does not: the module's inputs and
arguments are held to the API's own limits here, each test naming the page that sets it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tfgcp
from tfmodule import load

MODULE = load(tfgcp.MODULE)


def _variable_block(name: str) -> str:
    for path in sorted(tfgcp.MODULE.glob("*.tf")):
        text = path.read_text()
        found = re.search(rf'^variable "{name}" {{\n.*?^}}\n', text, re.S | re.M)
        if found:
            return found.group(0)
    raise AssertionError(f"no variable {name}")


def _accepted(name: str, value: int, tmp: Path) -> bool:
    """Whether Terraform's own validation of the module's variable takes this value."""
    (tmp / "main.tf").write_text(_variable_block(name))
    if not (tmp / ".terraform").exists():
        subprocess.run(
            ["terraform", "init", "-input=false", "-backend=false"],
            cwd=tmp, capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
    result = subprocess.run(
        ["terraform", "plan", "-input=false", "-lock=false", f"-var={name}={value}"],
        cwd=tmp, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return result.returncode == 0


@pytest.mark.parametrize("name", ["sweep_silence_alert", "sync_silence_alert"])
def test_silence_alerts_take_only_durations_monitoring_accepts(name: str, tmp_path: Path) -> None:
    """A metric-absence condition's duration is at least 120 s, a whole number of minutes, and
    at most 23.5 hours (https://cloud.google.com/monitoring/alerts/metric-absence; the API's
    MetricAbsence.duration): anything else passes the plan and fails creating the policy."""
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not installed here")
    assert _accepted(name, 3600, tmp_path)
    assert _accepted(name, 84600, tmp_path)
    for refused in (86400, 84660, 60, 3601):
        assert not _accepted(name, refused, tmp_path), refused


def test_alert_policies_wait_until_their_log_metrics_can_be_found() -> None:
    """Monitoring finds a new log-based metric only minutes after Logging created it: an alert
    policy created right after its metric fails with 404 "Cannot find metric(s)"
    (hashicorp/terraform-provider-google#11102), so the first apply of the module failed."""
    metrics = set(MODULE.of_kind("google_logging_metric"))
    sleep = MODULE.resource("time_sleep", "log_metrics")
    assert {f"google_logging_metric.{m}" for m in metrics} <= set(
        re.findall(r"google_logging_metric\.\w+", str(sleep["triggers"]))
    )
    for name, policy in MODULE.of_kind("google_monitoring_alert_policy").items():
        assert "${time_sleep.log_metrics}" in policy.get("depends_on", []), name
    versions = (tfgcp.MODULE / "versions.tf").read_text()
    assert 'source  = "hashicorp/time"' in versions


def test_the_build_account_can_be_given() -> None:
    """Cloud Build runs a function's build as the project's default build account unless one
    is named; in projects whose policies strip that account's roles (the default for new
    organizations) every build fails, and the module offered no way to name another
    (https://cloud.google.com/functions/docs/securing/build-custom-sa)."""
    variable = MODULE.variables["build_service_account"]
    assert variable["default"] is None
    build = MODULE.resource("google_cloudfunctions2_function", "function")["build_config"][0]
    assert build["service_account"] == "${var.build_service_account}"


def test_the_functions_environment_fits_what_cloud_functions_accepts() -> None:
    """The environment variables of one function, names and values, total at most 32 KiB
    (https://cloud.google.com/functions/docs/configuring/env-var, "Size limits"): the catalog
    travels there, and a larger one passed the plan and failed the deployment."""
    function = MODULE.resource("google_cloudfunctions2_function", "function")
    service = function["service_config"][0]
    assert service["environment_variables"] == "${local.function_environment[each.key]}"
    conditions = [p["condition"] for p in function["lifecycle"][0]["precondition"]]
    assert any("local.environment_bytes[each.key]" in c and "32768" in c for c in conditions)
    text = (tfgcp.MODULE / "main.tf").read_text()
    # Bytes, not characters: a catalog's non-ASCII text counts by its UTF-8 length.
    assert "base64encode" in text.split("environment_bytes", 1)[1].split("\n\n", 1)[0]


def test_requests_cloud_run_refuses_before_the_function_are_alerted_on() -> None:
    """With IAM-authenticated invocation Cloud Run checks each token first: one with a wrong
    audience or account is answered 401/403 without the function running, so no `caller
    refused` is logged and Cloud Tasks retries it for ever
    (https://cloud.google.com/run/docs/authenticating/service-to-service). Cloud Run's request
    log still records the answer: the failure metric counts those of worker, sweep and sync."""
    text = (tfgcp.MODULE / "monitoring.tf").read_text()
    metric = text.split('resource "google_logging_metric" "failures"', 1)[1].split("EOT", 2)[1]
    assert 'logName="projects/${var.project_id}/logs/run.googleapis.com%2Frequests"' in metric
    internal = '("${var.name}-worker" OR "${var.name}-sweep" OR "${var.name}-sync")'
    assert f"resource.labels.service_name={internal}" in metric
    assert "httpRequest.status>=400" in metric
