"""`jitc package CLOUD`: one deployable zip per cloud, from `core/`, that cloud's folder and its
pinned requirements (`<cloud>/requirements.txt`), installed for the cloud's platform, or, where
the platform installs them itself (gcp), shipped as wheels with the requirements file it reads.

The zip is reproducible (sorted entries, fixed timestamps and modes), so the same sources give
the same bytes and Terraform's source hash changes only when the code or a pin does (and the
builder's Python: built with the functions' version, the zip carries compiled bytecode, which
saves every cold start compiling the sources; built with another, it carries sources alone).
Each cloud keeps its platform's entry-file convention:

Every zip holds one import package, `jitc` (from `core/`), with the cloud's folder as its
subpackage (`jitc.aws` from `aws/`), so nothing the connector ships can collide with another
distribution's top-level name:

- aws: `jitc/` and `jitc/aws/`; Lambda handlers are `jitc.aws.<module>.handler`.
- gcp: `jitc/` and `jitc/gcp/`, and `gcp/main.py` copied to the root, where Cloud Functions
  load it. No dependency is unpacked: Google's Python buildpack installs `requirements.txt` at
  the root whatever the zip holds (and, without functions-framework in it, adds its own
  functions-framework, Flask and the rest, fetched at build time, ahead of the source folder on
  `sys.path`). So the zip carries `requirements.txt` (every pin, each with the sha256 of its
  wheel) and the wheels in `wheels/`, which the buildpack installs offline with
  `GOOGLE_VENDOR_PIP_DEPENDENCIES=wheels` (set by infra/terraform/gcp): the functions run the
  versions that were tested, and a wheel that is not the one packaged is refused.
- azure: `jitc/` and `jitc/azure/`, and `function_app.py` and `host.json` at the app root; never
  a top-level `azure/` folder, which would shadow the Azure SDK's namespace.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


@dataclass(frozen=True)
class Layout:
    packages: tuple[tuple[str, str], ...]  # (folder in the zip, source folder)
    root_files: tuple[str, ...] = ()
    platform: str = "manylinux2014_x86_64"
    python_version: str = "3.11"
    # None: the requirements are installed into the zip. A folder: they are downloaded into it as
    # wheels, with a hashed requirements.txt at the root, for a platform that installs them.
    wheels: str | None = None


LAYOUTS: dict[str, Layout] = {
    "aws": Layout(packages=(("jitc", "core"), ("jitc/aws", "aws"))),
    "gcp": Layout(
        packages=(("jitc", "core"), ("jitc/gcp", "gcp")),
        root_files=("gcp/main.py",),
        wheels="wheels",
    ),
    "azure": Layout(
        packages=(("jitc", "core"), ("jitc/azure", "azure")),
        root_files=("azure/function_app.py", "azure/host.json"),
    ),
}


def _copy_tree(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if any(part in SKIP_DIRS for part in relative.parts) or path.suffix in SKIP_SUFFIXES:
            continue
        if path.name == "requirements.txt" and path.parent == source:
            continue
        destination = target / relative
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)


def _pip(
    action: list[str], requirements: Path, layout: Layout, platform: str, wheelhouse: Path | None
) -> None:
    command = [
        sys.executable, "-m", "pip", *action, "--quiet", "--disable-pip-version-check",
        "--no-deps", "--only-binary=:all:",
        "--platform", platform, "--python-version", layout.python_version,
        "--implementation", "cp", "-r", str(requirements),
    ]  # fmt: skip
    if wheelhouse is not None:
        command += ["--no-index", "--find-links", str(wheelhouse)]
    subprocess.run(command, check=True)  # noqa: S603 - our own interpreter and arguments


def _pins(requirements: Path) -> list[str]:
    return [
        line.strip()
        for line in requirements.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _hashed_requirements(requirements: Path, wheels: Path) -> str:
    """The pins of `requirements`, each with `--hash=sha256:` of its wheel in `wheels`: pip then
    installs nothing else (every requirement must match a hash), so a swapped wheel is refused."""
    digests: dict[tuple[str, str], str] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        digests[(_canonical(name), version)] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    source = f"{requirements.parent.name}/{requirements.name}"
    lines = [
        f"# Every pin of {source} with the sha256 of its wheel in {wheels.name}/, installed from",
        f"# there, offline (GOOGLE_VENDOR_PIP_DEPENDENCIES={wheels.name}).",
    ]
    for pin in _pins(requirements):
        name, _, version = pin.partition("==")
        digest = digests.get((_canonical(name), version.strip()))
        if digest is None:
            raise FileNotFoundError(f"{pin}: no wheel for it in {wheels}")
        lines.append(f"{pin} --hash=sha256:{digest}")
    return "\n".join(lines) + "\n"


def _compile(staging: Path, layout: Layout) -> bool:
    """Bytecode for every module of the zip, so that no cold start compiles them: the deployed
    folder is read-only (Lambda, a mounted package) or new with each instance, so what Python
    compiles at import is never kept, and compiling the connector and its libraries took longer
    than running them (section "Bytecode in the zip" of bench/RESULTS.md). Reproducible:
    hash-based .pyc (no timestamps, checked against the source at import), one process in
    sorted order under a fixed hash seed, file names relative to the zip's root. Only this
    interpreter's version can be compiled: for another the zip ships sources alone."""
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if running != layout.python_version:
        print(
            f"jitc package: no bytecode in the zip: this is Python {running}, the functions "
            f"run {layout.python_version} (build with {layout.python_version} for faster cold "
            "starts)",
            file=sys.stderr,
        )
        return False
    command = [
        sys.executable, "-m", "compileall", "-q", "-s", str(staging), "-p", "/",
        "--invalidation-mode", "checked-hash", str(staging),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("PYTHONPYCACHEPREFIX", None)
    subprocess.run(command, check=True, env=env)  # noqa: S603 - our own interpreter and arguments
    return True


def _write_zip(source: Path, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".partial")
    with zipfile.ZipFile(
        partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9
    ) as archive:
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source)
            if path.is_dir():
                continue
            info = zipfile.ZipInfo(relative.as_posix(), date_time=FIXED_TIME)
            executable = path.stat().st_mode & 0o111
            info.external_attr = ((0o755 if executable else 0o644) | 0o100000) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    partial.replace(output)


def build(
    cloud: str,
    out_dir: Path,
    *,
    root: Path = ROOT,
    requirements: Path | None = None,
    platform: str | None = None,
    wheelhouse: Path | None = None,
) -> Path:
    """Build `<out_dir>/jit-connector-<cloud>.zip` and return its path."""
    layout = LAYOUTS[cloud]
    requirements = requirements or root / cloud / "requirements.txt"
    if not requirements.is_file():
        raise FileNotFoundError(f"{requirements}: the pinned requirements of {cloud} are missing")
    with tempfile.TemporaryDirectory(prefix=f"jitc-package-{cloud}-") as folder:
        staging = Path(folder)
        platform = platform or layout.platform
        if layout.wheels is None:
            action = ["install", "--no-compile", "--target", str(staging)]
            _pip(action, requirements, layout, platform, wheelhouse)
        else:
            wheels = staging / layout.wheels
            _pip(["download", "--dest", str(wheels)], requirements, layout, platform, wheelhouse)
            hashed = _hashed_requirements(requirements, wheels)
            (staging / "requirements.txt").write_text(hashed)
        for target, source in layout.packages:
            if not (root / source).is_dir():
                raise FileNotFoundError(f"{root / source}: missing")
            _copy_tree(root / source, staging / target)
        for name in layout.root_files:
            shutil.copyfile(root / name, staging / Path(name).name)
        bytecode = _compile(staging, layout)
        manifest: dict[str, object] = {
            "bytecode": bytecode,
            "cloud": cloud,
            "packages": {target.replace("/", "."): source for target, source in layout.packages},
            "platform": platform,
            "python": layout.python_version,
            "requirements": _pins(requirements),
        }
        (staging / "jitc-package.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        output = out_dir / f"jit-connector-{cloud}.zip"
        _write_zip(staging, output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jitc package", description="Build the deployable zip of one cloud."
    )
    parser.add_argument("cloud", choices=sorted(LAYOUTS))
    parser.add_argument("--out", type=Path, default=Path("dist"), help="output folder (dist)")
    parser.add_argument("--requirements", type=Path, help="pinned requirements file")
    parser.add_argument("--platform", help="wheel platform tag (e.g. manylinux2014_aarch64)")
    parser.add_argument("--wheelhouse", type=Path, help="install from this folder only (offline)")
    args = parser.parse_args(argv)
    try:
        output = build(
            args.cloud, args.out, requirements=args.requirements, platform=args.platform,
            wheelhouse=args.wheelhouse,
        )  # fmt: skip
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        print(f"jitc package: {exc}", file=sys.stderr)
        return 1
    digest = hashlib.sha256(output.read_bytes()).digest()
    print(f"{output}  sha256:{digest.hex()}  source_code_hash:{base64.b64encode(digest).decode()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
