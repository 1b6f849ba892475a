"""The Redis template in the contract suite.

JITC_TEST_REDIS_HOST / _PORT   the server (default 127.0.0.1:6379), reached as its `default` user;
the suite runs as an admin ACL user it makes, with a password that is the canary.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Any

import redis
from contract_targets import BOX_PUBLIC, RUN
from redis.backoff import NoBackoff
from redis.retry import Retry

from jitc.models import Outcome

HOST = os.environ.get("JITC_TEST_REDIS_HOST", "127.0.0.1")
PORT = int(os.environ.get("JITC_TEST_REDIS_PORT", "6379"))
PREFIX = f"c{RUN}-"
ADMIN = f"a{RUN}-admin"
# What the README says the connector's admin needs, and nothing more.
ADMIN_RULES = (
    "resetkeys",
    "resetchannels",
    "-@all",
    "+acl",
    "+client|kill",
    "+client|setname",
    "+ping",
    "+info",
)
ADMIN_PASSWORD = f"CANARY-{secrets.token_hex(8)}"
KEYS = f"c{RUN}:data:*"


def acl(client: redis.Redis, *args: str) -> Any:
    command: Any = client.execute_command
    return command("ACL", *args)


class RedisTarget:
    kind = "redis"
    integration = f"redis-{RUN}"
    generates_secrets = True

    def identity(self, index: int = 0) -> dict[str, Any]:
        return {"email": "alice@example.com", "username": "alice", "public_key": BOX_PUBLIC}

    def holder(self, outcome: Outcome, credentials: dict[str, str] | None) -> Any:
        assert credentials is not None and credentials["username"] == outcome.principal
        return credentials

    def made(self, outcome: Outcome) -> str:
        return str(outcome.principal)

    def broken_connection(self) -> dict[str, Any]:
        return self.connection(port=1)

    def __init__(self) -> None:
        self.root = redis.Redis(host=HOST, port=PORT, decode_responses=True, socket_timeout=5)
        self.foreign: set[str] = set()

    def reach(self) -> None:
        try:
            self.root.ping()
        except redis.RedisError as exc:
            raise RuntimeError(
                f"Redis is not reachable at {HOST}:{PORT} ({exc}); set JITC_TEST_REDIS_HOST/_PORT"
            ) from None
        acl(self.root, "SETUSER", ADMIN, "on", f">{ADMIN_PASSWORD}", *ADMIN_RULES)
        self.root.set(f"c{RUN}:data:1", "v")

    def reset(self) -> None:
        self.foreign.clear()
        names = sorted(self.principals() | self._tombstones())
        if names:
            acl(self.root, "DELUSER", *names)

    def cleanup(self) -> None:
        self.reset()
        acl(self.root, "DELUSER", ADMIN)
        self.root.delete(f"c{RUN}:data:1")
        self.root.close()

    def permissions(self) -> dict[str, dict[str, Any]]:
        return {
            "allowed": {"template": "read-only", "resources": [KEYS]},
            "custom": {"commands": ["+get", "+ping"], "resources": [KEYS]},
        }

    def admin_secret(self) -> str:
        return ADMIN_PASSWORD

    def connection(self, **overrides: Any) -> dict[str, Any]:
        return {
            "host": HOST,
            "port": PORT,
            "user": ADMIN,
            "user_prefix": PREFIX,
            "tls": False,
            "acl_save": "never",  # the shared server has no ACL file
            **overrides,
        }

    def renamed(self) -> dict[str, Any]:
        return {"user_prefix": f"{PREFIX}z-"}

    def resource(self) -> str:
        return KEYS

    def hostile_resources(self) -> list[str]:
        return ["* +@all", "~*", "a b", "x\n+@admin", "%RW~*", "(~* +@all)"]

    def login(self, credentials: dict[str, str]) -> redis.Redis:
        client = redis.Redis(
            host=credentials["host"],
            port=int(credentials["port"]),
            username=credentials["username"],
            password=credentials["password"],
            decode_responses=True,
            single_connection_client=True,
            retry=Retry(NoBackoff(), 0),
        )
        client.ping()
        return client

    def allowed(self, live: redis.Redis) -> None:
        assert live.get(f"c{RUN}:data:1") == "v"

    def denied(self, live: redis.Redis) -> bool:
        try:
            live.set(f"c{RUN}:data:1", "w")
        except redis.exceptions.NoPermissionError:
            return True
        return False

    def alive(self, live: redis.Redis) -> bool:
        try:
            live.ping()
        except redis.RedisError:
            return False
        return True

    def close(self, live: redis.Redis) -> None:
        with contextlib.suppress(redis.RedisError):
            live.close()

    def principals(self) -> set[str]:
        return {
            n
            for n in acl(self.root, "USERS")
            if n.startswith(PREFIX) and not n.startswith(f"{PREFIX}x-")
        }

    def _tombstones(self) -> set[str]:
        return {n for n in acl(self.root, "USERS") if n.startswith(f"{PREFIX}x-")}

    def snapshot(self) -> Any:
        """The users this run did not make through the connector: `default`, the admin and the
        foreign ones (which carry our prefix). Other runs' users come and go on a shared
        server; they are not this test's business."""
        ours = (self.principals() | self._tombstones()) - self.foreign
        watched = {"default", ADMIN} | self.foreign
        return sorted(
            line
            for line in acl(self.root, "LIST")
            if line.split()[1] in watched
            or (line.split()[1].startswith(PREFIX) and line.split()[1] not in ours)
        )

    def make_foreign(self, name: str) -> None:
        acl(self.root, "SETUSER", name, "on", ">foreign-pw", "~*", "+@read")
        self.foreign.add(name)

    def forge_label(self, name: str, grant_id: str, integration: str) -> None:
        forged = f"jitc1:{integration}:{grant_id}:a:1577836800:allowed:abcdefgh:{'A' * 43}"
        acl(self.root, "SETUSER", name, f"&{forged}")

    def planned_principal(self, statements: list[str]) -> str:
        return statements[0].split()[2]
