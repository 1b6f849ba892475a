"""Fixtures of the AWS tests; the harness itself lives in awsharness.py."""

from awsharness import aws, moto_url, pg_admin  # noqa: F401 - pytest fixtures
