"""The Identity Center template's ledger: a DynamoDB table the Terraform module creates.

Why a table and not the permission set's tags: tags are capped at 50 per permission set, shared
with the company's own, and every revoke had to remember its grant as a tombstone for
`max_duration` + 10 minutes, so a busy permission set ran out of room. A table has no such cap,
and its TTL deletes a tombstone once it has done its job, with no sweep needed.

Two kinds of item, keyed `pk` (hash) and `sk` (range):

- the grant, `pk = g#<grant id>`, `sk = grant`: active (what was assigned to whom until when, and
  the request digest) or tombstone (revoked, remembered until the grant could no longer be
  valid; the `expires` attribute is the table's TTL);
- a hold, `pk = a#<permission set>#<account>#<user id>`, `sk = <grant id>`: this grant relies on
  that assignment. A revoke removes an assignment only when no other live grant holds it.

Every item carries a label MACed with the connector's label key over its content and its key
(jitc.labels): whoever can write items into the table can neither forge a grant or a hold nor
move a genuine one to another key. Writes are conditional where a race matters: a grant is
created only where no item is (so a revoke's tombstone and a concurrent delivery are both
seen), and a tombstone replaces only the exact active item the revoke read. The grant reads its
record again after assigning, and the revoke buries the record before its last look at the
assignments (aws_identity_center): whichever looks last sees the other's work.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jitc.labels import LabelKey, sign_label, verify_label
from jitc.models import utcnow

KIND = "aws_identity_center_ledger"
GRANT_SK = "grant"


class Forged(Exception):
    """An item at one of our keys whose label does not verify: not ours, never acted on."""


@dataclass(frozen=True)
class GrantRecord:
    grant_id: str
    state: str  # "active" or "tombstone"
    expires_at: datetime
    user_id: str
    permission_set: str
    accounts: tuple[str, ...]
    digest: str
    integration: str

    def body(self) -> dict[str, Any]:
        return {
            "grant_id": self.grant_id,
            "state": self.state,
            "expires_at": self.expires_at.isoformat(),
            "user_id": self.user_id,
            "permission_set": self.permission_set,
            "accounts": list(self.accounts),
            "digest": self.digest,
            "integration": self.integration,
        }

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> GrantRecord | None:
        try:
            return cls(
                grant_id=str(body["grant_id"]),
                state=str(body["state"]),
                expires_at=datetime.fromisoformat(str(body["expires_at"])),
                user_id=str(body["user_id"]),
                permission_set=str(body["permission_set"]),
                accounts=tuple(str(a) for a in body["accounts"]),
                digest=str(body["digest"]),
                integration=str(body["integration"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def grant_key(grant_id: str) -> tuple[str, str]:
    return f"g#{grant_id}", GRANT_SK


def hold_key(permission_set: str, account: str, user_id: str, grant_id: str) -> tuple[str, str]:
    return f"a#{permission_set}#{account}#{user_id}", grant_id


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class Ledger:
    def __init__(
        self, dynamodb: Any, table: str, key: LabelKey, integration: str, client_error: Any
    ) -> None:
        self.db = dynamodb
        self.table = table
        self.key = key
        self.integration = integration
        self.ClientError = client_error

    # -- items -------------------------------------------------------------------------------

    def _item(self, pk: str, sk: str, body: dict[str, Any], ttl: datetime | None) -> dict[str, Any]:
        item: dict[str, Any] = {
            "pk": {"S": pk},
            "sk": {"S": sk},
            "label": {"S": sign_label(self.key, KIND, f"{pk}\n{sk}", body)},
        }
        if ttl is not None:
            item["expires"] = {"N": str(int(ttl.timestamp()))}
        return item

    def _verified(
        self, item: dict[str, Any], any_integration: bool = False
    ) -> dict[str, Any] | None:
        pk, sk = item["pk"]["S"], item["sk"]["S"]
        text = item.get("label", {}).get("S")
        body = verify_label(self.key, KIND, f"{pk}\n{sk}", text)
        if body is None or (not any_integration and body.get("integration") != self.integration):
            return None
        return body

    def _get(self, pk: str, sk: str) -> dict[str, Any] | None:
        answer = self.db.get_item(
            TableName=self.table,
            Key={"pk": {"S": pk}, "sk": {"S": sk}},
            ConsistentRead=True,
        )
        item = answer.get("Item")
        return item if isinstance(item, dict) else None

    def _put(self, item: dict[str, Any], **condition: Any) -> bool:
        """False when the condition does not hold (somebody else wrote first)."""
        try:
            self.db.put_item(TableName=self.table, Item=item, **condition)
        except self.ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    # -- grants ------------------------------------------------------------------------------

    def grant(self, grant_id: str, any_integration: bool = False) -> GrantRecord | None:
        """The grant's record; None if there is none; Forged if the item there is not ours."""
        item = self._get(*grant_key(grant_id))
        if item is None:
            return None
        body = self._verified(item, any_integration)
        record = GrantRecord.from_body(body) if body is not None else None
        if record is None or record.grant_id != grant_id:
            raise Forged(f"ledger item for grant {grant_id}")
        return record

    def create(self, record: GrantRecord) -> bool:
        """Writes the record only where there is no item yet (a grant, or a revoke's tombstone
        for a grant never made); False when something was there first."""
        ttl = record.expires_at if record.state == "tombstone" else None
        item = self._item(*grant_key(record.grant_id), record.body(), ttl)
        return self._put(item, ConditionExpression="attribute_not_exists(pk)")

    def bury(self, record: GrantRecord, until: datetime) -> bool:
        """The active record becomes a tombstone until `until` (the TTL then deletes it); only
        if the item is still the one the revoke read."""
        pk, sk = grant_key(record.grant_id)
        current = self._item(pk, sk, record.body(), None)["label"]
        stone = GrantRecord(
            record.grant_id,
            "tombstone",
            until,
            record.user_id,
            record.permission_set,
            record.accounts,
            record.digest,
            record.integration,
        )
        return self._put(
            self._item(pk, sk, stone.body(), until),
            ConditionExpression="#label = :label",
            ExpressionAttributeNames={"#label": "label"},
            ExpressionAttributeValues={":label": current},
        )

    def forget(self, record: GrantRecord) -> None:
        """Deletes a tombstone the sweep found expired (the TTL would, within a day or two)."""
        pk, sk = grant_key(record.grant_id)
        label = self._item(pk, sk, record.body(), record.expires_at)["label"]
        try:
            self.db.delete_item(
                TableName=self.table,
                Key={"pk": {"S": pk}, "sk": {"S": sk}},
                ConditionExpression="#label = :label",
                ExpressionAttributeNames={"#label": "label"},
                ExpressionAttributeValues={":label": label},
            )
        except self.ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise

    def records(self) -> list[GrantRecord]:
        """Every grant record of this integration whose label verifies (the sweep's view)."""
        found: list[GrantRecord] = []
        params: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "sk = :grant",
            "ExpressionAttributeValues": {":grant": {"S": GRANT_SK}},
            "ConsistentRead": True,
        }
        while True:
            page = self.db.scan(**params)
            for item in page.get("Items", []):
                body = self._verified(item)
                record = GrantRecord.from_body(body) if body is not None else None
                if record is not None and item["pk"]["S"] == grant_key(record.grant_id)[0]:
                    found.append(record)
            if not page.get("LastEvaluatedKey"):
                return found
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # -- holds -------------------------------------------------------------------------------

    def hold(self, record: GrantRecord, account: str) -> None:
        pk, sk = hold_key(record.permission_set, account, record.user_id, record.grant_id)
        body = {"integration": self.integration, "grant_id": record.grant_id}
        self._put(self._item(pk, sk, body, None))

    def release(self, record: GrantRecord, account: str) -> None:
        pk, sk = hold_key(record.permission_set, account, record.user_id, record.grant_id)
        self.db.delete_item(TableName=self.table, Key={"pk": {"S": pk}, "sk": {"S": sk}})

    def holders(
        self, permission_set: str, account: str, user_id: str, *, live_only: bool = True
    ) -> list[str]:
        """The grants that hold this assignment: each hold verified, and its grant record
        verified and active (a replayed hold of a revoked grant holds nothing). `live_only`
        also drops grants past their expiry, whose revoke is due. Holds of this connector's
        other integrations on the same instance count too: their grants rely on the same
        assignment."""
        pk = hold_key(permission_set, account, user_id, "")[0]
        params: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ConsistentRead": True,
        }
        grants: list[str] = []
        now = utcnow()
        while True:
            page = self.db.query(**params)
            for item in page.get("Items", []):
                body = self._verified(item, any_integration=True)
                if body is None or body.get("grant_id") != item["sk"]["S"]:
                    continue
                try:
                    record = self.grant(item["sk"]["S"], any_integration=True)
                except Forged:
                    continue
                if record is None or record.state != "active":
                    continue
                if record.permission_set != permission_set or record.user_id != user_id:
                    continue
                if account not in record.accounts or (live_only and record.expires_at <= now):
                    continue
                grants.append(record.grant_id)
            if not page.get("LastEvaluatedKey"):
                return grants
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
