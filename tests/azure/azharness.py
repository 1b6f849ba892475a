"""A deployed connector on local Azure: Azurite's queues, the fake identity endpoint, Key Vault
and ARM, configured exactly as the Terraform module configures the Function App, with the rights
rendered from the module's role assignments. The functions run in this process, called with real
`azure.functions` objects built from what Azurite delivers.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azfakes
import azure.functions as func
import pytest
import tfazure
from azure.storage.queue import QueueClient, QueueServiceClient

RUN = secrets.token_hex(3)
SUBSCRIPTION = "2b5c1a3e-7d4f-4a8b-9c6d-1e2f3a4b5c6d"
RESOURCE_GROUP = f"jitc-test-{RUN}"
APP_OID = str(uuid.uuid4())
APP_CLIENT_ID = str(uuid.uuid4())
VAULT_ID = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
    f"Microsoft.KeyVault/vaults/jitckv{RUN}"
)
STORAGE_ID = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
    f"Microsoft.Storage/storageAccounts/devstoreaccount1"
)
PG_PREFIX = f"azt{RUN}_"
PG_SCHEMA = f"azt{RUN}_data"


@dataclass
class Cloud:
    """The session's local Azure."""

    tls: azfakes.Tls
    tokens: azfakes.Tokens
    authz: azfakes.Authz
    identity: azfakes.IdentityEndpoint
    azurite: azfakes.Azurite
    vault: azfakes.FakeKeyVault
    arm: azfakes.FakeArm
    storage: azfakes.StorageProxy

    def queue_admin(self, name: str) -> QueueClient:
        """The test's own view of a queue (account key), decoding as the Functions host does."""
        from jitc.azure.queues import client_options

        service = QueueServiceClient.from_connection_string(
            self.azurite.connection_string(), connection_verify=str(self.tls.cert)
        )
        return service.get_queue_client(name, **client_options())


@dataclass
class Deployment:
    cloud: Cloud
    queue: str
    poison: str
    sign_private: str
    box_private: str
    box_public: str
    catalog: dict[str, Any]
    variables: dict[str, Any] = field(default_factory=dict)

    def receive(self, wait: float = 0.0, name: str | None = None) -> list[Any]:
        """Messages now visible, as the queue trigger receives them (dequeue count included)."""
        client = self.cloud.queue_admin(name or self.queue)
        deadline = time.monotonic() + wait
        while True:
            found = list(client.receive_messages(messages_per_page=32, visibility_timeout=30))
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.2)

    def complete(self, message: Any) -> None:
        self.cloud.queue_admin(self.queue).delete_message(message)

    def abandon(self, message: Any) -> None:
        """What the host does after a failed invocation: the message becomes visible again."""
        self.cloud.queue_admin(self.queue).update_message(message, visibility_timeout=0)

    def to_poison(self, message: Any) -> None:
        """What the host does after maxDequeueCount failed deliveries."""
        self.cloud.queue_admin(self.poison).send_message(message.content)
        self.complete(message)


def queue_message(message: Any) -> func.QueueMessage:
    """The `func.QueueMessage` the Python worker builds from a received Storage Queue message."""
    from azure.functions.queue import QueueMessage

    return QueueMessage(
        id=message.id,
        body=message.content.encode(),
        dequeue_count=message.dequeue_count,
        expiration_time=message.expires_on,
        insertion_time=message.inserted_on,
        time_next_visible=message.next_visible_on,
        pop_receipt=message.pop_receipt,
    )


def http_request(
    deployment: Deployment,
    body: dict[str, Any] | bytes,
    *,
    key_id: str = "cp1",
    timestamp: int | None = None,
    method: str = "POST",
    tamper: bool = False,
    sign: bool = True,
) -> func.HttpRequest:
    from jitc.signing import HEADER_KEY_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP
    from jitc.signing import sign as sign_body

    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if sign:
        envelope = sign_body(raw, deployment.sign_private, key_id, timestamp)
        headers |= {
            HEADER_KEY_ID.lower(): envelope.key_id,
            HEADER_TIMESTAMP.lower(): str(envelope.timestamp),
            HEADER_SIGNATURE.lower(): envelope.signature,
        }
    if tamper:
        raw = raw.replace(b'"read"', b'"READ"')
    return func.HttpRequest(
        method=method,
        url="https://app.azurewebsites.net/api/v1/requests",
        headers=headers,
        params={"code": "function-key"},
        route_params={},
        body=raw,
    )


def timer_request() -> func.TimerRequest:
    from azure.functions.timer import TimerRequest

    return TimerRequest(past_due=False)


def pg_integration(name: str, credentials: str) -> dict[str, Any]:
    from pgtest import cloud_integration

    return cloud_integration(name, credentials, PG_PREFIX, PG_SCHEMA, "30d")


def start_cloud(folder: Path) -> Iterator[Cloud]:
    tls = azfakes.make_tls(folder)
    tokens = azfakes.Tokens()
    authz = azfakes.Authz()
    identity = azfakes.IdentityEndpoint(tokens, APP_OID, APP_CLIENT_ID)
    try:
        azurite = azfakes.Azurite(tls)
    except RuntimeError as exc:
        identity.close()
        pytest.fail(str(exc))
    vault = azfakes.FakeKeyVault(tokens, authz, tls, VAULT_ID)
    arm = azfakes.FakeArm(tokens, authz, tls, SUBSCRIPTION)
    storage = azfakes.StorageProxy(azurite, authz, tls, STORAGE_ID)
    cloud = Cloud(tls, tokens, authz, identity, azurite, vault, arm, storage)
    try:
        yield cloud
    finally:
        for closing in (storage, arm, vault, azurite, identity):
            closing.close()


def deploy(
    cloud: Cloud,
    catalog: dict[str, Any],
    *,
    sign_public: str,
    sign_private: str,
    secret_names: list[str],
    rbac_scopes: list[str] | None = None,
    rbac_roles: list[str] | None = None,
    rbac_pim: bool = False,
    max_delay_seconds: int | None = None,
    blob_service_uri: str = "",
) -> Deployment:
    """Create what the module creates and set the app settings it sets; rights from the HCL."""
    from jitc.azure import runtime
    from jitc.sealing import box_keypair

    name = f"t{secrets.token_hex(4)}"
    variables = {
        "name": name,
        "resource_group_name": RESOURCE_GROUP,
        "key_vault_id": VAULT_ID,
        "key_vault_secret_names": secret_names,
        "rbac_scopes": rbac_scopes or [],
        "rbac_role_ids": rbac_roles or [],
        "rbac_pim": rbac_pim,
        "control_plane_principal_id": None,
    }
    rendered = tfazure.render(
        variables, storage_account_id=STORAGE_ID, principal=APP_OID, client_id=APP_CLIENT_ID
    )
    queue, poison = rendered.queue_name, rendered.poison_queue_name
    service = QueueServiceClient.from_connection_string(
        cloud.azurite.connection_string(), connection_verify=str(cloud.tls.cert)
    )
    for made in (queue, poison):
        service.create_queue(made)
    cloud.authz.assignments[:] = rendered.assignments
    cloud.authz.calls.clear()
    box_private, box_public = box_keypair()
    doc = {"control_plane": {"keys": {"cp1": sign_public}}, **catalog}
    text = json.dumps(doc)
    settings = {
        **cloud.identity.env,
        **rendered.app_settings(
            queue_service_uri=cloud.storage.queue_service_uri,
            catalog=text,
            blob_service_uri=blob_service_uri,
        ),
        "JITC_CA_BUNDLE": str(cloud.tls.cert),
        "JITC_KEY_VAULT_DNS_SUFFIX": cloud.vault.dns_suffix,
    }
    if max_delay_seconds is not None:
        settings["JITC_EXPIRY_MAX_DELAY_SECONDS"] = str(max_delay_seconds)
    os.environ.update(settings)
    runtime.reset()
    return Deployment(cloud, queue, poison, sign_private, box_private, box_public, doc, variables)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
