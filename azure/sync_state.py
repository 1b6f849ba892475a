"""The inventory sync's acknowledged versions in one blob (a small JSON document, hashes only) of
the container the Terraform creates for it, read and written with the app's identity.

Each save reads the blob with its ETag and writes it back only if the ETag still matches (or,
for a first save, only if there is no blob yet): two syncs that overlap (a timer run and a
manual one, a run the host retried) cannot lose each other's update; the loser reads again."""

from __future__ import annotations

import json
from typing import Any

from jitc.errors import JitcError
from jitc.inventory import Acked, acked_from, acked_to

BLOB = "inventory-state.json"
ATTEMPTS = 8  # a conflict means another sync wrote in between: read again, a few times


class SyncStateConflict(JitcError):
    pass


class BlobSyncState:
    def __init__(self, container: Any, blob: str = BLOB) -> None:
        self._blob = container.get_blob_client(blob)

    def _read(self) -> tuple[dict[str, Any], str | None]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            downloaded = self._blob.download_blob()
        except ResourceNotFoundError:
            return {}, None
        etag = downloaded.properties.etag
        try:
            doc = json.loads(downloaded.readall())
        except ValueError:
            return {}, etag  # unreadable: every integration syncs in full, and it is rewritten
        found = doc.get("integrations") if isinstance(doc, dict) else None
        return (found if isinstance(found, dict) else {}), etag

    def load(self, integration: str) -> Acked | None:
        return acked_from(self._read()[0].get(integration))

    def save(self, integration: str, acked: Acked | None) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        for _ in range(ATTEMPTS):
            doc, etag = self._read()
            if acked is None:
                if integration not in doc:
                    return
                doc.pop(integration)
            else:
                doc[integration] = acked_to(acked)
            body = json.dumps({"v": 1, "integrations": doc}, sort_keys=True).encode()
            try:
                if etag is None:
                    # If-None-Match: * -- a blob another sync created meanwhile is not replaced.
                    self._blob.upload_blob(body, overwrite=False)
                else:
                    self._blob.upload_blob(
                        body,
                        overwrite=True,
                        etag=etag,
                        match_condition=MatchConditions.IfNotModified,
                    )
                return
            except (ResourceModifiedError, ResourceExistsError):
                continue
        raise SyncStateConflict("the sync state blob kept changing under this sync")
