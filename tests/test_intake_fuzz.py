"""The intake answers every body and header a client can send with a JSON 4xx or a 202, and
never raises: random bytes, random headers, and signed bodies near the request shape."""

from __future__ import annotations

import io
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitc.catalog import parse_catalog
from jitc.http_intake import intake_app
from jitc.intake import Intake
from jitc.signing import sign, signing_keypair

PRIVATE, PUBLIC = signing_keypair()
CATALOG = parse_catalog(
    {
        "control_plane": {"keys": {"cp": PUBLIC}},
        "connector": {"label_key": "env:JITC_TEST_LABEL_KEY"},
        "integrations": {
            "db": {
                "kind": "postgresql",
                "connection": {"dbname": "test", "user": "postgres"},
                "permissions": {"ro": {"template": "read-only", "resources": ["public"]}},
            }
        },
    }
)


class _Queue:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def enqueue(self, message: str, group: str) -> None:
        self.messages.append(message)


def _call(headers: dict[str, str], body: bytes, length: str | None = None) -> tuple[int, Any]:
    queue = _Queue()
    app = intake_app(Intake(CATALOG, queue), lambda: {})
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/v1/requests",
        "CONTENT_LENGTH": str(len(body)) if length is None else length,
        "wsgi.input": io.BytesIO(body),
    }
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    seen: list[str] = []
    chunks = app(environ, lambda status, _headers: seen.append(status))
    status = int(seen[0].split()[0])
    doc = json.loads(b"".join(chunks))
    assert (status == 202) == bool(queue.messages)
    return status, doc


FIELDS = st.sampled_from(
    [
        "request_id",
        "action",
        "integration",
        "permission",
        "resources",
        "identity",
        "duration",
        "expires_at",
        "justification",
        "grant_id",
        "extra",
    ]
)
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(
        ["grant", "revoke", "db", "ro", "public", "15m", "9999-12-31T23:59:59-23:59"]
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=300),
    headers=st.dictionaries(
        st.sampled_from(["X-Jitc-Key-Id", "X-Jitc-Timestamp", "X-Jitc-Signature", "Content-Type"]),
        st.text(max_size=30),
        max_size=4,
    ),
    length=st.one_of(st.none(), st.text(max_size=6)),
)
def test_random_bytes_and_headers_get_a_json_4xx(
    body: bytes, headers: dict[str, str], length: str | None
) -> None:
    status, doc = _call(headers, body, length)
    assert 400 <= status < 500 and doc["error"] == "refused" and doc["field"]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(FIELDS, VALUES, max_size=8))
def test_signed_bodies_near_the_request_shape_get_a_json_answer(doc: dict[str, Any]) -> None:
    body = json.dumps(doc, allow_nan=True).encode()
    status, answer = _call(sign(body, PRIVATE, "cp").headers(), body)
    assert status == 202 or (400 <= status < 500 and answer["field"]), (status, answer)
