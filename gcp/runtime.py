"""Wiring for the Cloud Run functions: settings from the environment Terraform sets, the
catalog Terraform ships, and one client per service per instance.

Each piece is built on first use and kept for the life of the instance; secret values are not
among them (the engine fetches those per batch).
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from jitc.catalog import Catalog, load_catalog, parse_catalog
from jitc.endpoints import https_or_loopback
from jitc.errors import CatalogError, ConfigError, required_env
from jitc.gcp.logs import logger
from jitc.gcp.oidc import GOOGLE_CERTS_URL, CertificateCache, OidcVerifier
from jitc.gcp.sinks import Sinks
from jitc.gcp.tasks import CloudTasksExpiryScheduler, CloudTasksQueue
from jitc.google_credentials import forget, service_account
from jitc.sinks import BufferedSink, LogSink

if TYPE_CHECKING:
    # The engine and the secret stores are imported where the worker and the sweep build them:
    # the intake never runs them, and skips their import in its cold start; the intake's
    # module likewise where the intake builds it, out of the worker's and the sweep's.
    from jitc.engine import Engine
    from jitc.intake import Intake
    from jitc.secrets import SecretStores


class Settings(NamedTuple):  # not a frozen dataclass: see jitc.gcp.handlers.HttpRequest
    project: str
    queue: str
    worker_url: str
    sweep_url: str | None
    invoker_email: str
    certs_url: str
    catalog_json: str | None
    catalog_path: Path | None
    catalog_sha256: str | None
    event_topic: str | None
    tasks_endpoint: str | None
    secrets_endpoint: str | None
    timeout_seconds: float
    # The worker and the sweep sit behind Cloud Run's IAM check (never public): tokens arrive
    # with their signature removed by Cloud Run.
    behind_iam: bool = False

    @classmethod
    def from_env(cls) -> Settings:
        get = os.environ.get
        path = get("JITC_CATALOG_PATH")
        return cls(
            project=required_env("JITC_PROJECT"),
            queue=required_env("JITC_QUEUE"),
            worker_url=required_env("JITC_WORKER_URL"),
            sweep_url=get("JITC_SWEEP_URL") or None,
            invoker_email=required_env("JITC_INVOKER_EMAIL"),
            certs_url=get("JITC_CERTS_URL") or GOOGLE_CERTS_URL,
            catalog_json=get("JITC_CATALOG") or None,
            catalog_path=Path(path) if path else None,
            catalog_sha256=get("JITC_CATALOG_SHA256") or None,
            event_topic=get("JITC_EVENT_TOPIC") or None,
            # Private Service Connect endpoints (and local servers in tests).
            tasks_endpoint=get("JITC_TASKS_ENDPOINT") or None,
            secrets_endpoint=get("JITC_SECRETS_ENDPOINT") or None,
            timeout_seconds=float(get("JITC_TIMEOUT_SECONDS") or 540),
            behind_iam=get("JITC_BEHIND_CLOUD_RUN_IAM") == "1",
        )


@cache
def settings() -> Settings:
    return Settings.from_env()


def _client_options(endpoint: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(client_options, transport kwargs) for the REST transport, plain http only to loopback."""
    if endpoint is None:
        return {}, {}
    if not https_or_loopback(endpoint):
        raise ConfigError("a plain-http endpoint is allowed only on this machine")
    scheme, _, host = endpoint.partition("://")
    return {"api_endpoint": host}, {"url_scheme": scheme}


def _rest_client(client_class: Any, transport_class: Any, endpoint: str | None) -> Any:
    options, extra = _client_options(endpoint)
    if not extra:
        return client_class(
            credentials=service_account(), transport="rest", client_options=options or None
        )
    transport = transport_class(
        host=options["api_endpoint"], credentials=service_account(), **extra
    )
    return client_class(transport=transport)


@cache
def tasks_client() -> Any:
    from google.cloud import tasks_v2
    from google.cloud.tasks_v2.services.cloud_tasks.transports.rest import (
        CloudTasksRestTransport,
    )

    return _rest_client(
        tasks_v2.CloudTasksClient, CloudTasksRestTransport, settings().tasks_endpoint
    )


@cache
def secrets_client() -> Any:
    from google.cloud import secretmanager_v1
    from google.cloud.secretmanager_v1.services.secret_manager_service.transports.rest import (
        SecretManagerServiceRestTransport,
    )

    return _rest_client(
        secretmanager_v1.SecretManagerServiceClient,
        SecretManagerServiceRestTransport,
        settings().secrets_endpoint,
    )


@cache
def catalog() -> Catalog:
    """The catalog Terraform shipped; a digest mismatch means a stale or altered one: stop."""
    s = settings()
    if s.catalog_json is not None:
        data, source = s.catalog_json.encode(), "JITC_CATALOG"
    elif s.catalog_path is not None:
        try:
            data, source = s.catalog_path.read_bytes(), str(s.catalog_path)
        except OSError as exc:
            raise CatalogError(f"{s.catalog_path}: cannot read ({exc.strerror})") from None
    else:
        raise ConfigError("JITC_CATALOG or JITC_CATALOG_PATH must be set")
    if s.catalog_sha256 and hashlib.sha256(data).hexdigest() != s.catalog_sha256.lower():
        raise CatalogError(f"{source}: digest differs from JITC_CATALOG_SHA256")
    if s.catalog_path is not None and s.catalog_json is None and s.catalog_path.suffix != ".json":
        loaded = load_catalog(s.catalog_path)
    else:
        loaded = parse_catalog(json.loads(data), source)
    logger.info("catalog loaded", extra={"integrations": sorted(loaded.integrations)})
    return loaded


@cache
def queue() -> CloudTasksQueue:
    s = settings()
    return CloudTasksQueue(tasks_client(), s.queue, s.worker_url, s.invoker_email)


@cache
def scheduler() -> CloudTasksExpiryScheduler:
    return CloudTasksExpiryScheduler(queue())


@cache
def intake() -> Intake:
    from jitc.intake import Intake

    return Intake(catalog(), queue())


@cache
def certificates() -> CertificateCache:
    return CertificateCache(settings().certs_url)


@cache
def verifier(audience: str) -> OidcVerifier:
    s = settings()
    return OidcVerifier(audience, s.invoker_email, certificates(), behind_iam=s.behind_iam)


@cache
def secret_stores() -> SecretStores:
    from jitc.gcp.secret_manager import SCHEME, SecretManagerStore
    from jitc.secrets import SecretStores

    return SecretStores({SCHEME: SecretManagerStore(secrets_client())})


@cache
def sinks() -> Sinks:
    connector = catalog().connector
    webhook = None
    if connector.webhook_url:
        if not connector.signing_key:
            raise CatalogError("connector.webhook_url needs connector.signing_key")
        from jitc.webhook import WebhookSink

        # The connector's signing key is read from Secret Manager at each delivery.
        hook = WebhookSink.from_catalog(
            connector.webhook_url, connector.signing_key, secret_stores()
        )
        webhook = BufferedSink(hook)
    topic = None
    if settings().event_topic:
        from jitc.gcp.pubsub import PubSubSink, pubsub_service

        topic = PubSubSink(pubsub_service(), settings().event_topic or "")
    return Sinks(LogSink(logger), webhook, topic)


@cache
def engine() -> Engine:
    from jitc.engine import Engine

    return Engine(catalog(), secret_stores(), scheduler(), sinks())


def reset() -> None:
    """Forget everything built (tests; a new instance starts empty anyway)."""
    for built in (
        settings, tasks_client, secrets_client, catalog, queue, scheduler, intake,
        certificates, verifier, secret_stores, sinks, engine,
    ):  # fmt: skip
        built.cache_clear()
    forget()
