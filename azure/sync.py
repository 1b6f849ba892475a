"""The inventory sync as a timer job (`scheduled.JOBS["sync"]`): every integration's inventory
(names only) and the connector's own view, sent to the catalog's control-plane webhook, only the
pages changed since the version it acknowledged (kept in a blob, `sync_state`). An integration
that cannot be read fails its own part; only a complete sync logs the heartbeat the silence
alert counts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jitc.azure import observability, runtime
from jitc.azure.sync_state import BlobSyncState
from jitc.errors import required_env
from jitc.inventory import webhook_transport

STALL_SECONDS = 60.0


def container() -> Any:
    from azure.storage.blob import ContainerClient

    return ContainerClient(
        required_env("JITC_SYNC_BLOB_SERVICE_URI", "app setting"),
        required_env("JITC_SYNC_CONTAINER", "app setting"),
        credential=runtime.credential(),
        **runtime.transport_options(),
    )


def sync(proceed: Callable[[], bool]) -> dict[str, Any]:
    engine = runtime.engine()
    if not engine.catalog.connector.webhook_url:
        # Nowhere to send it: the module deploys no silence alert for a catalog like this.
        observability.info("inventory sync not configured: the catalog names no webhook")
        return {"configured": False}
    transport = webhook_transport(engine.catalog, engine.secrets)
    # Closed after each run, its connections with it: a warm instance runs the next one too.
    with container() as blobs:
        report = engine.sync(
            transport, BlobSyncState(blobs), proceed=proceed, stall_seconds=STALL_SECONDS
        )
    summary = report.as_dict()
    failed = [
        name
        for name, part in report.integrations.items()
        if part.status != "complete" or part.error
    ]
    if failed:
        observability.warning("inventory sync incomplete", failed=failed, sync=summary)
    else:
        # The heartbeat: its absence for the alert's window is alarmed.
        observability.info("inventory sync completed", sync=summary)
    return summary
