"""The RabbitMQ template in the contract suite.

JITC_TEST_RABBITMQ_API (default http://127.0.0.1:15672) with guest/guest, and AMQP on
JITC_TEST_RABBITMQ_PORT (default 5672). The suite runs as an administrator user it makes, with a
password that is the canary, on a virtual host of its own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Any
from urllib.parse import quote

import httpx
import pika
import pika.exceptions
from contract_targets import BOX_PUBLIC, RUN

from jitc.models import Outcome

API = os.environ.get("JITC_TEST_RABBITMQ_API", "http://127.0.0.1:15672")
AMQP_PORT = int(os.environ.get("JITC_TEST_RABBITMQ_PORT", "5672"))
PREFIX = f"c{RUN}-"
ADMIN = f"a{RUN}admin"
ADMIN_PASSWORD = f"CANARY-{secrets.token_hex(8)}"
VHOST = f"c{RUN}"
QUEUE = f"c{RUN}-q"
LEDGER = f"c{RUN}-ledger"


class RabbitMQTarget:
    kind = "rabbitmq"
    integration = f"rabbitmq-{RUN}"
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
        self.root = httpx.Client(base_url=API, auth=("guest", "guest"), timeout=10)
        self.foreign: set[str] = set()

    def reach(self) -> None:
        try:
            self.root.get("/api/overview").raise_for_status()
        except httpx.HTTPError as exc:
            raise RuntimeError(
                f"RabbitMQ's management API is not reachable at {API} ({exc}); enable "
                "rabbitmq_management or set JITC_TEST_RABBITMQ_API"
            ) from None
        self.root.put(f"/api/vhosts/{VHOST}").raise_for_status()
        self.root.put(
            f"/api/users/{ADMIN}", json={"password": ADMIN_PASSWORD, "tags": "administrator"}
        ).raise_for_status()
        self.root.put(
            f"/api/permissions/{VHOST}/guest",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        ).raise_for_status()
        conn = self._amqp("guest", "guest")
        conn.channel().queue_declare(queue=QUEUE)
        conn.close()

    def _amqp(self, user: str, password: str) -> pika.BlockingConnection:
        return pika.BlockingConnection(
            pika.ConnectionParameters(
                "127.0.0.1",
                AMQP_PORT,
                VHOST,
                pika.PlainCredentials(user, password),
                connection_attempts=1,
                socket_timeout=5,
            )
        )

    def _ours(self) -> list[str]:
        return [
            u["name"] for u in self.root.get("/api/users").json() if u["name"].startswith(PREFIX)
        ]

    def reset(self) -> None:
        self.foreign.clear()
        for name in self._ours():
            self.root.delete(f"/api/users/{quote(name, safe='')}")

    def cleanup(self) -> None:
        self.reset()
        self.root.delete(f"/api/users/{ADMIN}")
        self.root.delete(f"/api/vhosts/{VHOST}")
        self.root.delete(f"/api/vhosts/{LEDGER}")
        self.root.close()

    def permissions(self) -> dict[str, dict[str, Any]]:
        return {
            "allowed": {"template": "read-only", "resources": [VHOST]},
            "custom": {
                "configure": "^$",
                "write": "^$",
                "read": f"^{QUEUE}$",
                "resources": [VHOST],
            },
        }

    def admin_secret(self) -> str:
        return ADMIN_PASSWORD

    def renamed(self) -> dict[str, Any]:
        return {"user_prefix": f"{PREFIX}z-"}

    def connection(self, **overrides: Any) -> dict[str, Any]:
        api = API
        if "port" in overrides:  # the suite's way to point at a port where nothing listens
            api = str(httpx.URL(API).copy_with(port=int(overrides.pop("port"))))
        return {
            "api_url": api,
            "user": ADMIN,
            "user_prefix": PREFIX,
            "ledger_vhost": LEDGER,
            "amqp_port": AMQP_PORT,
            "terminate_wait_seconds": 3,
            **overrides,
        }

    def resource(self) -> str:
        return VHOST

    def hostile_resources(self) -> list[str]:
        return ["../api/users", "/", "%2F", "a b", "x\ny", ""]

    def login(self, credentials: dict[str, str]) -> Any:
        conn = self._amqp(credentials["username"], credentials["password"])
        return conn, conn.channel()

    def allowed(self, live: Any) -> None:
        live[1].queue_declare(queue=QUEUE, passive=True)

    def denied(self, live: Any) -> bool:
        conn, _ = live
        channel = conn.channel()
        try:
            channel.queue_declare(queue=f"{QUEUE}-new")
        except pika.exceptions.ChannelClosedByBroker as exc:
            return exc.reply_code == 403
        return False

    def alive(self, live: Any) -> bool:
        conn, _ = live
        try:
            for _ in range(10):
                conn.process_data_events(time_limit=0.05)
            conn.channel().close()
        except pika.exceptions.AMQPError:
            return False
        return conn.is_open

    def close(self, live: Any) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError):
            live[0].close()

    def principals(self) -> set[str]:
        return {n for n in self._ours() if not n.startswith(f"{PREFIX}x-")}

    def snapshot(self) -> Any:
        """The users this run did not make through the connector: `guest`, the admin and the
        foreign ones (which carry our prefix), with their permissions. Other runs' users come
        and go on a shared broker; they are not this test's business."""
        listed = self.root.get("/api/users").json()
        mine = {"guest", ADMIN} | {n for n in self._ours() if n.startswith(PREFIX)}
        ours = (set(self._ours()) - self.foreign) | {
            str(u["name"]) for u in listed if u["name"] not in mine
        }
        kept = {str(u["name"]) for u in listed} - ours
        users = [
            (
                u["name"],
                u["password_hash"],
                sorted(u["tags"] if isinstance(u["tags"], list) else [u["tags"]]),
            )
            for u in listed
            if u["name"] in kept
        ]
        # Only users of the listing above: another run's, made meanwhile, are not in it.
        perms = [p for p in self.root.get("/api/permissions").json() if p["user"] in kept]
        topic = [
            (p["user"], p["vhost"], p["exchange"])
            for p in self.root.get("/api/topic-permissions").json()
            if p["user"] in kept
        ]
        return sorted(users), sorted(perms, key=lambda p: (p["user"], p["vhost"])), sorted(topic)

    def make_foreign(self, name: str) -> None:
        self.root.put(
            f"/api/users/{quote(name, safe='')}", json={"password": "foreign-pw", "tags": ""}
        ).raise_for_status()
        self.foreign.add(name)

    def forge_label(self, name: str, grant_id: str, integration: str) -> None:
        """A label without the connector's key, where labels are (the ledger vhost's topic
        permissions) and where earlier versions wrote them (a tag)."""
        forged = f"jitc1:{integration}:{grant_id}:a:1577836800:allowed:abcdefgh:{'A' * 43}"
        self.root.put(
            f"/api/users/{quote(name, safe='')}", json={"password": "foreign-pw", "tags": forged}
        ).raise_for_status()
        self.root.put(f"/api/vhosts/{LEDGER}").raise_for_status()
        self.root.put(
            f"/api/topic-permissions/{LEDGER}/{quote(name, safe='')}",
            json={"exchange": forged, "write": "^$", "read": "^$"},
        ).raise_for_status()

    def planned_principal(self, statements: list[str]) -> str:
        return statements[0].split()[1].rsplit("/", 1)[1]
