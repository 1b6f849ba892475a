"""What `jitc serve` accepted is ended with an outcome the control plane can match, whatever
changed in the catalog between the 202 and the run (a real process on the real PostgreSQL)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pgtest import INTEGRATION
from serveproc import PUBLIC, Serve, grant, revoke

from jitc.models import derive_grant_id
from jitc.signing import signing_keypair


@pytest.fixture
def serve(tmp_path: Path, admin: Any, make_env: Any) -> Iterator[Serve]:
    server = Serve(tmp_path)
    yield server
    server.close()


def _outcome(outcomes: list[dict[str, Any]], request_id: str, status: str) -> bool:
    return any(o["request_id"] == request_id and o["status"] == status for o in outcomes)


def test_a_revoke_pending_across_a_key_rotation_still_revokes(serve: Serve, admin: Any) -> None:
    request_id = f"rot-{secrets.token_hex(3)}"
    serve.start()
    assert serve.send(grant(request_id))[0] == 202
    outcomes = serve.wait_for(lambda o: _outcome(o, request_id, "granted"))
    principal = next(o for o in outcomes if o["request_id"] == request_id)["principal"]
    serve.kill()

    serve.start(reachable=False)  # the revoke is accepted, and fails while the target is down
    assert serve.send(revoke(request_id))[0] == 202
    serve.wait_for(lambda o: _outcome(o, request_id, "failed"))
    serve.kill()

    # The operator rotates the control plane's key; the old one is no longer in the catalog.
    _, rotated = signing_keypair()
    serve.start(control_plane={"keys": {"cp-2": rotated}, "max_skew": "2m"})
    serve.wait_for(lambda o: _outcome(o, request_id, "revoked"))
    can_login = admin.execute(
        "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (principal,)
    ).fetchall()
    assert can_login in ([], [(False,)])


def test_a_grant_past_max_message_age_ends_with_a_refused_outcome_naming_it(
    serve: Serve,
) -> None:
    request_id = f"age-{secrets.token_hex(3)}"
    # The target is down for longer than a grant may wait: it is retried, then refused.
    serve.start(
        reachable=False,
        control_plane={"keys": {"cp": PUBLIC}, "max_skew": "2m", "max_message_age": "2s"},
    )
    assert serve.send(grant(request_id))[0] == 202
    outcomes = serve.wait_for(lambda o: _outcome(o, request_id, "refused"))
    refused = next(o for o in outcomes if o["status"] == "refused")
    assert refused["request_id"] == request_id
    assert refused["grant_id"] == derive_grant_id(INTEGRATION, request_id)
    assert refused["field"] == "timestamp"
