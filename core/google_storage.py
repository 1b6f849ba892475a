"""A google-cloud-storage client as the connector uses one: the process's one set of
credentials (`jitc.google_credentials`), and none of the library's own bucket lookups.

google-cloud-storage 3.17 fetches each bucket's metadata (`buckets.get`), in a thread of its own,
the first time a client touches the bucket, to label tracing spans, with tracing off too. The
connector's accounts hold only object permissions on their buckets, so every new client would
earn a 403, a "permission denied" entry in the project's audit log, and a thread."""

from __future__ import annotations

import traceback
from typing import Any

from jitc.google_credentials import service_account


def storage_client(project: str | None, endpoint: str | None) -> Any:
    """`endpoint`: the API's root (a Private Service Connect endpoint, or a local server in
    tests), already checked by the caller; None for Google's."""
    from google.cloud import storage  # type: ignore[attr-defined]

    client = storage.Client(
        project=project,
        credentials=service_account(),
        client_options={"api_endpoint": endpoint} if endpoint else None,
    )
    # The library looks the cache up as an optional attribute: none, no lookups.
    if hasattr(client, "_bucket_metadata_cache"):
        client._bucket_metadata_cache = None
    return client


def let_go(exc: BaseException) -> None:
    """google-cloud-storage raises an HTTP error from within the handling of another, whose
    traceback holds that exception again (a reference cycle) and the HTTP response, which holds
    its connection pool: left to the cycle collector, every such answer (a missing tombstone is
    one) would keep a connection open after its client is closed. Those frames have returned;
    their variables go now."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__context__
