"""Wiring for the function app: settings from the app settings Terraform writes, the catalog from
the `JITC_CATALOG` setting (so every change to it shows in `terraform plan`), one credential and
one client per service per worker process. Secret values are never among what is kept.

Identity-based connections: the queue is reached at `JitcQueue__queueServiceUri` with the app's
managed identity (`DefaultAzureCredential`; `AZURE_CLIENT_ID` picks a user-assigned identity),
the same setting the queue trigger's `JitcQueue` connection reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

from jitc.azure.queues import MAX_DELAY, StorageQueue, StorageQueueExpiry, client_options
from jitc.azure.sinks import Sinks
from jitc.azure.vault_store import PUBLIC_SUFFIX, SCHEME, KeyVaultStore
from jitc.catalog import Catalog, load_catalog, parse_catalog
from jitc.engine import Engine
from jitc.errors import CatalogError, ConfigError, required_env
from jitc.intake import Intake
from jitc.secrets import SecretStores

CONNECTION = "JitcQueue"


def _env(name: str) -> str:
    return required_env(name, "app setting")


@dataclass(frozen=True)
class Settings:
    catalog_json: str | None
    catalog_path: Path | None
    catalog_sha256: str | None
    queue_service_uri: str
    queue_name: str
    poison_queue_name: str
    expiry_max_delay: timedelta
    key_vault_dns_suffix: str
    ca_bundle: str | None
    rbac_ledger_url: str | None
    own_scope: str | None

    @classmethod
    def from_env(cls) -> Settings:
        get = os.environ.get
        queue = _env("JITC_QUEUE_NAME")
        path = get("JITC_CATALOG_PATH")
        return cls(
            catalog_json=get("JITC_CATALOG") or None,
            catalog_path=Path(path) if path else None,
            catalog_sha256=get("JITC_CATALOG_SHA256") or None,
            queue_service_uri=_env(f"{CONNECTION}__queueServiceUri"),
            queue_name=queue,
            poison_queue_name=get("JITC_POISON_QUEUE_NAME") or f"{queue}-poison",
            expiry_max_delay=timedelta(
                seconds=int(get("JITC_EXPIRY_MAX_DELAY_SECONDS") or MAX_DELAY.total_seconds())
            ),
            key_vault_dns_suffix=get("JITC_KEY_VAULT_DNS_SUFFIX") or PUBLIC_SUFFIX,
            ca_bundle=get("JITC_CA_BUNDLE") or None,
            rbac_ledger_url=get("JITC_RBAC_LEDGER_URL") or None,
            own_scope=get("JITC_AZURE_OWN_SCOPE") or None,
        )


@cache
def settings() -> Settings:
    return Settings.from_env()


def transport_options() -> dict[str, Any]:
    """Options every Azure client of the app gets: a private CA (a TLS-inspecting proxy)."""
    bundle = settings().ca_bundle
    return {"connection_verify": bundle} if bundle else {}


@cache
def credential() -> Any:
    from azure.identity import DefaultAzureCredential

    # Only what can work inside Azure: no developer-tool or interactive credentials, whose
    # probing costs seconds at every cold start.
    return DefaultAzureCredential(
        exclude_developer_cli_credential=True,
        exclude_cli_credential=True,
        exclude_powershell_credential=True,
        exclude_visual_studio_code_credential=True,
        exclude_interactive_browser_credential=True,
        exclude_shared_token_cache_credential=True,
        **transport_options(),
    )


@cache
def catalog() -> Catalog:
    """The catalog Terraform wrote; a digest mismatch means a stale or altered setting: stop."""
    s = settings()
    if s.catalog_json is not None:
        data = s.catalog_json.encode()
        where = "JITC_CATALOG"
    elif s.catalog_path is not None:
        try:
            data = s.catalog_path.read_bytes()
        except OSError as exc:
            raise CatalogError(f"{s.catalog_path}: cannot read ({exc.strerror})") from None
        where = str(s.catalog_path)
    else:
        raise ConfigError("app setting JITC_CATALOG (or JITC_CATALOG_PATH) is not set")
    if s.catalog_sha256 and hashlib.sha256(data).hexdigest() != s.catalog_sha256.lower():
        raise CatalogError(f"{where}: digest differs from JITC_CATALOG_SHA256")
    if s.catalog_path is not None and s.catalog_json is None and s.catalog_path.suffix != ".json":
        return load_catalog(s.catalog_path)
    return parse_catalog(json.loads(data), where)


def _queue_client(name: str, raw: bool = False) -> Any:
    from azure.storage.queue import QueueClient

    s = settings()
    options = {} if raw else client_options()
    return QueueClient(
        s.queue_service_uri, name, credential=credential(), **options, **transport_options(),
    )  # fmt: skip


@cache
def queue() -> StorageQueue:
    return StorageQueue(_queue_client(settings().queue_name))


@cache
def poison_queue() -> Any:
    """Read as stored, not decoded: a message that is not base64 (which is why it was poisoned)
    would make the client's decoder fail the whole listing. `queues.decoded` reads each one."""
    return _queue_client(settings().poison_queue_name, raw=True)


@cache
def expiry() -> StorageQueueExpiry:
    return StorageQueueExpiry(queue(), settings().expiry_max_delay)


@cache
def intake() -> Intake:
    return Intake(catalog(), queue())


@cache
def secret_stores() -> SecretStores:
    store = KeyVaultStore(credential(), settings().key_vault_dns_suffix, transport_options())
    return SecretStores({SCHEME: store})


@cache
def sinks() -> Sinks:
    connector = catalog().connector
    if not connector.webhook_url:
        return Sinks()
    if not connector.signing_key:
        raise CatalogError("connector.webhook_url needs connector.signing_key")
    from jitc.webhook import WebhookSink

    # The connector's signing key is read from Key Vault at each delivery.
    return Sinks(
        WebhookSink.from_catalog(connector.webhook_url, connector.signing_key, secret_stores())
    )


@cache
def engine() -> Engine:
    if any(i.kind == "azure_rbac" for i in catalog().integrations.values()):
        # Imported only for a catalog with RBAC integrations (its models are ~15 ms of a cold
        # start); the template uses the app's identity and transport settings, and keeps its
        # tombstones and locks in the container Terraform made for them.
        from jitc.templates import azure_rbac

        azure_rbac.use(
            credential(), transport_options(), settings().rbac_ledger_url, settings().own_scope
        )
    return Engine(catalog(), secret_stores(), expiry(), sinks())


def reset() -> None:
    """Forget everything built (tests; a new worker process starts empty anyway)."""
    for built in (
        settings, credential, catalog, queue, poison_queue, expiry, intake, secret_stores,
        sinks, engine,
    ):  # fmt: skip
        built.cache_clear()
    from jitc.templates import azure_rbac

    azure_rbac.use(None, {})
