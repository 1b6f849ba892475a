"""The contract: strict models, durations, and published schemas that match the code."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jitc.errors import Refused
from jitc.messages import parse_request
from jitc.models import SCHEMA_MODELS, derive_grant_id, parse_duration

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


@pytest.mark.parametrize("name", sorted(SCHEMA_MODELS))
def test_published_schema_matches_the_model(name: str) -> None:
    published = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    assert published == SCHEMA_MODELS[name].model_json_schema(), (
        f"schemas/{name}.schema.json is stale: run `jitc schema --out schemas`"
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15m", 900),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1d", 86400),
        ("45s", 45),
        ("PT15M", 900),
        ("PT2H", 7200),
        ("P1DT2H", 93600),
        ("PT90S", 90),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text", ["", "0m", "PT0S", "15", "m", "15 m", "-5m", "P", "PT", "1w", "15min"]
)
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def _grant(**changes: object) -> str:
    doc: dict[str, object] = {
        "request_id": "r-1",
        "action": "grant",
        "integration": "db",
        "permission": "read-only",
        "resources": ["public"],
        "identity": {"email": "a@example.com"},
        "duration": "15m",
    }
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not None})


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"extra": 1}, "extra"),
        ({"resources": "public"}, "resources"),
        ({"duration": 900}, "duration"),
        ({"expires_at": "2030-01-01T00:00:00Z"}, "body"),  # both duration and expires_at
        ({"duration": None, "expires_at": "2030-01-01T00:00:00"}, "expires_at"),  # no timezone
        ({"action": "delete"}, "action"),
        ({"request_id": "../etc"}, "request_id"),
        ({"grant_id": "gaaaaaaaaaaaaaaaaaaaaaaaa"}, "body"),
        ({"resources": []}, "body"),
    ],
)
def test_requests_are_strict(changes: dict[str, object], field: str) -> None:
    with pytest.raises(Refused) as err:
        parse_request(_grant(**changes))
    assert err.value.field == field


def test_expiry_counts_from_the_signed_moment() -> None:
    request = parse_request(_grant())
    issued = datetime(2030, 1, 1, tzinfo=UTC)
    assert request.expiry(issued) == issued + timedelta(minutes=15)


def test_revoke_shapes() -> None:
    revoke = parse_request(
        json.dumps({"request_id": "r-1", "action": "revoke", "integration": "db"})
    )
    assert revoke.target_grant_id == derive_grant_id("db", "r-1")
    named = parse_request(
        json.dumps(
            {
                "request_id": "r-2",
                "action": "revoke",
                "integration": "db",
                "grant_id": revoke.target_grant_id,
            }
        )
    )
    assert named.target_grant_id == revoke.target_grant_id
    with pytest.raises(Refused):
        parse_request(
            json.dumps(
                {"request_id": "r-3", "action": "revoke", "integration": "db", "duration": "5m"}
            )
        )


def test_grant_ids_differ_per_integration_and_request() -> None:
    ids = {derive_grant_id(i, r) for i in ("a", "b") for r in ("1", "2")}
    assert len(ids) == 4
