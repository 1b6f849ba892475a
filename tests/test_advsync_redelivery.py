"""README, "Idempotent under redelivery": "A redelivery after a revoke is refused, so it cannot
bring a password back." On Redis under `acl_save: never` (a server without an ACL file, which
the catalog accepted) a restart forgets the tombstone, and the late redelivery makes the grant
again with the very password the revoke ended. A private redis-server, as in
test_redis_aclfile, so the shared one is never restarted."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from test_redis_aclfile import Private, engine, request

from jitc.messages import Work


def test_after_a_restart_without_an_acl_file_a_late_redelivery_brings_the_password_back(
    tmp_path: Path,
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed here")
    server = Private(tmp_path, aclfile=False)
    server.start()
    try:
        now = datetime.now(UTC)
        eng = engine(server.port, "never")
        first = eng.execute_batch([Work(request("grant", "back-1"), now)], plain=True)[0]
        assert first.status == "granted" and first.credentials is not None
        assert eng.execute(request("revoke", "back-1")).status == "revoked"
        server.stop()
        server.start()
        late = engine(server.port, "never").execute_batch(
            [Work(request("grant", "back-1"), now)], plain=True
        )[0]
        assert late.status == "granted" and late.credentials is not None
        assert late.credentials["password"] == first.credentials["password"]
        user = redis.Redis(
            port=server.port,
            username=first.credentials["username"],
            password=first.credentials["password"],
        )
        assert user.ping()  # the revoked grant's password logs in again
        user.close()
    finally:
        server.stop()
