"""The boto3 clients of the AWS templates: one session and one client per service and region
for the life of the process, with standard retries; the Lambda runtime hands in its own.

A session per batch cost 90-350 ms and grew the process's memory, as each new session loads
the endpoint and partition data again. Clients are safe to share between threads and batches;
they hold no secret (the function's own role is the credential).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

ClientFactory = Callable[[str, "str | None"], Any]

_factory: ClientFactory | None = None


def use(factory: ClientFactory | None) -> None:
    """Make the templates take their clients from `factory(service, region)` (the runtime's,
    with its retry settings); None goes back to this module's own."""
    global _factory
    _factory = factory


@cache
def _session() -> Any:
    import boto3

    return boto3.session.Session()


@cache
def _own_client(service: str, region: str | None) -> Any:
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=20
    )
    return _session().client(service, region_name=region, config=config)


def client(service: str, region: str | None) -> Any:
    return (_factory or _own_client)(service, region)


def reset() -> None:
    """Forget the clients (credentials changed: tests; a new process starts empty anyway)."""
    _session.cache_clear()
    _own_client.cache_clear()
