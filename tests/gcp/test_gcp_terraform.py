"""The GCP module as data: what the code needs is what the module sets, each function runs as
its own account, and nothing is bound wider than a named resource."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import tfgcp
import yaml
from tfmodule import load

from jitc.catalog import parse_catalog

ROOT = Path(__file__).resolve().parents[2]
MODULE = load(tfgcp.MODULE)
EXAMPLE = load(tfgcp.EXAMPLE)


def test_terraform_fmt() -> None:
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not installed here")
    result = subprocess.run(
        ["terraform", "fmt", "-check", "-recursive", str(tfgcp.MODULE), str(tfgcp.EXAMPLE)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout


def test_the_environment_holds_every_setting_the_functions_require() -> None:
    runtime = (ROOT / "gcp" / "runtime.py").read_text()
    required = set(re.findall(r'_env\("(JITC_[A-Z_]+)"\)', runtime))
    environment = MODULE.locals["environment"]
    assert required <= set(environment), required - set(environment)
    assert environment["JITC_CATALOG_SHA256"] == "${sha256(local.catalog_json)}"


def test_each_function_runs_as_its_own_account_one_request_at_a_time() -> None:
    function = MODULE.resource("google_cloudfunctions2_function", "function")
    service = function["service_config"][0]
    assert service["service_account_email"] == "${google_service_account.function[each.key].email}"
    assert service["max_instance_request_concurrency"] == 1
    assert service["ingress_settings"] == "${each.value.ingress}"
    functions = MODULE.locals["functions"]
    assert {k: v["ingress"] for k, v in functions.items()} == {
        "intake": "ALLOW_ALL", "worker": "ALLOW_INTERNAL_ONLY", "sweep": "ALLOW_INTERNAL_ONLY",
        "sync": "ALLOW_INTERNAL_ONLY",
    }  # fmt: skip
    assert {v["entry_point"] for v in functions.values()} == {"intake", "worker", "sweep", "sync"}
    main = (ROOT / "gcp" / "main.py").read_text()
    for entry in ("intake", "worker", "sweep", "sync"):
        assert f"def {entry}(request: flask.Request)" in main


def test_no_binding_reaches_beyond_a_named_resource() -> None:
    kinds = {
        kind
        for (kind, _) in MODULE.resources
        if kind.endswith(("_iam_member", "_iam_binding", "_iam_policy"))
    }
    assert not {
        k for k in kinds if k.endswith(("_iam_binding", "_iam_policy"))
    }  # authoritative: never
    # The only project-level bindings are the IAM target's, on the catalog's projects: the
    # predefined role that holds exactly get, getIamPolicy and setIamPolicy, and the sync's
    # read-only IAM role there (its live grants are read from the policies, never written).
    project = MODULE.of_kind("google_project_iam_member")
    assert sorted(project) == ["iam_reader", "iam_target"]
    assert project["iam_target"]["role"] == "roles/resourcemanager.projectIamAdmin"
    assert project["iam_reader"]["role"] == "roles/iam.securityReviewer"
    assert "local.iam_readers" in project["iam_reader"]["for_each"]
    # Every role a function holds, rendered for the example's catalog: nothing basic, no admin
    # role but the IAM target's own (which must set IAM policy on its resources).
    catalog = yaml.safe_load((tfgcp.EXAMPLE / "catalog.yaml").read_text())
    facts = tfgcp.facts_from_catalog(catalog, "acme-jit", "europe-west1", "jitc")
    for binding in tfgcp.bindings(facts, {"invoker": "inv@acme-jit.iam.gserviceaccount.com"}):
        assert binding.role not in ("roles/owner", "roles/editor", "roles/viewer")
        targets = ("folder_iam_member.iam_target", "project_iam_member.iam_target")
        assert "admin" not in binding.role.lower() or binding.address.endswith(targets)
        assert binding.resource.startswith(("projects/", "buckets/", "folders/"))


def test_the_queue_never_drops_a_revoke_and_jobs_carry_oidc() -> None:
    queue = MODULE.resource("google_cloud_tasks_queue", "requests")
    assert queue["retry_config"][0]["max_attempts"] == -1
    assert queue["retry_config"][0]["max_retry_duration"] == "0s"
    job = MODULE.resource("google_cloud_scheduler_job", "job")
    target = job["http_target"][0]
    assert target["oidc_token"][0]["audience"] == target["uri"]
    assert (
        target["oidc_token"][0]["service_account_email"]
        == "${google_service_account.invoker.email}"
    )
    assert set(MODULE.locals["scheduled_jobs"]) == {"sweep", "sync"}
    # Each job's function takes the tokens of its own URL only (handlers.scheduled).
    assert MODULE.locals["environment"]["JITC_SYNC_URL"] == "${local.url.sync}"


def test_the_example_catalog_is_valid_and_the_module_call_matches_the_variables() -> None:
    catalog = yaml.safe_load((tfgcp.EXAMPLE / "catalog.yaml").read_text())
    parsed = parse_catalog(catalog)
    assert {i.kind for i in parsed.integrations.values()} == {"postgresql", "gcp_iam"}
    call = EXAMPLE.modules["jitc"]
    arguments = set(call) - {"source"}
    assert arguments <= set(MODULE.variables), arguments - set(MODULE.variables)
    required = {name for name, body in MODULE.variables.items() if "default" not in body}
    assert required <= arguments


def test_queue_writers_get_the_queue_and_the_invokers_token_and_nothing_else() -> None:
    catalog = yaml.safe_load((tfgcp.EXAMPLE / "catalog.yaml").read_text())
    facts = tfgcp.facts_from_catalog(catalog, "acme-jit", "europe-west1", "jitc")
    emails = {"invoker": "inv@acme-jit.iam.gserviceaccount.com"}
    writer = "serviceAccount:cp@saas.iam.gserviceaccount.com"
    assert not [b for b in tfgcp.bindings(facts, emails) if b.function == writer]
    import dataclasses

    with_writer = dataclasses.replace(facts, queue_writers=(writer,))
    granted = {
        (b.role, b.resource) for b in tfgcp.bindings(with_writer, emails) if b.function == writer
    }
    assert granted == {
        (
            "roles/cloudtasks.enqueuer",
            "projects/acme-jit/locations/europe-west1/queues/jitc-requests",
        ),
        (
            "roles/iam.serviceAccountUser",
            "projects/-/serviceAccounts/inv@acme-jit.iam.gserviceaccount.com",
        ),
    }


def test_every_warning_the_functions_log_is_alerted_on() -> None:
    """A message the code logs at WARNING or above that the failure metric does not count
    would fail in silence (e.g. tasks retried for ever behind a misconfigured audience)."""
    text = (tfgcp.MODULE / "monitoring.tf").read_text()
    metric = text.split('resource "google_logging_metric" "failures"', 1)[1].split("EOT", 2)[1]
    logged = set()
    for source in (ROOT / "gcp").glob("*.py"):
        logged |= set(
            re.findall(r'logger\.(?:warning|error|exception)\(\s*"([^"]+)"', source.read_text())
        )
    from jitc.gcp.handlers import JOBS

    logged |= {f"{name} failed" for name in JOBS}  # handlers.scheduled logs it for each job
    assert logged, "no warnings found: the pattern above no longer matches the code"
    for message in logged:
        assert f'jsonPayload.message="{message}"' in metric, message


def test_scheduled_and_task_functions_accept_cloud_runs_checked_tokens_and_are_never_public() -> None:
    # Cloud Run removes the signature of every token it checked for IAM: the functions accept
    # such a token only because they are never public (run.invoker: the invoker account only).
    assert MODULE.locals["environment"]["JITC_BEHIND_CLOUD_RUN_IAM"] == "1"
    invoker = MODULE.resource("google_cloud_run_service_iam_member", "invoker")
    assert invoker["member"] == "serviceAccount:${google_service_account.invoker.email}"
    assert invoker["for_each"] == '${toset(["worker", "sweep", "sync"])}'
    public = [
        (name, body["for_each"])
        for name, body in MODULE.of_kind("google_cloud_run_service_iam_member").items()
        if "allUsers" in str(body)
    ]
    assert public == [("intake", public[0][1])] and "intake" in str(
        MODULE.resource("google_cloud_run_service_iam_member", "intake")["service"]
    )


def _tombstone_window(catalog: dict[str, Any], tmp: Path) -> tuple[int, int]:
    """The module's tombstone retention (seconds) and lifecycle age (days) for this catalog,
    evaluated by Terraform itself from tombstones.tf's locals."""
    text = (tfgcp.MODULE / "tombstones.tf").read_text()
    start = text.index("locals {")
    end = text.index("\n}\n", start) + 3
    (tmp / "main.tf").write_text(
        text[start:end]
        + "locals {\n"
        + f"  catalog      = jsondecode({json.dumps(json.dumps(catalog))})\n"
        + "  integrations = try(local.catalog.integrations, {})\n}\n"
    )
    age = MODULE.resource("google_storage_bucket", "tombstones")["lifecycle_rule"][0]
    expression = age["condition"][0]["age"].removeprefix("${").removesuffix("}")
    result = subprocess.run(
        ["terraform", "console"], input=f"jsonencode([local.tombstone_retention, {expression}])\n",
        cwd=tmp, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    retention, days = json.loads(json.loads(result.stdout))
    return int(retention), int(days)


@pytest.mark.parametrize(
    ("skew", "durations"),
    [("5m", ["45d", None]), ("PT2M", ["P1DT2H", "1h30m15s"]), (None, [None]), ("5m", [])],
)
def test_tombstones_outlive_every_delivery_of_their_grant(
    skew: str | None, durations: list[str | None], tmp_path: Path
) -> None:
    """The bucket keeps each tombstone as long as the engine says a tombstone must last (its
    longest gcp_iam max_duration + max_skew + margin), and the lifecycle deletes it only later."""
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not installed here")
    from jitc.engine import TOMBSTONE_MARGIN
    from jitc.models import parse_duration

    integrations: dict[str, Any] = {"db": {"kind": "postgresql", "max_duration": "400d"}}
    for index, duration in enumerate(durations):
        integrations[f"iam{index}"] = {"kind": "gcp_iam"}
        if duration is not None:
            integrations[f"iam{index}"]["max_duration"] = duration
    catalog: dict[str, Any] = {"integrations": integrations}
    if skew is not None:
        catalog["control_plane"] = {"max_skew": skew}
    retention, days = _tombstone_window(catalog, tmp_path)
    longest = max(
        [parse_duration(i.get("max_duration", "8h")) for i in integrations.values()
         if i["kind"] == "gcp_iam"] or [timedelta(0)]
    )  # fmt: skip
    expected = longest + parse_duration(skew or "5m") + TOMBSTONE_MARGIN
    assert retention == expected.total_seconds()
    assert timedelta(days=days) >= expected + timedelta(days=1)
    bucket = MODULE.resource("google_storage_bucket", "tombstones")
    assert bucket["retention_policy"][0]["retention_period"] == "${local.tombstone_retention}"
    # Worker and sweep create and read tombstones; nothing can replace or delete one.
    role = MODULE.resource("google_project_iam_custom_role", "tombstones")
    assert sorted(role["permissions"]) == ["storage.objects.create", "storage.objects.get"]
    assert MODULE.locals["environment"]["JITC_GCP_TOMBSTONE_BUCKET"] == (
        "${google_storage_bucket.tombstones.name}"
    )


def test_datasets_get_one_access_entry_of_a_custom_role_per_function_and_dataset() -> None:
    # Dataset IAM members would go through setIamPolicy, which drops a dataset's authorized
    # views; one access entry each keeps them.
    assert not [k for (k, _) in MODULE.resources if k.startswith("google_bigquery_dataset_iam")]
    access = MODULE.of_kind("google_bigquery_dataset_access")
    assert sorted(access) == ["iam_reader", "iam_target"]
    assert "local.iam_editors" in access["iam_target"]["for_each"]
    assert "local.iam_readers" in access["iam_reader"]["for_each"]
    target = MODULE.resource("google_project_iam_custom_role", "bigquery_target")
    reader = MODULE.resource("google_project_iam_custom_role", "bigquery_reader")
    assert sorted(target["permissions"]) == [
        "bigquery.datasets.get", "bigquery.datasets.getIamPolicy",
        "bigquery.datasets.setIamPolicy", "bigquery.datasets.update",
    ]  # fmt: skip
    assert sorted(reader["permissions"]) == [
        "bigquery.datasets.get", "bigquery.datasets.getIamPolicy"
    ]  # fmt: skip
    # A project's custom role binds only inside that project: the plan stops for a dataset
    # elsewhere instead of failing at apply.
    assert "var.project_id" in json.dumps(target["lifecycle"])
    catalog = {
        "integrations": {
            "bq": {
                "kind": "gcp_iam",
                "connection": {
                    "resources": ["projects/acme-jit/datasets/sales"],
                    "allowed_members": ["user:*"],
                },
                "permissions": {
                    "r": {
                        "role": "roles/bigquery.dataViewer",
                        "resources": ["projects/acme-jit/datasets/sales"],
                    }
                },
            }
        }
    }
    facts = tfgcp.facts_from_catalog(catalog, "acme-jit", "europe-west1", "jitc")
    found = {
        (b.function, b.role, b.resource)
        for b in tfgcp.bindings(facts, {"invoker": "inv@acme-jit.iam.gserviceaccount.com"})
        if "bigquery" in b.role
    }
    assert found == {
        ("worker", "projects/acme-jit/roles/jitc_bigquery_target", "projects/acme-jit/datasets/sales"),
        ("sweep", "projects/acme-jit/roles/jitc_bigquery_target", "projects/acme-jit/datasets/sales"),
        ("sync", "projects/acme-jit/roles/jitc_bigquery_reader", "projects/acme-jit/datasets/sales"),
    }


def test_a_scheduled_call_that_never_reaches_its_function_is_alerted_on() -> None:
    """Cloud Scheduler logs a failed attempt (no OIDC token for the invoker, a URL that does not
    answer) where no function log or Cloud Run request log shows it: every scheduled job's
    failures are counted, and alerted on with the function failures."""
    jobs = MODULE.locals["scheduled_jobs"]
    assert MODULE.resource("google_cloud_scheduler_job", "job")["name"] == "${var.name}-${each.key}"
    metric = MODULE.resource("google_logging_metric", "scheduler_failures")["filter"]
    assert 'resource.type="cloud_scheduler_job"' in metric
    assert "google.cloud.scheduler.logging.AttemptFinished" in metric and "severity>=ERROR" in metric
    assert all(f'"${{var.name}}-{job}"' in metric for job in jobs), (jobs, metric)
    policy = MODULE.resource("google_monitoring_alert_policy", "failures")
    filters = [c["condition_threshold"][0]["filter"] for c in policy["conditions"]]
    assert any("google_logging_metric.scheduler_failures.name" in f for f in filters), filters
    waited = MODULE.resource("time_sleep", "log_metrics")["triggers"]
    assert "google_logging_metric.scheduler_failures.id" in str(waited)


def test_a_scheduled_job_paused_or_deleted_by_hand_is_alerted_on() -> None:
    """A job never attempted again logs no failure, and a sweep that had not completed since the
    last apply gives Cloud Monitoring no point to judge an absence by: the job's Admin Activity
    audit entry (always written) raises the sweep's alert instead."""
    jobs = MODULE.locals["scheduled_jobs"]
    metric = MODULE.resource("google_logging_metric", "scheduler_stopped")["filter"]
    assert "cloudaudit.googleapis.com%2Factivity" in metric
    assert 'protoPayload.serviceName="cloudscheduler.googleapis.com"' in metric
    # The method, whichever API version made the call (Cloud Scheduler's audit logging page
    # lists v1, v1beta1 and v1alpha1): a pause or a delete, never a resume or an update.
    method = re.search(r'protoPayload\.methodName=~"([^"]+)"', metric)
    assert method is not None, metric
    for version in ("v1", "v1beta1", "v1alpha1"):
        for name, counted in (("PauseJob", True), ("DeleteJob", True), ("ResumeJob", False),
                              ("UpdateJob", False), ("CreateJob", False)):  # fmt: skip
            called = f"google.cloud.scheduler.{version}.CloudScheduler.{name}"
            assert bool(re.search(method.group(1), called)) is counted, called
    # Only this deployment's jobs, named as the module names them; the name is a literal
    # in the regular expression (the module's names hold no metacharacter but "-").
    names = re.search(r'resourceName=~"/jobs/\$\{var\.name\}-\(([a-z|]+)\)\$"', metric)
    assert names is not None and set(names.group(1).split("|")) == set(jobs), metric
    assert MODULE.resource("google_cloud_scheduler_job", "job")["name"] == "${var.name}-${each.key}"
    policy = MODULE.resource("google_monitoring_alert_policy", "sweep_silence")
    filters = [c["condition_threshold"][0]["filter"] for c in policy["conditions"]
               if "condition_threshold" in c]  # fmt: skip
    # Monitoring refuses a condition on a log-based metric without a resource type.
    assert any(
        "google_logging_metric.scheduler_stopped.name" in f
        and 'resource.type=\\"cloud_scheduler_job\\"' in f
        for f in filters
    ), filters
    waited = MODULE.resource("time_sleep", "log_metrics")["triggers"]
    assert "google_logging_metric.scheduler_stopped.id" in str(waited)
