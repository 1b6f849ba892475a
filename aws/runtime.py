"""Wiring for the Lambda functions: settings from the environment Terraform sets, the catalog
from the layer Terraform builds, and one boto3 client per service per execution environment.

Each piece is built on first use and kept for the life of the execution environment; secret
values are not among them (the engine fetches those per batch).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jitc.aws.observability import logger
from jitc.aws.sqs import SqsQueue
from jitc.catalog import Catalog, load_catalog, parse_catalog
from jitc.errors import CatalogError, ConfigError, required_env
from jitc.intake import Intake

if TYPE_CHECKING:
    # What only the worker, the sweep and the rotation build is imported where they build it:
    # the intake never runs the engine and skips their import (the engine, the inventory sync,
    # labels, sealing: with the Powertools event classes, 27 ms of the intake's CPU).
    from jitc.aws.scheduler import EventBridgeExpiryScheduler
    from jitc.aws.sinks import EventBridgeSink
    from jitc.engine import Engine
    from jitc.ports import EventSink
    from jitc.secrets import SecretStores
    from jitc.sinks import BufferedSink, LogSink

DEFAULT_CATALOG = "/opt/jitc/catalog.json"


@dataclass(frozen=True)
class Settings:
    catalog_path: Path
    catalog_sha256: str | None
    queue_url: str | None  # every function but the inventory sync needs it (see queue())
    queue_arn: str | None
    schedule_group: str | None
    scheduler_role_arn: str | None
    schedule_dead_letter_arn: str | None
    event_bus: str | None

    @classmethod
    def from_env(cls) -> Settings:
        get = os.environ.get
        return cls(
            catalog_path=Path(get("JITC_CATALOG_PATH") or DEFAULT_CATALOG),
            catalog_sha256=get("JITC_CATALOG_SHA256") or None,
            queue_url=get("JITC_QUEUE_URL") or None,
            queue_arn=get("JITC_QUEUE_ARN") or None,
            schedule_group=get("JITC_SCHEDULE_GROUP") or None,
            scheduler_role_arn=get("JITC_SCHEDULER_ROLE_ARN") or None,
            schedule_dead_letter_arn=get("JITC_SCHEDULE_DLQ_ARN") or None,
            event_bus=get("JITC_EVENT_BUS") or None,
        )


@cache
def settings() -> Settings:
    return Settings.from_env()


@cache
def _session() -> Any:
    import boto3

    # One session for every client: each new session loads the endpoint and partition data
    # again (measured: ~8 MB and ~80 ms per client).
    return boto3.session.Session()


@cache
def regional_client(service: str, region: str | None) -> Any:
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=20
    )
    return _session().client(service, region_name=region, config=config)


def client(service: str) -> Any:
    return regional_client(service, None)


class _LazyClient:
    """A client made at its first use. The worker and the sweep hold the request queue only to
    send an expiry that is due within a minute, which most invocations never do; a client costs
    40-80 ms of a cold start (its service model and endpoint rules)."""

    def __init__(self, service: str) -> None:
        self._service = service

    def __getattr__(self, name: str) -> Any:
        return getattr(client(self._service), name)


@cache
def catalog() -> Catalog:
    """The catalog Terraform shipped; a digest mismatch means a stale or altered file: stop."""
    s = settings()
    try:
        data = s.catalog_path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"{s.catalog_path}: cannot read ({exc.strerror})") from None
    if s.catalog_sha256 and hashlib.sha256(data).hexdigest() != s.catalog_sha256.lower():
        raise CatalogError(f"{s.catalog_path}: digest differs from JITC_CATALOG_SHA256")
    # Terraform ships the reviewed YAML as JSON (no YAML parser in the cold start).
    if s.catalog_path.suffix == ".json":
        loaded = parse_catalog(json.loads(data), str(s.catalog_path))
    else:
        loaded = load_catalog(s.catalog_path)
    logger.info("catalog loaded", extra={"integrations": sorted(loaded.integrations)})
    return loaded


def _queue_url() -> str:
    return settings().queue_url or required_env("JITC_QUEUE_URL")


@cache
def queue() -> SqsQueue:
    """The intake's queue: every invocation sends to it, so its client is made at once."""
    return SqsQueue(client("sqs"), _queue_url())


@cache
def expiry_queue() -> SqsQueue:
    """The same queue for the scheduler, which sends to it only an expiry due within a minute:
    its client is made at that first send."""
    return SqsQueue(_LazyClient("sqs"), _queue_url())


@cache
def intake() -> Intake:
    return Intake(catalog(), queue())


@cache
def scheduler() -> EventBridgeExpiryScheduler:
    s = settings()
    if not (s.queue_arn and s.schedule_group and s.scheduler_role_arn):
        raise ConfigError(
            "JITC_QUEUE_ARN, JITC_SCHEDULE_GROUP and JITC_SCHEDULER_ROLE_ARN "
            "are needed to schedule expiries"
        )
    from jitc.aws.scheduler import EventBridgeExpiryScheduler

    return EventBridgeExpiryScheduler(
        client("scheduler"),
        group=s.schedule_group,
        queue_arn=s.queue_arn,
        role_arn=s.scheduler_role_arn,
        queue=expiry_queue(),
        dead_letter_arn=s.schedule_dead_letter_arn,
    )


class Sinks:
    """The log always; the bus and the control plane's webhook when configured. Both are
    buffered and sent by `flush`, before any message of the batch is deleted: a failed send
    fails the batch, which is then delivered again (events at least once, like everything)."""

    def __init__(
        self, log: LogSink, bus: EventBridgeSink | None, webhook: BufferedSink | None = None
    ) -> None:
        self.log = log
        self.bus = bus
        self.webhook = webhook
        self.sinks: tuple[EventSink, ...] = tuple(s for s in (log, bus, webhook) if s is not None)

    def audit(self, event: Any) -> None:
        for sink in self.sinks:
            sink.audit(event)

    def outcome(self, outcome: Any) -> None:
        for sink in self.sinks:
            sink.outcome(outcome)

    def discard(self) -> None:
        """Drop what a failed batch left unsent: that batch is delivered again and makes its
        events anew, and an old outcome could carry credentials its redelivery replaced."""
        for buffered in (self.bus, self.webhook):
            if buffered is not None:
                buffered.discard()

    def flush(self) -> None:
        if self.bus is not None:
            self.bus.flush()
        if self.webhook is not None:
            self.webhook.flush()


@cache
def secret_stores() -> SecretStores:
    from jitc.aws.secrets_manager import SCHEME, SecretsManagerStore
    from jitc.secrets import SecretStores

    return SecretStores({SCHEME: SecretsManagerStore(client("secretsmanager"))})


@cache
def sinks() -> Sinks:
    from jitc.aws.sinks import EventBridgeSink
    from jitc.sinks import BufferedSink, LogSink

    bus = settings().event_bus
    connector = catalog().connector
    webhook = None
    if connector.webhook_url:
        if not connector.signing_key:
            raise CatalogError("connector.webhook_url needs connector.signing_key")
        from jitc.webhook import WebhookSink

        # The connector's signing key is read from Secrets Manager at each delivery.
        hook = WebhookSink.from_catalog(
            connector.webhook_url, connector.signing_key, secret_stores()
        )
        webhook = BufferedSink(hook)
    return Sinks(LogSink(logger), EventBridgeSink(client("events"), bus) if bus else None, webhook)


@cache
def engine() -> Engine:
    from jitc.engine import Engine
    from jitc.templates import aws_session

    # The AWS templates use this runtime's session and retry settings, not their own.
    aws_session.use(regional_client)
    return Engine(catalog(), secret_stores(), scheduler(), sinks())


def reset() -> None:
    """Forget everything built (tests; a new execution environment starts empty anyway)."""
    for built in (
        settings,
        _session,
        regional_client,
        catalog,
        queue,
        expiry_queue,
        intake,
        scheduler,
        secret_stores,
        sinks,
        engine,
    ):
        built.cache_clear()
    from jitc.templates import aws_session

    aws_session.use(None)
    aws_session.reset()
