"""Whether the distributions unpacked into a function's folder require only what is there.

`jitc package` installs the pinned requirements with `--no-deps`, so a pin list that misses a
dependency (one an extra pulls in, such as `google-api-core[grpc]`'s `grpcio-status`) builds a
zip that fails at its first import in the cloud. This reads each distribution's metadata in the
folder, follows every requirement whose marker holds on the functions' platform (extras
included, as they were asked for), and names what is missing or of a version the requirement
refuses.
"""

from __future__ import annotations

import tomllib
from collections import Counter
from importlib.metadata import Distribution, distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent

# Where the functions run: Linux on x86_64, CPython 3.11 (the packages are built for it). Every
# marker variable is set, so none is taken from the interpreter running the tests.
PLATFORM = {
    "python_version": "3.11",
    "python_full_version": "3.11.7",
    "implementation_name": "cpython",
    "implementation_version": "3.11.7",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "platform_release": "",
    "platform_version": "",
    "os_name": "posix",
}


def connector_requirements(cloud: str) -> list[str]:
    """What the connector itself asks for in a cloud's zip (pyproject.toml): its dependencies,
    the cloud's extra and PostgreSQL's, extras included (`psycopg[binary]`), which the pins,
    plain names and versions, do not carry. Not `waitress`: the HTTP server of `jitc serve`,
    which no function runs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [r for r in project["dependencies"] if Requirement(r).name != "waitress"]
    return [*wanted, *project["optional-dependencies"][cloud],
            *project["optional-dependencies"]["postgresql"]]  # fmt: skip


def _holds(requirement: Requirement, extra: str) -> bool:
    if requirement.marker is None:
        return True
    return requirement.marker.evaluate({**PLATFORM, "extra": extra})


def unmet_requirements(folder: Path, roots: list[str]) -> list[str]:
    """What `roots` (the pins, and what the connector asks for) and the distributions in
    `folder` they lead to require and do not find there."""
    every = list(distributions(path=[str(folder)]))
    names = Counter(canonicalize_name(d.metadata["Name"]) for d in every)
    unmet = [f"{name} (installed {count} times)" for name, count in names.items() if count > 1]
    found: dict[str, Distribution] = {canonicalize_name(d.metadata["Name"]): d for d in every}
    queue = [Requirement(pin) for pin in roots]
    seen: set[tuple[str, str]] = set()
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        dist = found.get(name)
        if dist is None:
            unmet.append(f"{requirement} (not in the package)")
            continue
        if not requirement.specifier.contains(dist.version, prereleases=True):
            unmet.append(f"{requirement} (the package has {dist.version})")
            continue
        for extra in ("", *sorted(requirement.extras)):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            for text in dist.requires or []:
                needed = Requirement(text)
                if _holds(needed, extra):
                    queue.append(needed)
    return sorted(set(unmet))
