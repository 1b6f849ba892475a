"""The boto3 clients of the AWS templates: one session and one client per service and region
for the life of the process, with standard retries; the Lambda runtime hands in its own.

A session per batch cost 90-350 ms and grew the process's memory, as each new session loads
the endpoint and partition data again. Clients are safe to share between threads and batches;
they hold no secret (the function's own role is the credential).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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
    _assumed.clear()
    _assumed_clients.clear()


# role ARN, external id, region -> (expiry, session) of the assumed role's credentials
_assumed: dict[tuple[str, str | None, str | None], tuple[datetime, Any]] = {}
# service, region, role ARN, external id -> the client of the current credentials, and the one
# of the credentials before them: closed only at the next renewal, an hour on, when no batch
# can still be using it (closing it at once could end a call in flight on another thread).
_assumed_clients: dict[tuple[str, str | None, str, str | None], tuple[datetime, Any, Any]] = {}


def assumed_client(service: str, region: str | None, role_arn: str, external_id: str | None) -> Any:
    """A client acting as `role_arn` (a role the customer deployed in a member account, which
    trusts the connector's roles only with this external id), reassumed before it expires.
    One client per service, region and role at a time (two across a renewal): each holds its
    own connections and ~10 MB of endpoint data."""
    import boto3

    key = (role_arn, external_id, region)
    now = datetime.now(UTC)
    held = _assumed.get(key)
    if held is None or held[0] - timedelta(minutes=5) <= now:
        params: dict[str, Any] = {"RoleArn": role_arn, "RoleSessionName": "jit-connector"}
        if external_id is not None:
            params["ExternalId"] = external_id
        answer = client("sts", region).assume_role(**params)["Credentials"]
        session: Any = boto3.session.Session(
            aws_access_key_id=answer["AccessKeyId"],
            aws_secret_access_key=answer["SecretAccessKey"],
            aws_session_token=answer["SessionToken"],
        )
        held = (answer["Expiration"], session)
        _assumed[key] = held
    client_key = (service, region, role_arn, external_id)
    found = _assumed_clients.get(client_key)
    if found is not None and found[0] == held[0]:
        return found[1]
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 5})
    made: Any = held[1].client(service, region_name=region, config=config)
    previous, retiring = (found[1], found[2]) if found is not None else (None, None)
    _assumed_clients[client_key] = (held[0], made, previous)
    if retiring is not None:
        retiring.close()
    return made
