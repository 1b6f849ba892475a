"""The inventory sync as a scheduled job (`handlers.JOBS["sync"]`, entry point `sync` in
main.py): every integration's inventory (names only) and the connector's own view, sent to the
catalog's control-plane webhook, only the pages changed since the acknowledged version (kept in
an object of the sync's own bucket). An integration that cannot be read fails its own part; the
job is complete, and logs the heartbeat the silence alert counts, only when every part is."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from jitc.endpoints import https_or_loopback
from jitc.errors import ConfigError, required_env
from jitc.gcp import runtime
from jitc.gcp.sync_state import GcsSyncState
from jitc.google_storage import storage_client
from jitc.inventory import webhook_transport

STALL_SECONDS = 60.0


def storage_bucket() -> Any:
    # A Private Service Connect endpoint (or a local server in tests), like the other clients.
    endpoint = os.environ.get("JITC_STORAGE_ENDPOINT") or None
    if endpoint is not None and not https_or_loopback(endpoint):
        raise ConfigError("a plain-http endpoint is allowed only on this machine")
    client = storage_client(runtime.settings().project, endpoint)
    return client.bucket(required_env("JITC_SYNC_BUCKET"))


def sync(proceed: Callable[[], bool]) -> tuple[bool, dict[str, Any]]:
    engine = runtime.engine()
    if not engine.catalog.connector.webhook_url:
        # Nowhere to send it: complete, and the module deploys no silence alert for this.
        return True, {"configured": False}
    transport = webhook_transport(engine.catalog, engine.secrets)
    bucket = storage_bucket()
    try:
        report = engine.sync(
            transport, GcsSyncState(bucket), proceed=proceed, stall_seconds=STALL_SECONDS
        )
    finally:
        bucket.client.close()  # its connections, now: a warm instance runs the next sync too
    return report.healthy, report.as_dict()
