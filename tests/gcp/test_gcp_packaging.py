"""`jitc package gcp` builds the zip Terraform uploads; unpacked into a clean folder and run by
an interpreter that sees nothing else (no site-packages), its root `main.py` serves a signed
request through the real functions-framework app to a Cloud Task on the loopback GCP."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from gcpfake import FakeGcp
from gcpharness import QUEUE

from jitc.packaging import build
from jitc.signing import sign, signing_keypair

CHILD = r"""
import json, sys
folder = sys.argv[1]
sys.path[:0] = [folder]
import functions_framework, google.cloud.tasks_v2, pydantic, flask
import main
app = functions_framework.create_app(target="intake", source=folder + "/main.py")
event = json.loads(sys.stdin.read())
client = app.test_client()
answer = client.post("/v1/requests", data=event["body"].encode(), headers=event["headers"])
origins = {m.__name__: m.__file__ for m in (main, functions_framework, google.cloud.tasks_v2, pydantic, flask)}
print("RESULT " + json.dumps({"status": answer.status_code, "body": answer.get_json(),
                              "origins": origins, "entries": sorted(n for n in dir(main) if not n.startswith("_"))}))
"""


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("gcp", tmp_path_factory.mktemp("dist"))


def test_the_build_is_reproducible_and_holds_only_what_it_should(
    package: Path, tmp_path: Path
) -> None:
    again = build("gcp", tmp_path)
    assert (
        hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(package.read_bytes()).digest()
    )
    names = zipfile.ZipFile(package).namelist()
    assert "main.py" in names  # Cloud Functions load main.py at the source root
    assert "jitc/gcp/handlers.py" in names and "jitc/engine.py" in names
    assert "jitc/templates/gcp_iam.py" in names
    assert not [n for n in names if n.startswith(("core/", "gcp/", "aws/", "azure/", "tests/"))]
    # Compiled for the functions' Python when built with it (this suite runs 3.11): every module
    # has its bytecode, so no cold start compiles; nothing else is cached.
    manifest = json.loads(zipfile.ZipFile(package).read("jitc-package.json"))
    assert manifest["bytecode"] is (sys.version_info[:2] == (3, 11))
    pyc = {n for n in names if n.endswith(".pyc")}
    assert all("/__pycache__/" in n or n.startswith("__pycache__/") for n in pyc)
    sources = [n for n in names if n.endswith(".py")]
    if manifest["bytecode"]:
        for source in sources:
            folder, _, file = source.rpartition("/")
            cached = f"{folder}/__pycache__/" if folder else "__pycache__/"
            assert f"{cached}{file[:-3]}.cpython-311.pyc" in pyc, source
    else:
        assert not pyc
    assert (
        zipfile.ZipFile(package).read("main.py")
        == (Path(__file__).parents[2] / "gcp" / "main.py").read_bytes()
    )
    manifest = json.loads(zipfile.ZipFile(package).read("jitc-package.json"))
    assert manifest["cloud"] == "gcp" and any(
        r.startswith("google-cloud-tasks==") for r in manifest["requirements"]
    )


def test_the_unpacked_zip_serves_the_deployed_entry_points(package: Path, tmp_path: Path) -> None:
    fake = FakeGcp("jitc-pkg-test")
    try:
        fake.queues.add(QUEUE.replace(QUEUE.split("/")[1], "jitc-pkg-test"))
        queue = next(iter(fake.queues))
        intake_email, key = fake.service_account("jitc-intake")
        invoker, _ = fake.service_account("jitc-invoker")
        fake.bind(queue, "roles/cloudtasks.enqueuer", f"serviceAccount:{intake_email}")
        fake.bind(
            f"projects/-/serviceAccounts/{invoker}",
            "roles/iam.serviceAccountUser",
            f"serviceAccount:{intake_email}",
        )
        key_file = tmp_path / "key.json"
        key_file.write_text(json.dumps(key))
        private, public = signing_keypair()
        catalog = {
            "control_plane": {"keys": {"cp1": public}},
            "connector": {"label_key": "gcp-sm:projects/p-one/secrets/label/versions/1"},
            "integrations": {
                "db": {
                    "kind": "postgresql",
                    "connection": {"host": "10.0.0.5", "dbname": "d", "user": "u"},
                    "credentials": "gcp-sm:projects/p-one/secrets/s/versions/1",
                    "permissions": {"read": {"template": "read-only", "resources": ["public"]}},
                }
            },
        }
        folder = tmp_path / "source"
        with zipfile.ZipFile(package) as archive:
            archive.extractall(folder)
        body = json.dumps({"request_id": "pkg-1", "action": "revoke", "integration": "db"}).encode()
        envelope = sign(body, private, "cp1")
        env = {
            "PATH": os.environ.get("PATH", ""), "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
            "JITC_PROJECT": "jitc-pkg-test", "JITC_QUEUE": queue, "JITC_WORKER_URL": "http://127.0.0.1:9/",
            "JITC_INVOKER_EMAIL": invoker, "JITC_CATALOG": json.dumps(catalog), "JITC_TASKS_ENDPOINT": fake.url,
        }  # fmt: skip
        event: dict[str, Any] = {
            "body": body.decode(),
            "headers": {"Content-Type": "application/json", **envelope.headers()},
        }
        child = subprocess.run(
            [sys.executable, "-S", "-c", CHILD, str(folder)], input=json.dumps(event),
            capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert child.returncode == 0, child.stderr[-3000:]
        result = json.loads(
            next(x for x in child.stdout.splitlines() if x.startswith("RESULT ")).removeprefix(
                "RESULT "
            )
        )
        for name, origin in result["origins"].items():
            assert origin.startswith(str(folder)), (name, origin)
        assert {"intake", "worker", "sweep"} <= set(result["entries"])
        assert result["status"] == 202, child.stdout[-3000:] + child.stderr[-3000:]
        assert len(fake.tasks) == 1 and fake.violations == []
    finally:
        fake.close()
