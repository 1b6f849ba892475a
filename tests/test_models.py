"""The contract: strict models, durations, and published schemas that match the code."""

from __future__ import annotations

import copy
import json
import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jitc.catalog import parse_catalog
from jitc.errors import Refused
from jitc.inventory_models import SCHEMA_MODELS
from jitc.messages import parse_request
from jitc.models import derive_grant_id, parse_duration, request_digest
from jitc.openapi import openapi_document

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


@pytest.mark.parametrize("name", sorted(SCHEMA_MODELS))
def test_published_schema_matches_the_model(name: str) -> None:
    published = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    assert published == SCHEMA_MODELS[name].model_json_schema(), (
        f"schemas/{name}.schema.json is stale: run `jitc schema --out schemas`"
    )


def test_published_openapi_document_matches_the_models() -> None:
    published = json.loads((SCHEMAS / "openapi.json").read_text())
    assert published == openapi_document(), (
        "schemas/openapi.json is stale: run `jitc schema --out schemas`"
    )


def _refs(doc: object) -> list[str]:
    if isinstance(doc, dict):
        return [doc["$ref"]] if "$ref" in doc else [r for v in doc.values() for r in _refs(v)]
    if isinstance(doc, list):
        return [r for v in doc for r in _refs(v)]
    return []


def test_openapi_document_is_fed_by_the_request_schema_and_every_ref_resolves() -> None:
    doc = openapi_document()
    components = doc["components"]["schemas"]
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in components, ref
    published = json.loads((SCHEMAS / "access-request.schema.json").read_text())
    assert set(components["AccessRequest"]["properties"]) == set(published["properties"])
    assert components["AccessRequest"]["required"] == published["required"]
    post = doc["paths"]["/v1/requests"]["post"]
    assert {"202", "400", "401", "403", "409", "413", "503"} <= set(post["responses"])


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


@pytest.mark.parametrize(
    "moment",
    ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59.999999-00:01"],
)
def test_an_expiry_at_the_edge_of_the_calendar_is_invalid_input_not_an_overflow(
    moment: str,
) -> None:
    with pytest.raises(Refused) as err:
        parse_request(_grant(duration=None, expires_at=moment))
    assert err.value.field == "expires_at"


CATALOG = {
    "control_plane": {"max_skew": "5m"},
    "connector": {"label_key": "env:JITC_TEST_LABEL_KEY"},
    "integrations": {
        "db": {
            "kind": "postgresql",
            "connection": {"dbname": "test", "user": "postgres"},
            "max_duration": "1h",
            "permissions": {"read-only": {"template": "read-only", "resources": ["public"]}},
        }
    },
}


def test_the_last_moment_of_the_calendar_is_refused_as_too_long() -> None:
    request = parse_request(_grant(duration=None, expires_at="9999-12-31T23:59:59+00:00"))
    now = datetime.now(UTC)
    with pytest.raises(Refused) as err:
        parse_catalog(CATALOG).check_grant(request, now, now, plain=True)
    assert err.value.field == "expires_at"


def test_a_signature_time_ahead_of_now_does_not_lengthen_access() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    ahead = now + timedelta(minutes=4)  # inside the allowed skew
    spec = parse_catalog(CATALOG).check_grant(parse_request(_grant()), ahead, now, plain=True)
    assert spec.expires_at == now + timedelta(minutes=15)
    behind = now - timedelta(minutes=4)  # late: less time, as before
    spec = parse_catalog(CATALOG).check_grant(parse_request(_grant()), behind, now, plain=True)
    assert spec.expires_at == behind + timedelta(minutes=15)


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


def test_grant_ids_are_those_earlier_releases_derived() -> None:
    # Targets hold these ids in their labels: a redelivery after an upgrade must land on the
    # grant an earlier release made ("g" + base32 of the sha256's first 15 bytes).
    assert derive_grant_id("db", "r-1") == "grbns525dh6jb4utvkjjiboew"
    assert derive_grant_id("pg-prod", "2026-11-29T00:00:00Z-7f3a") == "grwugeq2e6fnffexh253tq6au"


def test_grant_ids_differ_per_integration_and_request() -> None:
    ids = {derive_grant_id(i, r) for i in ("a", "b") for r in ("1", "2")}
    assert len(ids) == 4


def test_derived_grant_id_and_digest_are_kept_without_changing_the_request() -> None:
    request = parse_request(_grant())
    twin = parse_request(_grant())
    dumped, text = request.model_dump(), request.model_dump_json()
    assert request.target_grant_id == derive_grant_id("db", "r-1")
    assert request.digest == request_digest(twin)
    # Held by the instance now, yet in no dump, comparison or digest of it.
    assert {"target_grant_id", "digest"} <= set(vars(request))
    assert request.model_dump() == dumped and request.model_dump_json() == text
    assert request_digest(request) == request_digest(twin) == request.digest
    assert request == twin and twin == request
    for clone in (pickle.loads(pickle.dumps(request)), copy.copy(request), copy.deepcopy(request)):
        assert clone == request and clone.model_dump_json() == text
        assert clone.target_grant_id == request.target_grant_id
    # A copy with another request id derives its own grant id and digest.
    other = request.model_copy(update={"request_id": "r-2"})
    assert other.target_grant_id == derive_grant_id("db", "r-2")
    assert other.digest == request_digest(parse_request(_grant(request_id="r-2")))
    assert other.digest != request.digest


def test_audit_event_ids_are_random_version_4_uuids_in_hex() -> None:
    import uuid

    from jitc.models import AuditEvent

    ids = [AuditEvent(type="sweep", status="revoked").event_id for _ in range(200)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(hex=text)
        assert parsed.hex == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


_FIRST_USE_IN_THREADS = """
import json, sys, threading
from jitc.messages import parse_request
from jitc.models import AccessRequest, AuditEvent, Outcome

sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
assert not AccessRequest.__pydantic_complete__  # built at first use, not at import
grant = sys.argv[1]
start, errors = threading.Barrier(16), []

def first_use() -> None:
    start.wait()
    try:
        request = parse_request(grant)
        Outcome(request_id=request.request_id, action="grant", status="granted",
                integration=request.integration, grant_id=request.target_grant_id)
        AuditEvent(type="grant", status="granted", request_id=request.request_id)
    except Exception as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=first_use) for _ in range(16)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(errors))
"""


def test_models_built_at_first_use_validate_in_every_thread_that_first_uses_them() -> None:
    # The models are built at first use (defer_build), and a worker's threads may all first
    # use them at once: each must validate with the model's own validator, never fail or fall
    # back to another. Each run is a fresh interpreter, where the first use is the build.
    import subprocess
    import sys

    for _ in range(5):
        done = subprocess.run(
            [sys.executable, "-c", _FIRST_USE_IN_THREADS, _grant()],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        assert json.loads(done.stdout) == []
