"""Fixtures of the GCP tests; the harness itself lives in gcpharness.py."""

from gcpharness import fake, pg_admin  # noqa: F401 - pytest fixtures
