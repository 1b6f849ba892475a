"""A private Redis, configured as the shared one is not: ACL SAVE where the server keeps its
users in an ACL file (grants and tombstones survive a restart there), and a server whose
channels default to all. (Started on a free port in a temporary directory, so that the shared
one is never restarted or reconfigured.)"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.local import MemorySink, NullScheduler
from jitc.messages import Work, parse_request
from jitc.secrets import EnvSecretStore, SecretStores

LABEL_KEY = secrets.token_urlsafe(32)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Private:
    def __init__(self, directory: Path, aclfile: bool, *extra: str) -> None:
        self.port = _free_port()
        self.dir = directory
        self.aclfile = aclfile
        self.extra = extra
        if aclfile:
            (directory / "users.acl").write_text("user default on nopass ~* &* +@all\n")

    def start(self) -> None:
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
        ]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "yes"]
        args += ["--pidfile", str(self.dir / "redis.pid")]
        if self.aclfile:
            args += ["--aclfile", str(self.dir / "users.acl")]
        args += list(self.extra)
        subprocess.run(args, check=True, capture_output=True)
        for _ in range(100):
            try:
                self.client().ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis did not start")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, retry=Retry(NoBackoff(), 0))

    def stop(self) -> None:
        with contextlib.suppress(redis.ConnectionError):  # SHUTDOWN closes the connection
            self.client().shutdown(nosave=True)
        for _ in range(100):
            try:
                self.client().ping()
            except redis.ConnectionError:
                return
            time.sleep(0.05)


@pytest.fixture(params=[True, False], ids=["aclfile", "no-aclfile"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Private]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed here")
    private = Private(tmp_path, request.param)
    private.start()
    yield private
    private.stop()


def engine(port: int, acl_save: str = "auto") -> Engine:
    doc = {
        "connector": {"label_key": "mem:label"},
        "integrations": {
            "redis-private": {
                "kind": "redis",
                "connection": {
                    "host": "127.0.0.1",
                    "port": port,
                    "tls": False,
                    "acl_save": acl_save,
                },
                "max_duration": "8h",
                "permissions": {"read-only": {"template": "read-only", "resources": ["k:*"]}},
            }
        },
    }
    stores = SecretStores({"mem": EnvSecretStore({"label": LABEL_KEY})})
    return Engine(parse_catalog(doc), stores, NullScheduler(), MemorySink())


def request(action: str, request_id: str) -> Any:
    doc: dict[str, Any] = {
        "request_id": request_id,
        "action": action,
        "integration": "redis-private",
    }
    if action == "grant":
        doc.update(
            permission="read-only",
            resources=["k:*"],
            identity={"email": "a@example.com"},
            duration="30m",
        )
    return parse_request(json.dumps(doc))


def test_a_restart_keeps_grants_and_tombstones_only_with_an_acl_file(server: Private) -> None:
    # Without an ACL file the catalog must say it accepts that (acl_save: never).
    acl_save = "auto" if server.aclfile else "never"
    eng = engine(server.port, acl_save)
    now = datetime.now(UTC)
    granted = eng.execute_batch([Work(request("grant", "keep-1"), now)], plain=True)[0]
    early = eng.execute(request("revoke", "early-1"))  # a tombstone: the late grant is refused
    assert granted.status == "granted" and early.status == "revoked"
    if server.aclfile:
        saved = (server.dir / "users.acl").read_text()
        assert f"user {granted.principal} on" in saved and "x-" in saved

    server.stop()
    server.start()
    eng = engine(server.port, acl_save)
    users = server.client().execute_command("ACL", "USERS")
    if server.aclfile:
        assert granted.principal in users
        late = eng.execute_batch([Work(request("grant", "early-1"), now)], plain=True)[0]
        assert late.status == "refused" and late.field == "request_id"
        assert eng.execute(request("revoke", "keep-1")).verified is True
        assert granted.principal not in (server.dir / "users.acl").read_text()
    else:
        # Without an ACL file a restart forgets every user made at run time: the grant has
        # ended (fail closed), and so has the tombstone, so a late grant would be made again.
        assert users == ["default"]
        late = eng.execute_batch([Work(request("grant", "early-1"), now)], plain=True)[0]
        assert late.status == "granted"


def test_without_an_acl_file_auto_refuses_grants_and_still_revokes(tmp_path: Path) -> None:
    """`auto` on a server that cannot save its users would make grants whose tombstones a restart
    forgets, so a revoked grant redelivered after a restart would be made again: grants are
    refused until the catalog says `acl_save: never`. A revoke is never held back by it."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed here")
    server = Private(tmp_path, aclfile=False)
    server.start()
    try:
        now = datetime.now(UTC)
        made = engine(server.port, "never").execute_batch(
            [Work(request("grant", "made-1"), now)], plain=True
        )[0]
        assert made.status == "granted"
        eng = engine(server.port)
        refused = eng.execute_batch([Work(request("grant", "auto-1"), now)], plain=True)[0]
        assert refused.status == "refused" and refused.field == "acl_save"
        users = server.client().execute_command("ACL", "USERS")
        assert users == sorted(["default", made.principal])
        revoked = eng.execute(request("revoke", "made-1"))
        assert revoked.status == "revoked" and revoked.verified is True
        assert eng.execute(request("revoke", "early-2")).status == "revoked"
    finally:
        server.stop()


def test_a_revoke_whose_acl_save_failed_saves_on_its_retry(tmp_path: Path) -> None:
    """A revoke changes the users in memory, then ACL SAVE fails (the file cannot be written):
    the revoke fails and is retried. The retry finds nothing left to change, and must still
    save, or the ACL file keeps the user and a restart brings it back with its password."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed here")
    server = Private(tmp_path, aclfile=True)
    server.start()
    acl = server.dir / "users.acl"
    aside = server.dir / "users.acl.kept"
    try:
        eng = engine(server.port)
        now = datetime.now(UTC)
        granted = eng.execute_batch([Work(request("grant", "save-1"), now)], plain=True)[0]
        assert granted.status == "granted" and f"user {granted.principal} " in acl.read_text()
        # The file's name taken by a directory: the save's rename over it fails.
        acl.rename(aside)
        acl.mkdir()
        failed = eng.execute(request("revoke", "save-1"))
        assert failed.status == "failed" and "ACL SAVE" in str(failed.message), failed
        acl.rmdir()
        aside.rename(acl)
        assert f"user {granted.principal} " in acl.read_text()  # the file still has it
        retried = eng.execute(request("revoke", "save-1"))
        assert retried.status == "revoked", retried
        assert f"user {granted.principal} " not in acl.read_text()
        server.stop()
        server.start()
        assert granted.principal not in server.client().execute_command("ACL", "USERS")
    finally:
        if acl.is_dir():
            acl.rmdir()
        if aside.exists():
            aside.rename(acl)
        server.stop()


def test_a_revoke_works_on_a_server_whose_channels_default_to_all(tmp_path: Path) -> None:
    """On a server with `acl-pubsub-default allchannels` (Redis 6's default, kept by upgraded
    servers) `reset` gives every channel, and Redis refuses a channel pattern after it: the
    tombstone resets the channels first, so the revoke ends the grant, verifies, and its
    tombstone refuses the grant's redelivery."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed here")
    server = Private(tmp_path, False, "--acl-pubsub-default", "allchannels")
    server.start()
    try:
        eng = engine(server.port, "never")
        now = datetime.now(UTC)
        granted = eng.execute_batch([Work(request("grant", "all-1"), now)], plain=True)[0]
        assert granted.status == "granted" and granted.credentials is not None
        creds = granted.credentials
        grantee = redis.Redis(
            port=server.port, username=creds["username"], password=creds["password"]
        )
        assert grantee.ping()
        grantee.close()
        revoked = eng.execute(request("revoke", "all-1"))
        assert revoked.status == "revoked" and revoked.verified, revoked
        again = eng.execute_batch([Work(request("grant", "all-1"), now)], plain=True)[0]
        assert again.status == "refused" and again.field == "request_id", again
        grantee = redis.Redis(
            port=server.port, username=creds["username"], password=creds["password"]
        )
        with pytest.raises(redis.AuthenticationError):
            grantee.ping()
        grantee.close()
    finally:
        server.stop()
