"""`jitc package gcp` builds the zip Terraform uploads. Unpacked, it is installed the way Google's
Python buildpack installs a function's source: a fresh virtual environment, `pip install -r
requirements.txt` with the buildpack's options, offline from the folder the module names in
GOOGLE_VENDOR_PIP_DEPENDENCIES (`--no-index --find-links`), then `pip check`. That environment's
functions-framework then serves the root `main.py`, which finds `jitc` through the source folder
that functions-framework appends to `sys.path` (as on Cloud Run), and a signed request reaches a
Cloud Task on the loopback GCP.

GoogleCloudPlatform/buildpacks: pkg/python/python.go (InstallRequirements: the pip options, and
`--no-index --find-links $GOOGLE_VENDOR_PIP_DEPENDENCIES`), cmd/python/pip/lib/lib.go (`pip
check` after the install), cmd/python/functions_framework/lib/lib.go (without functions-framework
in requirements.txt its own requirements are added, or the build is refused when the
dependencies are vendored) and pkg/python/dependencies.go (how it looks for functions-framework).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tfgcp
from gcpfake import FakeGcp
from gcpharness import QUEUE
from tfmodule import load

from jitc.packaging import build
from jitc.signing import sign, signing_keypair

PINS = Path(__file__).parents[2] / "gcp" / "requirements.txt"
# pkg/python/dependencies.go: the buildpack's test for functions-framework in requirements.txt.
FRAMEWORK = re.compile(r"(?m)^functions-framework\b([^-]|$)")
# pkg/python/python.go, InstallRequirements (--user aside: here a virtual environment holds them).
BUILDPACK_PIP = [
    "-m", "pip", "install", "--requirement", "requirements.txt", "--upgrade",
    "--upgrade-strategy", "only-if-needed", "--no-warn-script-location", "--no-warn-conflicts",
    "--force-reinstall", "--no-compile", "--disable-pip-version-check", "--no-cache-dir",
]  # fmt: skip

CHILD = r"""
import json, sys
folder = sys.argv[1]
import functions_framework
app = functions_framework.create_app(target="intake", source=folder + "/main.py")
import main, jitc, google.cloud.tasks_v2, pydantic, flask
event = json.loads(sys.stdin.read())
client = app.test_client()
answer = client.post("/v1/requests", data=event["body"].encode(), headers=event["headers"])
origins = {m.__name__: m.__file__
           for m in (main, jitc, functions_framework, google.cloud.tasks_v2, pydantic, flask)}
print("RESULT " + json.dumps({"status": answer.status_code, "body": answer.get_json(),
                              "origins": origins, "entries": sorted(n for n in dir(main) if not n.startswith("_"))}))
"""

VERSIONS = r"""
import importlib, importlib.metadata, json, sys
names = json.loads(sys.argv[1])
modules = {m: importlib.import_module(m).__file__
           for m in ("functions_framework", "flask", "pydantic", "psycopg", "google.cloud.tasks_v2")}
print("RESULT " + json.dumps({"versions": {n: importlib.metadata.version(n) for n in names},
                              "modules": modules, "prefix": sys.prefix}))
"""


@dataclass(frozen=True)
class Deployed:
    source: Path  # the unpacked zip, as the buildpack's workspace
    python: Path  # the interpreter of the environment its requirements went into


def _pins() -> dict[str, str]:
    lines = [x.strip() for x in PINS.read_text().splitlines() if x.strip() and x[0] != "#"]
    return dict(line.split("==") for line in lines)


def _isolated_pip_env() -> dict[str, str]:
    """No pip configuration of this machine (its extra indexes, find-links, constraints): only
    what the command line says, as in the buildpack's build."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    return {**env, "PIP_CONFIG_FILE": os.devnull}


def _vendored_folder() -> str:
    module = load(tfgcp.MODULE)
    build_config = module.resource("google_cloudfunctions2_function", "function")["build_config"]
    folder = build_config[0]["environment_variables"]["GOOGLE_VENDOR_PIP_DEPENDENCIES"]
    assert isinstance(folder, str)
    return folder


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("gcp", tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def deployed(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    """The zip unpacked and its requirements installed as the buildpack does (python311)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("the zip's wheels are for manylinux2014_x86_64")
    python = sys.executable if sys.version_info[:2] == (3, 11) else shutil.which("python3.11")
    if python is None:
        pytest.skip("no Python 3.11 to install the zip's cp311 wheels into")
    folder = tmp_path_factory.mktemp("workspace")
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    venv = tmp_path_factory.mktemp("layer") / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = venv / "bin" / "python"
    vendored = ["--no-index", "--find-links", _vendored_folder()]
    for command in ([*BUILDPACK_PIP, *vendored], ["-m", "pip", "check"]):
        done = subprocess.run(
            [installed, *command], cwd=folder, env=_isolated_pip_env(),
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, [*command[:3], done.stdout[-3000:], done.stderr[-3000:]]
    return Deployed(folder, installed)


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
    # The cut discovery documents the gcp_iam and Pub/Sub clients are built from.
    from jitc.templates import discovery

    for name, version in discovery.METHODS:
        document = f"jitc/templates/discovery_documents/{name}.{version}.json"
        assert zipfile.ZipFile(package).read(document) == (
            discovery.FOLDER / f"{name}.{version}.json"
        ).read_bytes()
    assert not [n for n in names if n.startswith(("core/", "gcp/", "aws/", "azure/", "tests/"))]
    # No dependency unpacked beside the connector: they are wheels, which the buildpack installs.
    manifest = json.loads(zipfile.ZipFile(package).read("jitc-package.json"))
    top = {"main.py", "jitc", "requirements.txt", "wheels", "jitc-package.json"}
    assert {n.split("/")[0] for n in names} == top | (
        {"__pycache__"} if manifest["bytecode"] else set()
    )
    wheels = [n for n in names if n.startswith("wheels/")]
    assert len(wheels) == len(_pins()) and all(n.endswith(".whl") for n in wheels)
    assert all(n.count("/") == 1 for n in wheels)
    for wheel in wheels:  # for CPython 3.11 on Linux x86_64 (the runtime python311)
        _, abi, tag = wheel.removesuffix(".whl").rsplit("-", 2)
        assert abi in ("none", "abi3", "cp311"), wheel
        assert tag == "any" or ("manylinux" in tag and tag.endswith("x86_64")), wheel
    # Compiled for the functions' Python when built with it (this suite runs 3.11): every module
    # has its bytecode, so no cold start compiles; nothing else is cached.
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
    assert zipfile.ZipFile(package).read("main.py") == (PINS.parent / "main.py").read_bytes()
    assert manifest["cloud"] == "gcp" and any(
        r.startswith("google-cloud-tasks==") for r in manifest["requirements"]
    )


def test_the_requirements_name_functions_framework_and_the_hash_of_every_wheel(
    package: Path,
) -> None:
    """The buildpack adds its own functions-framework and dependencies (fetched at build time,
    ahead of the source folder on `sys.path`) unless requirements.txt names it, and refuses a
    build with vendored dependencies that does not; each pin carries its wheel's sha256, so
    pip installs those wheels and no other."""
    archive = zipfile.ZipFile(package)
    requirements = archive.read("requirements.txt").decode()
    assert FRAMEWORK.search(requirements)
    digests = {
        hashlib.sha256(archive.read(n)).hexdigest(): n.removeprefix("wheels/")
        for n in archive.namelist()
        if n.startswith("wheels/")
    }
    lines = [x for x in requirements.splitlines() if x and not x.startswith("#")]
    assert len(lines) == len(_pins()) == len(digests)
    for line, (name, version) in zip(lines, _pins().items(), strict=True):
        pin, hashed = line.split(" --hash=sha256:")
        assert pin == f"{name}=={version}"
        wheel = digests[hashed]
        assert re.sub(r"[-_.]+", "-", wheel.split("-")[0]).lower() == name.lower(), (pin, wheel)
        assert wheel.split("-")[1] == version, (pin, wheel)


def test_the_buildpack_installs_the_pinned_versions_offline(deployed: Deployed) -> None:
    child = subprocess.run(
        [deployed.python, "-I", "-c", VERSIONS, json.dumps(sorted(_pins()))],
        capture_output=True, text=True, timeout=120, cwd=deployed.source.parent,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(
        next(x for x in child.stdout.splitlines() if x.startswith("RESULT ")).removeprefix(
            "RESULT "
        )
    )
    assert result["versions"] == _pins()
    for name, origin in result["modules"].items():
        assert origin.startswith(result["prefix"] + "/lib/"), (name, origin)


def test_a_wheel_that_is_not_the_packaged_one_is_refused(
    deployed: Deployed, tmp_path: Path
) -> None:
    source = tmp_path / "workspace"
    shutil.copytree(deployed.source, source)
    wheel = next((source / _vendored_folder()).glob("blinker-*.whl"))
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    vendored = ["--no-index", "--find-links", _vendored_folder()]
    done = subprocess.run(
        [deployed.python, *BUILDPACK_PIP, *vendored, "--dry-run"], cwd=source,
        env=_isolated_pip_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert "DO NOT MATCH THE HASHES" in done.stderr and "blinker" in done.stderr, done.stderr


def test_the_unpacked_zip_serves_the_deployed_entry_points(
    deployed: Deployed, tmp_path: Path
) -> None:
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
        folder = deployed.source
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
            [deployed.python, "-I", "-c", CHILD, str(folder)], input=json.dumps(event),
            capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert child.returncode == 0, child.stderr[-3000:]
        result = json.loads(
            next(x for x in child.stdout.splitlines() if x.startswith("RESULT ")).removeprefix(
                "RESULT "
            )
        )
        # The connector from the source folder, every library from the installed environment.
        origins = result["origins"]
        assert origins.pop("main") == str(folder / "main.py")
        assert origins.pop("jitc").startswith(str(folder / "jitc") + "/")
        for name, origin in origins.items():
            assert origin.startswith(str(deployed.python.parents[1] / "lib") + "/"), (name, origin)
        assert {"intake", "worker", "sweep"} <= set(result["entries"])
        assert result["status"] == 202, child.stdout[-3000:] + child.stderr[-3000:]
        assert len(fake.tasks) == 1 and fake.violations == []
    finally:
        fake.close()


def test_the_source_compiled_by_the_buildpack_stays_valid_in_the_image(
    package: Path, tmp_path: Path
) -> None:
    """The buildpack compiles the source again (`python3 -m compileall -f -q .`, lib.go) with
    the build's environment, and the image's export sets every file's time to 1980-01-01
    00:00:01: bytecode checked against the source's time would be stale in every instance and
    every module compiled again at every cold start. With the module's SOURCE_DATE_EPOCH it is
    checked against the source's hash, and loads."""
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the functions' bytecode is CPython 3.11's")
    module = load(tfgcp.MODULE)
    build_config = module.resource("google_cloudfunctions2_function", "function")["build_config"]
    build_env = build_config[0]["environment_variables"]
    with zipfile.ZipFile(package) as archive:
        archive.extractall(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "PYTHONPATH")}
    subprocess.run(
        [sys.executable, "-m", "compileall", "-f", "-q", "jitc", "main.py"],
        cwd=tmp_path, env={**env, **build_env}, check=True, timeout=300,
    )  # fmt: skip
    exported = 315532801
    for path in tmp_path.rglob("*"):
        os.utime(path, (exported, exported), follow_symlinks=False)
    loaded = subprocess.run(
        # The unpacked folder first on the path (-c), as the function's source is.
        [sys.executable, "-v", "-c", "import jitc.catalog, jitc.engine, jitc.gcp.handlers"],
        cwd=tmp_path, env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    ours = [line for line in loaded.stderr.splitlines() if str(tmp_path) in line]
    assert sum("code object from" in line for line in ours) > 20, ours[:20]
    # "bytecode is stale for 'jitc.catalog'": the import then compiles the source again.
    stale = [line for line in loaded.stderr.splitlines() if "bytecode is stale for 'jitc" in line]
    assert not stale, stale[:5]
