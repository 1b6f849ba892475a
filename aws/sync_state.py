"""The inventory sync's acknowledged versions in DynamoDB: one item per integration, in the
table the Terraform creates (sync.tf), read with strong consistency; and the run lease, one
more item, that keeps two syncs from running at once."""

from __future__ import annotations

import json
import time
from typing import Any

from jitc.inventory import Acked, acked_from, acked_to

# No integration name starts with "#" (NAME_PATTERN): the lease never meets an integration's item.
LEASE_KEY = "#lease"


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


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

    def acquire(self, holder: str, until: float) -> bool:
        """Takes the run lease for `holder` until `until` (epoch seconds), unless another run
        holds one that has not lapsed. A sync may be reserved no concurrency of its own
        (reserved_concurrency without "sync"), and the schedule delivers at least once: two
        runs at once would each save the versions it saw acknowledged, the later overwriting
        the other's."""
        from botocore.exceptions import ClientError

        try:
            self._client.put_item(
                TableName=self.table,
                Item={
                    "integration": {"S": LEASE_KEY},
                    "holder": {"S": holder},
                    "until": {"N": f"{until:.3f}"},
                },
                ConditionExpression="attribute_not_exists(integration) OR #until < :now",
                ExpressionAttributeNames={"#until": "until"},
                ExpressionAttributeValues={":now": {"N": f"{time.time():.3f}"}},
            )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def release(self, holder: str) -> None:
        """Gives the lease back, only if it is still this run's (a lapsed one may be another's)."""
        from botocore.exceptions import ClientError

        try:
            self._client.delete_item(
                TableName=self.table,
                Key={"integration": {"S": LEASE_KEY}},
                ConditionExpression="#holder = :holder",
                ExpressionAttributeNames={"#holder": "holder"},
                ExpressionAttributeValues={":holder": {"S": holder}},
            )
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise
