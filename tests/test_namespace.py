"""The distribution installs one import namespace, `jitc`; no top-level `core` or `aws` that could
collide with another distribution's package of that name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_installed_distribution_exposes_jitc_and_nothing_named_core_or_aws(
    tmp_path: Path,
) -> None:
    # Run from an empty folder, so only what is installed is importable (not the checkout).
    probe = (
        "import importlib.util, jitc.engine, jitc.templates.postgresql, jitc.aws.worker, jitc.cli\n"
        "print(importlib.util.find_spec('core'), importlib.util.find_spec('aws'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["None", "None"], out.stdout


def test_the_suite_imports_every_module_by_one_name_only() -> None:
    import jitc.engine  # noqa: F401

    assert not [m for m in sys.modules if m == "core" or m.startswith(("core.", "aws."))]
    assert "aws" not in sys.modules
