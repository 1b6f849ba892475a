"""The inventory sync's acknowledged versions in DynamoDB: one item per integration, in the
table the Terraform creates (sync.tf), read with strong consistency."""

from __future__ import annotations

import json
from typing import Any

from jitc.inventory import Acked, acked_from, acked_to


class DynamoSyncState:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self.table = table

    def load(self, integration: str) -> Acked | None:
        item = self._client.get_item(
            TableName=self.table,
            Key={"integration": {"S": integration}},
            ConsistentRead=True,
        ).get("Item")
        if item is None or "acked" not in item:
            return None
        try:
            return acked_from(json.loads(item["acked"]["S"]))
        except (KeyError, ValueError):
            return None  # unreadable: the sync sends everything, and stores anew

    def save(self, integration: str, acked: Acked | None) -> None:
        key = {"integration": {"S": integration}}
        if acked is None:
            self._client.delete_item(TableName=self.table, Key=key)
            return
        doc = json.dumps(acked_to(acked), separators=(",", ":"))
        self._client.put_item(TableName=self.table, Item={**key, "acked": {"S": doc}})
