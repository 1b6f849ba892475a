"""Fixtures of the GCP tests; the harness itself lives in gcpharness.py."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tfmodule (the HCL parser of the AWS tests) serves the GCP module's tests too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "aws"))

from gcpharness import fake, pg_admin, worker_credentials  # noqa: F401 - pytest fixtures


@pytest.fixture(autouse=True)
def _own_credentials() -> Iterator[None]:
    """Each test finds the credentials its environment names: the process keeps the ones it
    found (jitc.google_credentials), and tests change the environment between them."""
    from jitc.google_credentials import forget

    forget()
    yield
    forget()
