"""Load `function_app.py` the way the Functions host does: by path, from the app root."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

APP = Path(__file__).resolve().parents[2] / "azure" / "function_app.py"


def load(path: Path = APP) -> Any:
    spec = importlib.util.spec_from_file_location("function_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.pop("function_app", None)
    spec.loader.exec_module(module)
    return module.app
