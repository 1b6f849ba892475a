"""The inventory's models: what `jitc sync` sends (its JSON Schema, checked by the tests and the
control plane), and every model the published JSON Schemas are made from. Apart from
`jitc.models` so that no function's cold start defines them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from jitc.models import (
    INVENTORY_NAME_MAX,
    AccessRequest,
    AuditEvent,
    Grant,
    Name,
    Outcome,
    _Strict,
    empty_list,
)

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class InventoryRecord(_Strict):
    """One name a target holds, or (kinds `permission` and `grant`) the connector's own view.
    Names, ids and ARNs only: never a row, a secret or a policy's text."""

    # The inventory models describe what `jitc sync` sends (its JSON Schema, checked by the
    # tests and the control plane): built when first used, not in every function's cold start.
    model_config = ConfigDict(defer_build=True)

    kind: str = Field(pattern=r"^[a-z_]{1,32}$")
    name: str = Field(max_length=INVENTORY_NAME_MAX)
    parent: str | None = Field(
        default=None, max_length=INVENTORY_NAME_MAX, description="a table's schema, a user's host"
    )
    arn: str | None = Field(default=None, max_length=INVENTORY_NAME_MAX)
    id: str | None = Field(default=None, max_length=INVENTORY_NAME_MAX)
    truncated: bool = Field(
        default=False, description="a field was longer than the limit and was cut"
    )
    full_sha256: Sha256 | None = Field(
        default=None,
        description="when truncated: sha256 of the uncut record, to tell cut names apart",
    )
    permission: str | None = Field(default=None, max_length=INVENTORY_NAME_MAX)
    principal: str | None = Field(default=None, max_length=INVENTORY_NAME_MAX)
    identity: str | None = Field(default=None, max_length=INVENTORY_NAME_MAX)
    state: str | None = Field(default=None, max_length=32)
    expires_at: AwareDatetime | None = None
    resources: list[str] = Field(
        default_factory=empty_list, description="permission: resources allowed"
    )
    max_duration: str | None = Field(default=None, max_length=32)


class InventoryEvent(_Strict):
    """What `jitc sync` sends, as the body's `inventory` (webhook type `inventory`).

    An integration's inventory travels as pages and then one manifest. A page carries records
    and the sha256 of their canonical JSON; the manifest lists every page's hash in order. When
    the control plane acknowledged a version (the webhook's 2xx answer to a manifest names it:
    `{"ack": {"sync_id": ..., "integration": ..., "version": ...}}`), the next sync sends only
    the pages whose hash that version lacks, and the manifest names it as `base_version`.
    """

    model_config = ConfigDict(defer_build=True)

    schema_version: Literal[1] = 1
    kind: Literal["page", "manifest"]
    sync_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    integration: Name
    target_kind: str = Field(pattern=r"^[a-z0-9_]{1,32}$")
    time: AwareDatetime
    index: int | None = Field(default=None, ge=0, description="page: its place in the manifest")
    hash: Sha256 | None = Field(default=None, description="page: sha256 of its records")
    records: list[InventoryRecord] = Field(default_factory=empty_list)
    status: Literal["complete", "failed"] | None = Field(
        default=None, description="manifest: failed means the target could not be read"
    )
    version: Sha256 | None = Field(default=None, description="manifest: hash of the page hashes")
    base_version: Sha256 | None = Field(
        default=None, description="manifest: the acknowledged version unsent pages come from"
    )
    pages: list[Sha256] = Field(
        default_factory=empty_list, description="manifest: every page, in order"
    )
    sent: list[int] = Field(
        default_factory=empty_list, description="manifest: pages sent this time"
    )
    record_count: int | None = Field(default=None, ge=0)
    error: str | None = Field(default=None, max_length=1000)


# Every model the published JSON Schemas (`schemas/`, `jitc schema`) are made from.
SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "access-request": AccessRequest,
    "grant": Grant,
    "outcome": Outcome,
    "audit-event": AuditEvent,
    "inventory-event": InventoryEvent,
}
