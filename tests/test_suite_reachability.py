"""The README's promise: with a server unreachable, the suite stops before any test, naming it
and the variable to set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_an_unreachable_postgresql_stops_the_suite_before_any_test() -> None:
    dsn = "host=127.0.0.1 port=1 dbname=test user=postgres"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "tests"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "JITC_TEST_PG_DSN": dsn},
    )
    assert result.returncode == 3, result.stdout[-2000:]
    assert "not reachable" in result.stdout and "JITC_TEST_PG_DSN" in result.stdout
    assert "PASSED" not in result.stdout and "FAILED" not in result.stdout
