"""The signed HTTP intake of the local runtime: bad input gets a 4xx naming the field and changes
nothing in PostgreSQL; a good request runs end to end through queue, worker and scheduler."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from pgtest import BOX_PUBLIC, INTEGRATION, LABEL_KEY, SCHEMA, all_roles, catalog_doc, our_roles

from jitc.catalog import parse_catalog
from jitc.local import MemorySink
from jitc.runtime import LocalRuntime
from jitc.secrets import EnvSecretStore, SecretStores
from jitc.signing import HEADER_KEY_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, sign, signing_keypair

PRIVATE, PUBLIC = signing_keypair()
OTHER_PRIVATE, _ = signing_keypair()


def start_runtime(sink: MemorySink) -> LocalRuntime:
    doc = catalog_doc()
    doc["control_plane"] = {"keys": {"cp": PUBLIC}, "max_skew": "2m"}
    secrets = SecretStores({"mem": EnvSecretStore({"admin": "", "label": LABEL_KEY})})
    return LocalRuntime(parse_catalog(doc), secrets, sink, port=0, sweep_interval=3600).start()


@pytest.fixture
def runtime(admin: Any, make_env: Any) -> Iterator[tuple[LocalRuntime, MemorySink]]:
    sink = MemorySink()
    rt = start_runtime(sink)
    yield rt, sink
    rt.stop()


def grant_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": f"http-{time.monotonic_ns()}",
        "action": "grant",
        "integration": INTEGRATION,
        "permission": "read-only",
        "resources": [SCHEMA],
        "identity": {"email": "bob@example.com", "username": "bob", "public_key": BOX_PUBLIC},
        "duration": "2s",
        "justification": "ticket 42",
    }
    body.update(overrides)
    return body


def post(
    rt: LocalRuntime,
    body: bytes,
    key: str | None = PRIVATE,
    timestamp: int | None = None,
    key_id: str = "cp",
    signature: str | None = None,
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        envelope = sign(body, key, key_id, timestamp)
        headers.update(
            {
                HEADER_KEY_ID: key_id,
                HEADER_TIMESTAMP: str(envelope.timestamp),
                HEADER_SIGNATURE: signature or envelope.signature,
            }
        )
    request = urllib.request.Request(
        rt.url + "/v1/requests", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


BAD = {
    "sql in username": (
        _json(
            grant_body(
                identity={"email": "b@example.com", "username": 'bob"; DROP ROLE postgres; --'}
            )
        ),
        400,
        "identity.username",
    ),
    "sql in email": (
        _json(grant_body(identity={"email": "b'; DROP TABLE x;--@example.com"})),
        400,
        "identity.email",
    ),
    "sql in resource": (
        _json(grant_body(resources=["public; DROP SCHEMA public"])),
        400,
        "resources.0",
    ),
    "resource not allowed": (_json(grant_body(resources=["pg_catalog"])), 403, "resources[0]"),
    "sql in permission": (_json(grant_body(permission="read-only'; --")), 400, "permission"),
    "unknown permission": (_json(grant_body(permission="superuser")), 403, "permission"),
    "unknown integration": (_json(grant_body(integration="prod-db")), 403, "integration"),
    "duration over max": (_json(grant_body(duration="9h")), 403, "duration"),
    "permission max": (_json(grant_body(permission="read-write", duration="3h")), 403, "duration"),
    "zero duration": (_json(grant_body(duration="0m")), 400, "duration"),
    "past expiry": (
        _json(
            {
                **{k: v for k, v in grant_body().items() if k != "duration"},
                "expires_at": "2020-01-01T00:00:00Z",
            }
        ),
        403,
        "expires_at",
    ),
    "unknown field": (_json(grant_body(role="postgres")), 400, "role"),
    "missing identity": (
        _json({k: v for k, v in grant_body().items() if k != "identity"}),
        400,
        "body",
    ),
    "no public key": (
        _json(grant_body(identity={"email": "b@example.com"})),
        403,
        "identity.public_key",
    ),
    "bad public key": (
        _json(grant_body(identity={"email": "b@example.com", "public_key": "AAAA"})),
        400,
        "identity.public_key",
    ),
    "malformed json": (b'{"request_id": "x", ', 400, "body"),
    "not an object": (b"[1, 2]", 400, "body"),
    "oversize body": (_json(grant_body(justification="x" * 70_000)), 413, "body"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_with_the_field_and_changes_nothing(
    runtime: Any, admin: Any, case: str
) -> None:
    rt, sink = runtime
    body, status, field = BAD[case]
    before = all_roles(admin, "bob", "postgres"), our_roles(admin)
    got, answer = post(rt, body)
    assert got == status, answer
    assert answer["error"] == "refused" and answer["field"] == field, answer
    time.sleep(0.3)  # had anything been queued, the worker would have run it by now
    assert (all_roles(admin, "bob", "postgres"), our_roles(admin)) == before
    assert sink.outcomes == []


def test_unsigned_forged_stale_future_unknown_key_and_replayed_are_refused(
    runtime: Any, admin: Any
) -> None:
    rt, sink = runtime
    body = _json(grant_body())
    before = our_roles(admin)
    assert post(rt, body, key=None)[0] == 401
    assert post(rt, body, key=OTHER_PRIVATE)[1]["field"] == "signature"
    assert post(rt, body, timestamp=int(time.time()) - 600)[1]["field"] == "timestamp"
    assert post(rt, body, timestamp=int(time.time()) + 600)[1]["field"] == "timestamp"
    assert post(rt, body, key_id="unknown")[1] == post(rt, body, key=OTHER_PRIVATE)[1]
    tampered = body.replace(b"read-only", b"read-write")
    envelope = sign(body, PRIVATE, "cp")
    assert post(rt, tampered, signature=envelope.signature, timestamp=envelope.timestamp)[0] == 401
    now = int(time.time())
    first = post(rt, body, timestamp=now)
    assert first[0] == 202
    replay = post(rt, body, timestamp=now)
    assert replay[0] == 409 and replay[1]["field"] == "signature"
    deadline = time.monotonic() + 10
    while len(sink.outcomes) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [o.status for o in sink.outcomes] == ["granted"], sink.outcomes
    assert len(our_roles(admin)) == len(before) + 1


def test_signed_grant_runs_and_the_scheduled_revoke_fires(runtime: Any, admin: Any) -> None:
    rt, sink = runtime
    body = grant_body(duration="2s")
    status, answer = post(rt, _json(body))
    assert status == 202 and answer["request_id"] == body["request_id"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(o.action == "revoke" for o in sink.outcomes):
        time.sleep(0.1)
    statuses = [(o.action, o.status) for o in sink.outcomes]
    assert statuses == [("grant", "granted"), ("revoke", "revoked")], statuses
    revoke = sink.outcomes[-1]
    assert revoke.grant_id == answer["grant_id"] and revoke.verified
    assert revoke.revocation_lag_seconds is not None and 0 <= revoke.revocation_lag_seconds < 5
    assert [r for r in our_roles(admin) if "_x_" not in r] == []


class FlakySink(MemorySink):
    """Fails the first outcome, as a webhook endpoint that is briefly down would."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def outcome(self, outcome: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("control plane unreachable")
        super().outcome(outcome)


def test_worker_survives_a_failing_sink_and_redelivers(admin: Any, make_env: Any) -> None:
    sink = FlakySink()
    rt = start_runtime(sink)
    try:
        assert post(rt, _json(grant_body(duration="1m")))[0] == 202
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not sink.outcomes:
            time.sleep(0.05)
        assert [o.status for o in sink.outcomes] == ["granted"]
        assert sink.outcomes[0].reissued  # the redelivery found the role the first try made
    finally:
        rt.stop()
