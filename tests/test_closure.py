"""The closure check of the packaging tests sees what a `--no-deps` install would leave out."""

from __future__ import annotations

from pathlib import Path

from closure import unmet_requirements


def _dist(folder: Path, name: str, version: str, *requires: str) -> None:
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


def test_a_dependency_an_extra_pulls_in_is_followed(tmp_path: Path) -> None:
    # As google-cloud-tasks asks for google-api-core[grpc], which alone requires grpcio-status.
    _dist(tmp_path, "tasks", "2.0", "api-core[grpc]>=1")
    _dist(tmp_path, "api-core", "1.5", "auth>=2", 'grpc-status>=1; extra == "grpc"')
    _dist(tmp_path, "auth", "2.1", 'windows-only; sys_platform == "win32"')
    assert unmet_requirements(tmp_path, ["tasks==2.0"]) == [
        'grpc-status>=1; extra == "grpc" (not in the package)'
    ]
    _dist(tmp_path, "grpc_status", "1.0")
    assert unmet_requirements(tmp_path, ["tasks==2.0"]) == []
    # Without the extra asked for, its dependency is not needed.
    assert unmet_requirements(tmp_path, ["api-core==1.5"]) == []


def test_a_version_the_requirement_refuses_is_named(tmp_path: Path) -> None:
    _dist(tmp_path, "client", "1.0", "core<2,>=1.2")
    _dist(tmp_path, "core", "2.3")
    assert unmet_requirements(tmp_path, ["client==1.0"]) == ["core<2,>=1.2 (the package has 2.3)"]
    assert unmet_requirements(tmp_path, ["client==1.1"]) == ["client==1.1 (the package has 1.0)"]


def test_a_distribution_installed_twice_is_named(tmp_path: Path) -> None:
    # Which of the two Python imports is a matter of chance: neither is trusted.
    _dist(tmp_path, "core", "1.0")
    _dist(tmp_path, "core", "2.0")
    unmet = unmet_requirements(tmp_path, ["core>=1"])
    assert "core (installed 2 times)" in unmet
