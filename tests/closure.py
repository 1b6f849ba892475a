"""Whether the distributions unpacked into a function's folder require only what is there.

`jitc package` installs the pinned requirements with `--no-deps`, so a pin list that misses a
dependency (one an extra pulls in, such as `google-api-core[grpc]`'s `grpcio-status`) builds a
zip that fails at its first import in the cloud. This reads each distribution's metadata in the
folder, follows every requirement whose marker holds on the functions' platform (extras
included, as they were asked for), and names what is missing or of a version the requirement
refuses.
"""

from __future__ import annotations

from importlib.metadata import Distribution, distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Where the functions run: Linux on x86_64, CPython 3.11 (the packages are built for it).
PLATFORM = {
    "python_version": "3.11",
    "python_full_version": "3.11.7",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}


def _holds(requirement: Requirement, extra: str) -> bool:
    if requirement.marker is None:
        return True
    return requirement.marker.evaluate({**PLATFORM, "extra": extra})


def unmet_requirements(folder: Path, roots: list[str]) -> list[str]:
    """What the distributions in `folder`, starting from the pins `roots` (`name==version`,
    extras allowed), require and do not find there."""
    found: dict[str, Distribution] = {
        canonicalize_name(d.metadata["Name"]): d for d in distributions(path=[str(folder)])
    }
    unmet: list[str] = []
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
