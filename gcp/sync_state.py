"""The inventory sync's acknowledged versions in one small JSON object (hashes only) of the
bucket the Terraform creates for it, through the google-cloud-storage client.

Each save reads the object with its generation and writes it back only if the generation is
still the one read (`ifGenerationMatch`; 0 when there was none): two syncs that overlap cannot
lose each other's update, the loser (412) reads again."""

from __future__ import annotations

import json
from typing import Any

from jitc.errors import JitcError
from jitc.google_storage import let_go
from jitc.inventory import Acked, acked_from, acked_to

OBJECT = "inventory-state.json"
ATTEMPTS = 8


class SyncStateConflict(JitcError):
    pass


class GcsSyncState:
    def __init__(self, bucket: Any, name: str = OBJECT) -> None:
        self._bucket = bucket
        self._name = name

    def _read(self) -> tuple[dict[str, Any], int]:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        for _ in range(ATTEMPTS):
            blob = self._bucket.blob(self._name)
            try:
                blob.reload()
            except NotFound as exc:
                let_go(exc)  # get_blob would keep the answer's connection until a collection
                return {}, 0
            generation = int(blob.generation)
            try:
                data = blob.download_as_bytes(if_generation_match=generation)
            except (NotFound, PreconditionFailed) as exc:
                let_go(exc)
                continue  # replaced or deleted between the two calls: read again
            try:
                doc = json.loads(data)
            except ValueError:
                return {}, generation  # unreadable: a full sync, then rewritten
            found = doc.get("integrations") if isinstance(doc, dict) else None
            return (found if isinstance(found, dict) else {}), generation
        raise SyncStateConflict("the sync state object kept changing under this sync")

    def load(self, integration: str) -> Acked | None:
        return acked_from(self._read()[0].get(integration))

    def save(self, integration: str, acked: Acked | None) -> None:
        from google.api_core.exceptions import PreconditionFailed

        for _ in range(ATTEMPTS):
            doc, generation = self._read()
            if acked is None:
                if integration not in doc:
                    return
                doc.pop(integration)
            else:
                doc[integration] = acked_to(acked)
            body = json.dumps({"v": 1, "integrations": doc}, sort_keys=True)
            try:
                # 0: only if no object exists yet.
                self._bucket.blob(self._name).upload_from_string(
                    body, content_type="application/json", if_generation_match=generation
                )
                return
            except PreconditionFailed as exc:
                let_go(exc)
                continue
        raise SyncStateConflict("the sync state object kept changing under this sync")
