"""The layout never shadows the Azure SDK, and `jitc package azure` builds the zip Terraform
deploys: unpacked into a clean folder and run by an interpreter that sees nothing else, its
`function_app.py` indexes the three functions and takes a signed request through the intake and
the worker to a real grant."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from pathlib import Path
from typing import Any

import azharness
import pytest
from azharness import PG_SCHEMA, http_request
from closure import connector_requirements, unmet_requirements

from jitc.models import derive_grant_id
from jitc.packaging import ROOT, build
from jitc.signing import signing_keypair

APP_FOLDER = ROOT / "azure"
# Names under the SDK's `azure` namespace (installed here, plus those of Azure SDKs a company
# might add): a module of ours with one of these names would shadow it when the repository root
# is on sys.path (as `python -m pytest` puts it).
SDK_NAMES = {
    "ai", "appconfiguration", "batch", "common", "communication", "containerregistry", "core",
    "cosmos", "data", "durable_functions", "eventgrid", "eventhub", "functions", "identity",
    "keyvault", "mgmt", "monitor", "profiles", "search", "servicebus", "storage", "synapse",
}  # fmt: skip


def test_the_app_folder_never_shadows_the_sdk_namespace() -> None:
    assert not (APP_FOLDER / "__init__.py").exists()
    site = Path(sysconfig.get_paths()["purelib"]) / "azure"
    installed = {p.stem for p in site.iterdir() if not p.name.startswith("_")}
    ours = {p.stem for p in APP_FOLDER.iterdir() if p.suffix == ".py" or p.is_dir()}
    assert not ours & (installed | SDK_NAMES), ours & (installed | SDK_NAMES)


def test_the_test_process_imports_the_sdk_even_with_the_repository_on_sys_path() -> None:
    import azure.functions
    import azure.identity
    import azure.keyvault.secrets
    import azure.storage.queue

    assert str(ROOT) in [str(Path(p).resolve()) for p in sys.path if p] or "" in sys.path
    for module in (azure.functions, azure.identity, azure.keyvault.secrets, azure.storage.queue):
        assert module.__file__ is not None and "site-packages" in module.__file__, module
    # And so does a fresh interpreter started in the repository root, the worst case.
    child = subprocess.run(
        [sys.executable, "-c", "import azure.functions, azure.keyvault.secrets as k; print(k.__file__)"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert child.returncode == 0 and "site-packages" in child.stdout, child.stderr


def test_host_json_and_the_code_agree() -> None:
    from jitc.azure import worker

    host = json.loads((APP_FOLDER / "host.json").read_text())
    queues = host["extensions"]["queues"]
    assert queues["maxDequeueCount"] == worker.MAX_DEQUEUE_COUNT
    # What the app's client writes (base64 text) is what the trigger decodes.
    assert queues["messageEncoding"] == "base64"
    assert host["version"] == "2.0"


def test_the_deployed_entry_file_indexes_four_functions() -> None:
    import function_app_loader

    app = function_app_loader.load()
    functions = {f.get_function_name(): f for f in app.get_functions()}
    assert set(functions) == {"intake", "worker", "sweep", "sync"}
    bindings = {
        name: json.loads(f.get_function_json())["bindings"] for name, f in functions.items()
    }
    [trigger] = [b for b in bindings["worker"] if b["direction"] == "IN"]
    assert trigger["type"] == "queueTrigger" and trigger["connection"] == "JitcQueue"
    assert trigger["queueName"] == "%JITC_QUEUE_NAME%"
    [http] = [b for b in bindings["intake"] if b["type"] == "httpTrigger"]
    assert http["authLevel"] == "FUNCTION" and http["methods"] == ["POST"]
    assert http["route"] == "v1/requests"
    [timer] = [b for b in bindings["sweep"] if b["type"] == "timerTrigger"]
    assert timer["schedule"] == "%JITC_SWEEP_SCHEDULE%"
    [timer] = [b for b in bindings["sync"] if b["type"] == "timerTrigger"]
    assert timer["schedule"] == "%JITC_SYNC_SCHEDULE%"


CHILD = r"""
import json, sys
folder = sys.argv[1]
sys.path[:0] = [folder]
import azure.functions as func, azure.storage.queue, azure.storage.blob, pydantic
from azure.functions.queue import QueueMessage
import function_app
request = json.loads(sys.stdin.read())
functions = {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}
http = func.HttpRequest(method="POST", url="https://x/api/v1/requests", headers=request["headers"],
                        params={}, route_params={}, body=request["body"].encode())
response = functions["intake"](http)
from jitc.azure import runtime
got = list(runtime.queue()._client.receive_messages(messages_per_page=32))
statuses = []
for m in got:
    message = QueueMessage(id=m.id, body=m.content.encode(), dequeue_count=m.dequeue_count,
                           pop_receipt=m.pop_receipt)
    functions["worker"](message)
    runtime.queue()._client.delete_message(m)
    statuses.append("done")
origins = {m.__name__: m.__file__ for m in (func, azure.storage.queue, azure.storage.blob, pydantic,
                                            function_app)}
print("RESULT " + json.dumps({"origins": origins, "intake": response.status_code,
                              "functions": sorted(functions), "worker": statuses}))
"""


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("azure", tmp_path_factory.mktemp("dist"))


def test_the_build_is_reproducible_and_holds_only_what_it_should(
    package: Path, tmp_path: Path
) -> None:
    again = build("azure", tmp_path)
    assert (
        hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(package.read_bytes()).digest()
    )
    names = zipfile.ZipFile(package).namelist()
    assert "function_app.py" in names and "host.json" in names
    assert "jitc/azure/worker.py" in names and "jitc/engine.py" in names
    assert "jitc/azure/__init__.py" not in names
    # The SDK's azure/ is the only top-level azure/ in the zip, and none of our modules is in it.
    ours = {p.name for p in APP_FOLDER.glob("*.py")} - {"function_app.py"}
    assert not [n for n in names if n.startswith("azure/") and n.split("/", 1)[1] in ours]
    assert not [n for n in names if n.startswith(("core/", "tests/", "bench/", "infra/", "aws/"))]
    manifest = json.loads(zipfile.ZipFile(package).read("jitc-package.json"))
    assert manifest["cloud"] == "azure" and "azure-functions==1.26.0" in manifest["requirements"]


def test_every_packaged_distribution_finds_what_it_requires(package: Path, tmp_path: Path) -> None:
    # The pins are installed with --no-deps: a dependency missing from them would be missing
    # from the zip, and the function would fail at its first import in the cloud.
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    pins = json.loads((folder / "jitc-package.json").read_text())["requirements"]
    roots = [*pins, *connector_requirements("azure")]
    assert unmet_requirements(folder, roots) == []
    # And it would be seen where no pin says it: psycopg[binary] (the connector's own extra)
    # asks for psycopg-binary of exactly psycopg's version.
    (info,) = folder.glob("psycopg_binary-*.dist-info")
    metadata = info / "METADATA"
    metadata.write_text(re.sub(r"(?m)^Version: .*$", "Version: 3.0.0", metadata.read_text()))
    pins = [p if not p.startswith("psycopg-binary==") else "psycopg-binary==3.0.0" for p in pins]
    unmet = unmet_requirements(folder, [*pins, *connector_requirements("azure")])
    assert [u for u in unmet if u.startswith("psycopg-binary==")], unmet


def test_the_unpacked_zip_runs_the_deployed_entry_file(
    package: Path, cloud: azharness.Cloud, pg_admin: Any, tmp_path: Path
) -> None:
    vault = cloud.vault
    vault.put("pkg-pg-admin", json.dumps({"password": "x"}))
    vault.put("pkg-label", "label-key-" + "p" * 24)
    sign_private, sign_public = signing_keypair()
    catalog = {
        "connector": {"label_key": vault.reference("pkg-label")},
        "integrations": azharness.pg_integration(
            "azpkg", vault.reference("pkg-pg-admin", "password")
        ),
    }
    deployment = azharness.deploy(
        cloud, catalog, sign_public=sign_public, sign_private=sign_private,
        secret_names=["pkg-pg-admin", "pkg-label"],
    )  # fmt: skip
    folder = tmp_path / "wwwroot"
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    rid = f"pkg-{uuid.uuid4().hex[:8]}"
    body = {
        "request_id": rid, "action": "grant", "integration": "azpkg", "permission": "read",
        "resources": [PG_SCHEMA], "duration": "10m",
        "identity": {"email": "pkg@example.com", "public_key": deployment.box_public},
    }  # fmt: skip
    request = http_request(deployment, body)
    payload = {"headers": dict(request.headers), "body": request.get_body().decode()}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -S: no site-packages; run from the repository root, where `azure/` is our app folder.
    child = subprocess.run(
        [sys.executable, "-S", "-c", CHILD, str(folder)],
        input=json.dumps(payload), capture_output=True, text=True, env=env, timeout=120,
        cwd=ROOT,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    line = next(x for x in child.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    for name, origin in result["origins"].items():
        assert origin.startswith(str(folder)), (name, origin)
    assert result["functions"] == ["intake", "sweep", "sync", "worker"]
    assert result["intake"] == 202 and result["worker"] == ["done"]
    row = pg_admin.execute(
        "SELECT count(*) FROM pg_roles r JOIN pg_shdescription d ON d.objoid = r.oid "
        "WHERE d.description LIKE %s",
        (f'%"grant_id":"{derive_grant_id("azpkg", rid)}"%',),
    ).fetchone()
    assert row == (1,)
