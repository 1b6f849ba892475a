"""The ledger of the templates that make one user per grant and label it with a compact label
(`jitc.labels`): Redis ACL users and RabbitMQ users. The target is the ledger: a user is the
connector's only if one of its labels verifies for that very user name, and a grant is refused
on a user it did not make, on a tombstone, and under another request's digest."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from jitc.errors import Refused
from jitc.labels import COMPACT_PREFIX, CompactLabel, LabelKey, decode_compact_label
from jitc.models import Grant


def user_name(prefix: str, grant_id: str) -> str:
    """A pure function of the grant: every delivery and the revoke find the user by name."""
    return f"{prefix}{grant_id}"


def tombstone_name(prefix: str, grant_id: str) -> str:
    return f"{prefix}x-{grant_id}"


def owned_label(
    key: LabelKey,
    kind: str,
    integration: str,
    name: str,
    texts: Iterable[str],
    tombstone: bool | None = None,
) -> CompactLabel | None:
    """The label among `texts` that makes user `name` ours: written with our key for this name,
    for this integration, and naming the grant whose user (or tombstone) `name` is, under any
    `user_prefix` the integration has had: what a revoke or the sweep removes was fixed when
    the grant was made, whatever the catalog would name a new grant's user now. A label copied
    from another user, or naming another grant, is not one. `tombstone`: what a look by name
    expects there. One name can be both under two prefixes (`P`'s tombstone `Px-g...` is user
    `g...` under `Px-`), and a user read as a tombstone would end a revoke that ended nothing."""
    for text in texts:
        if not text.startswith(COMPACT_PREFIX + ":"):
            continue
        label = decode_compact_label(key, kind, name, text)
        if label is None or label.integration != integration:
            continue
        if tombstone is not None and (label.state == "tombstone") != tombstone:
            continue
        namer = tombstone_name if label.state == "tombstone" else user_name
        ending = namer("", label.grant_id)
        if name.endswith(ending) and len(name) > len(ending):
            return label
    return None


def grant_of_name(name: str) -> str | None:
    """The grant id a user name ends with, under any prefix (tombstones included): grant ids
    are `g` and 24 base32 characters."""
    tail = name[-25:]
    if len(name) > 25 and tail[0] == "g" and all(c in _BASE32 for c in tail[1:]):
        return tail
    return None


_BASE32 = frozenset("abcdefghijklmnopqrstuvwxyz234567")


def check_grantable(
    name: str,
    exists: bool,
    label: CompactLabel | None,
    stone_name: str,
    stone_exists: bool,
    tombstoned: bool,
    digest: str,
) -> None:
    """Refuse a grant on a user the connector did not make, of a revoked grant, under a
    request id another request was granted with, or whose tombstone's name a user the
    connector did not make holds (its revoke could not remember itself)."""
    if exists and label is None:
        raise Refused("request_id", f"user {name!r} exists and was not created by this connector")
    if tombstoned:
        raise Refused("request_id", "this grant was already revoked; it will not be made again")
    if stone_exists:
        raise Refused(
            "request_id",
            f"user {stone_name!r}, the name of this grant's tombstone, exists and was not "
            "created by this connector",
        )
    if label is not None and label.digest != digest:
        raise Refused(
            "request_id", "another request with this request id was granted; refusing this one"
        )


def tombstone_label(
    integration: str, grant_id: str, until: datetime, live: CompactLabel | None
) -> CompactLabel:
    """The label of a tombstone: the revoke is remembered until `until`, so a late or repeated
    grant is refused until then."""
    return CompactLabel(
        integration,
        grant_id,
        "tombstone",
        until,
        live.permission if live else "-",
        live.digest if live else "-" * 8,
    )


def grant_of(kind: str, principal: str, label: CompactLabel) -> Grant:
    """A grant as the target's ledger holds it."""
    return Grant(
        grant_id=label.grant_id,
        request_id="",
        integration=label.integration,
        permission=label.permission,
        kind=kind,
        principal=principal,
        identity="",
        expires_at=label.expires_at,
        state=label.state,
        detail={"digest": label.digest},
    )
