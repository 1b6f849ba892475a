"""Fixtures of the GCP tests; the harness itself lives in gcpharness.py."""

import sys
from pathlib import Path

# tfmodule (the HCL parser of the AWS tests) serves the GCP module's tests too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "aws"))

from gcpharness import fake, pg_admin, worker_credentials  # noqa: F401 - pytest fixtures
