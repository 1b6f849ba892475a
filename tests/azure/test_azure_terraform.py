"""The Azure module read as data: what the Flex Consumption app is given, what it may do, where,
and that its alerts query the events the code writes. (The flows under these rights are in
test_azure_flow.py and test_azure_rbac.py; checkov and `terraform fmt` run in .ci/run.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import tfazure
import yaml

from jitc.azure import runtime

MODULE = tfazure.load()

# App settings a Flex Consumption app refuses (the platform owns them).
FLEX_FORBIDDEN = {
    "FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING", "WEBSITE_CONTENTSHARE", "AzureWebJobsStorage",
    "WEBSITE_NODE_DEFAULT_VERSION", "SCM_DO_BUILD_DURING_DEPLOYMENT", "ENABLE_ORYX_BUILD",
}  # fmt: skip


def app() -> dict[str, object]:
    return MODULE.resources[("azurerm_function_app_flex_consumption", "app")]


def test_the_app_is_python_311_on_flex_consumption_from_the_package() -> None:
    body = app()
    assert body["runtime_name"] == "python" and body["runtime_version"] == "3.11"
    assert "var.package_zip" in str(body["zip_deploy_file"])
    assert MODULE.resources[("azurerm_service_plan", "app")]["sku_name"] == "FC1"
    assert body["storage_authentication_type"] == "UserAssignedIdentity"
    assert body["https_only"] is True


def test_app_settings_are_what_the_code_reads_and_nothing_flex_refuses() -> None:
    settings = app()["app_settings"]
    assert isinstance(settings, dict)
    assert not FLEX_FORBIDDEN & set(settings)
    source = Path(runtime.__file__).read_text()
    read = set(re.findall(r'_env\("([A-Za-z_]+)"\)|get\("([A-Za-z_]+)"\)', source))
    needed = {a or b for a, b in read} | {f"{runtime.CONNECTION}__queueServiceUri"}
    optional = {"JITC_CATALOG_PATH", "JITC_CA_BUNDLE", "JITC_KEY_VAULT_DNS_SUFFIX"}
    assert needed - optional <= set(settings), needed - optional - set(settings)
    sync_source = (Path(runtime.__file__).parent / "sync.py").read_text()
    sync_needed = set(re.findall(r'required_env\(\s*"([A-Za-z_]+)"', sync_source))
    assert sync_needed and sync_needed <= set(settings), sync_needed - set(settings)
    from jitc.azure import scheduled

    assert {job.schedule_setting for job in scheduled.JOBS.values()} <= set(settings)
    # Identity-based connections only: no connection string, no key anywhere.
    assert settings["JitcQueue__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert not [k for k in settings if "ConnectionString" in k or k.endswith("Key")]


def test_the_storage_account_takes_entra_id_tokens_only() -> None:
    account = MODULE.resources[("azurerm_storage_account", "app")]
    assert account["shared_access_key_enabled"] is False
    assert account["min_tls_version"] == "TLS1_2"
    assert account["https_traffic_only_enabled"] is True
    assert account["default_to_oauth_authentication"] is True


def test_every_right_is_on_a_named_resource_never_an_account_or_group() -> None:
    rendered = tfazure.render(
        {
            "name": "t",
            "key_vault_id": "/subscriptions/s/resourceGroups/g/providers/Microsoft.KeyVault/vaults/v",
            "key_vault_secret_names": ["a", "b"],
            "rbac_scopes": ["/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/x"],
            "rbac_role_ids": ["acdd72a7-3385-48ef-bd42-f606fba81ae7"],
            "rbac_pim": True,
            "control_plane_principal_id": None,
        },
        storage_account_id="/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/acct",
        principal="APP",
    )
    by_role: dict[str, list[str]] = {}
    for assignment in rendered.assignments:
        assert assignment.principal == "APP"
        by_role.setdefault(assignment.role.split(":", 1)[1], []).append(assignment.scope)
    assert sorted(by_role["Key Vault Secrets User"]) == [
        "/subscriptions/s/resourceGroups/g/providers/Microsoft.KeyVault/vaults/v/secrets/a",
        "/subscriptions/s/resourceGroups/g/providers/Microsoft.KeyVault/vaults/v/secrets/b",
    ]
    assert all(
        re.search(r"/queueServices/default/queues/t-requests(-poison)?$", s)
        for s in by_role["Storage Queue Data Contributor"]
    )
    assert all("/blobServices/default/containers/" in s for s in by_role["Storage Blob Data Owner"])
    assert sorted(by_role["Storage Blob Data Contributor"]) == [
        "/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/acct"
        f"/blobServices/default/containers/{name}"
        for name in ("jitc-inventory-state", "jitc-rbac-ledger")
    ]
    assert by_role["rbac_target"] == [
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/x"
    ]
    for role in ("Owner", "Contributor", "User Access Administrator"):
        assert role not in by_role
    actions = tfazure.rbac_actions(MODULE, pim=True)
    assert all(
        a.startswith(("Microsoft.Authorization/roleAssignments/", "Microsoft.Authorization/roleDefinitions/read",
                      "Microsoft.Authorization/roleAssignmentScheduleRequests/"))
        for a in actions
    )  # fmt: skip
    [target] = [a for a in rendered.assignments if a.role.endswith("rbac_target")]
    assert target.allowed_roles == frozenset({"acdd72a7-3385-48ef-bd42-f606fba81ae7"})


def test_the_rbac_ledger_right_and_its_lifecycle_rule() -> None:
    """The ledger container's right exists only with an RBAC target; the app setting names the
    container the right is on; the lifecycle rule deletes idle lock blobs there and never a
    tombstone (the sweep forgets each at its own time)."""
    variables = {
        "name": "t", "resource_group_name": "g", "key_vault_id": "/kv",
        "key_vault_secret_names": [], "rbac_scopes": [], "rbac_role_ids": [], "rbac_pim": False,
        "control_plane_principal_id": None,
    }  # fmt: skip
    account = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/a"
    without = tfazure.render(variables, storage_account_id=account, principal="APP")
    assert not [a for a in without.assignments if a.role.startswith("rbac_ledger:")]
    variables["rbac_scopes"] = ["/subscriptions/00000000-0000-0000-0000-000000000000"]
    rendered = tfazure.render(variables, storage_account_id=account, principal="APP")
    [right] = [a for a in rendered.assignments if a.role.startswith("rbac_ledger:")]
    settings = rendered.app_settings("https://a.queue/", "{}", "https://a.blob/")
    container = settings["JITC_RBAC_LEDGER_URL"].removeprefix("https://a.blob/")
    assert right.scope == f"{account}/blobServices/default/containers/{container}"
    [policy] = MODULE.of_kind("azurerm_storage_management_policy").values()
    rules = policy["rule"]
    assert [r["filters"][0]["prefix_match"] for r in rules] == [
        ["${azurerm_storage_container.rbac_ledger.name}/locks/"]
    ]
    from jitc.templates import azure_rbac_ledger

    assert azure_rbac_ledger.LOCKS == "locks/"


def test_alerts_query_the_events_the_code_writes() -> None:
    text = MODULE.texts["alerts.tf"]
    code = "".join(
        (Path(runtime.__file__).parent / name).read_text() for name in ("worker.py", "scheduled.py")
    )
    for event in ("poison queue not empty", "moving to the poison queue", "sweep completed"):
        assert event in text and event in code, event
    alerts = MODULE.of_kind("azurerm_monitor_scheduled_query_rules_alert_v2")
    assert set(alerts) == {"app", "sync_silence"}
    sync_code = (Path(runtime.__file__).parent / "sync.py").read_text()
    assert "inventory sync completed" in alerts["sync_silence"]["criteria"][0]["query"]
    assert "inventory sync completed" in sync_code
    assert set(re.findall(r"^    (\w+) = \{", text, re.MULTILINE)) == {
        "poison", "failures", "sweep_silence",
    }  # fmt: skip


def test_the_example_derives_the_modules_inputs_from_its_catalog() -> None:
    from jitc.catalog import load_catalog

    path = tfazure.EXAMPLE / "catalog.yaml"
    load_catalog(path)  # the example's catalog is valid
    doc = yaml.safe_load(path.read_text())
    references = [i["credentials"] for i in doc["integrations"].values() if i.get("credentials")]
    references += [
        doc["connector"][k] for k in ("label_key", "signing_key") if k in doc["connector"]
    ]
    # The example's expression: split("/", split("#", r)[0])[4]
    names = sorted({r.split("#")[0].split("/")[4] for r in references})
    assert names == ["jitc-label-key", "orders-db-admin"]
    main = (tfazure.EXAMPLE / "main.tf").read_text()
    assert 'split("/", split("#", r)[0])[4]' in main
    assert "rbac_role_ids              = local.rbac_roles" in main


def test_the_package_push_can_authenticate() -> None:
    """azurerm pushes zip_deploy_file to the SCM site with the site's publishing credentials
    over Basic auth (azurerm issue #25775: with Basic auth off the push gets 401 and `terraform
    apply` fails at the package). So Basic auth is on exactly when Terraform pushes the package,
    and an `external` deployment (Entra ID token) keeps both off."""
    body = app()
    condition = 'var.package_deploy == "terraform"'
    pushed = str(body["zip_deploy_file"]).replace(" ", "")
    assert pushed == "${" + condition.replace(" ", "") + "?var.package_zip:null}"
    assert str(body["webdeploy_publish_basic_authentication_enabled"]) == "${" + condition + "}"
    assert MODULE.variables["package_deploy"]["default"] == "terraform"


# The module's own resource group in the plans below, and a catalog's azure_rbac integration.
OWN_SUB = "11111111-2222-3333-4444-555555555555"
OWN = f"/subscriptions/{OWN_SUB}/resourceGroups/jitc"
ACCOUNT = f"{OWN}/providers/Microsoft.Storage/storageAccounts/jitcjitcabc123"


def _rbac_catalog(scopes: list[str], resources: list[str]) -> dict[str, Any]:
    return {
        "integrations": {
            "db": {"kind": "postgresql", "permissions": {"r": {"resources": [ACCOUNT]}}},
            "rbac": {
                "kind": "azure_rbac",
                "connection": {"scopes": scopes},
                "permissions": {"p": {"resources": resources}},
            },
        }
    }


@pytest.fixture(scope="module")
def own_scope_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """own_scope.tf with the module's variables it reads, and the subscription the provider
    would report given as a variable: Terraform plans it offline (terraform_data is built in)."""
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not installed here")
    folder = tmp_path_factory.mktemp("ownscope")
    text = MODULE.texts["own_scope.tf"]
    reference = "data.azurerm_client_config.current.subscription_id"
    assert text.count(reference) == 1
    variables = MODULE.texts["variables.tf"]
    blocks = [
        variables[variables.index(f'variable "{name}" {{') :].split("\n}\n", 1)[0] + "\n}\n"
        for name in ("resource_group_name", "catalog_file", "rbac_scopes")
    ]
    (folder / "main.tf").write_text(
        text.replace(reference, "var.subscription_id")
        + 'variable "subscription_id" {\n  type = string\n}\n'
        + "\n".join(blocks)
    )
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    subprocess.run(["terraform", "init", "-input=false", "-no-color"], cwd=folder, env=env,
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    return folder


@pytest.mark.parametrize(
    ("rbac_scopes", "catalog", "accepted"),
    [
        ([f"/subscriptions/{OWN_SUB}/resourceGroups/app-prod"], None, True),
        ([f"/subscriptions/{OWN_SUB}/resourceGroups/jitc-other"], None, True),  # a prefix only
        (["/subscriptions/99999999-2222-3333-4444-555555555555"], None, True),
        ([OWN], None, False),
        ([f"/subscriptions/{OWN_SUB}/resourceGroups/JITC"], None, False),  # ARM ignores case
        ([f"/subscriptions/{OWN_SUB}"], None, False),  # holds it
        ([ACCOUNT], None, False),  # lies in it
        ([f"{OWN}/providers/Microsoft.Web/sites/jitc-jitc-abc123"], None, False),
        ([], _rbac_catalog([f"subscriptions/{OWN_SUB}/resourceGroups/app"], [ACCOUNT[1:]]), False),
        ([], _rbac_catalog([OWN[1:]], []), False),
        ([], _rbac_catalog([f"subscriptions/{OWN_SUB}/resourceGroups/app"], []), True),
    ],
)  # fmt: skip
def test_no_rbac_scope_covers_the_connectors_own_resource_group(
    own_scope_dir: Path,
    tmp_path: Path,
    rbac_scopes: list[str],
    catalog: dict[str, Any] | None,
    accepted: bool,
) -> None:
    """A role the connector hands out over its own resource group (Storage Account Contributor
    is not privileged by ARM's measure) would let the grantee turn shared keys on, delete the
    ledger's tombstones or replace the package: the plan refuses such rbac_scopes and catalog
    azure_rbac scopes (connection scopes, permission resources) and nothing else."""
    catalog_file = tmp_path / "catalog.json"
    catalog_file.write_text(json.dumps(catalog or {"integrations": {}}))
    values = {
        "subscription_id": OWN_SUB,
        "resource_group_name": "jitc",
        "catalog_file": str(catalog_file),
        "rbac_scopes": rbac_scopes,
    }
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    done = subprocess.run(
        ["terraform", "plan", "-input=false", "-no-color", "-lock=false", "-refresh=false",
         *[f"-var={k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]],
        cwd=own_scope_dir, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert (done.returncode == 0) == accepted, output
    if not accepted:
        assert "connector's own resource group" in " ".join(output.split()), output
    # The template refuses the same at grant time, from this app setting.
    assert app()["app_settings"]["JITC_AZURE_OWN_SCOPE"] == "${local.own_scope}"  # type: ignore[index]
