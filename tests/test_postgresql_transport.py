"""A catalog edit cannot send a secret to a host in a form it can read.

The admin connection verifies TLS and requires SCRAM off loopback unless the catalog relaxes it
explicitly per integration; the connector's own keys are never an integration's credential;
`catalog_warnings` names every relaxed setting. The server side is a listener that speaks just
enough of the PostgreSQL protocol to ask for the password in the clear and record what comes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from jitc.catalog import catalog_warnings, parse_catalog
from jitc.engine import Engine
from jitc.errors import CatalogError
from jitc.local import MemorySink, NullScheduler
from jitc.messages import parse_request
from jitc.secrets import EnvSecretStore, SecretStores

CANARY = "CANARY-admin-password-51d2"
# 127.0.0.2 is this machine, but not an address the connector treats as loopback: the defaults
# for a remote host apply, as they would to `db.attacker.example`.
HOST = "127.0.0.2"


def _catalog(connection: dict[str, Any], connector: dict[str, Any] | None = None) -> Any:
    return parse_catalog(
        {
            "control_plane": {"keys": {"cp": base64.b64encode(bytes(32)).decode()}},
            "connector": connector or {"label_key": "mem:label"},
            "integrations": {
                "db": {
                    "kind": "postgresql",
                    "connection": {"dbname": "app", "user": "jitc_admin", **connection},
                    "credentials": "mem:admin",
                    "permissions": {"ro": {"template": "read-only", "resources": ["public"]}},
                }
            },
        }
    )


def test_remote_defaults_verify_tls_and_require_scram_with_channel_binding() -> None:
    connection = _catalog({"host": "db.example.com"}).integrations["db"].connection
    assert connection.effective_sslmode == "verify-full"
    assert connection.effective_require_auth == "scram-sha-256"
    assert connection.effective_channel_binding == "require"


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer", "require"])
def test_a_weaker_sslmode_off_loopback_needs_an_explicit_relaxation(mode: str) -> None:
    with pytest.raises(CatalogError) as err:
        _catalog({"host": "db.example.com", "sslmode": mode})
    assert "allow_insecure_transport" in str(err.value) and "'db'" in str(err.value)
    relaxed = _catalog(
        {"host": "db.example.com", "sslmode": mode, "allow_insecure_transport": True}
    )
    assert any(f"sslmode {mode}" in w for w in catalog_warnings(relaxed))


@pytest.mark.parametrize("key", ["signing_key", "label_key"])
def test_the_connectors_own_keys_are_never_an_integration_credential(key: str) -> None:
    with pytest.raises(CatalogError) as err:
        _catalog({"host": "db.example.com"}, {key: "mem:admin#other-field"})
    assert "connector's own keys" in str(err.value)


def test_catalog_warnings_name_each_relaxed_setting() -> None:
    catalog = _catalog(
        {
            "host": "db.example.com",
            "sslmode": "require",
            "allow_insecure_transport": True,
            "require_auth": "none",
            "channel_binding": "disable",
            "statement_timeout": "5min",
        }
    )
    text = "\n".join(catalog_warnings(catalog))
    for needle in (
        "sslmode require",
        "require_auth none",
        "channel_binding",
        "per-role",
    ):
        assert needle in text, needle
    strict = _catalog({"host": "db.example.com"}, {"label_key": "mem:label"})
    # `mem:` is this test's own secret store, which the catalog cannot know of.
    assert [w for w in catalog_warnings(strict) if "secret scheme 'mem'" not in w] == []


class CleartextAsker:
    """Accepts PostgreSQL connections, refuses TLS, asks for a cleartext password, records."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen()
        self.port = int(self.sock.getsockname()[1])
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    self._talk(conn)

    def _read(self, conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise OSError("closed")
            data += chunk
        self.received += data
        return data

    def _talk(self, conn: socket.socket) -> None:
        while True:
            (length,) = struct.unpack("!I", self._read(conn, 4))
            body = self._read(conn, length - 4)
            code = struct.unpack("!I", body[:4])[0]
            if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: not here
                conn.sendall(b"N")
                continue
            break
        conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
        kind = self._read(conn, 1)
        (length,) = struct.unpack("!I", self._read(conn, 4))
        self._read(conn, length - 4)
        assert kind == b"p"

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def asker() -> Iterator[CleartextAsker]:
    server = CleartextAsker()
    yield server
    server.close()


def _grant(connection: dict[str, Any]) -> Any:
    catalog = _catalog(connection)
    store = SecretStores({"mem": EnvSecretStore({"admin": CANARY, "label": "t" * 32})})
    engine = Engine(catalog, store, NullScheduler(), MemorySink())
    request = {
        "request_id": "t-1",
        "action": "grant",
        "integration": "db",
        "permission": "ro",
        "resources": ["public"],
        "identity": {"email": "a@example.com"},
        "duration": "5m",
    }
    return engine.execute(parse_request(json.dumps(request)), plain=True)


def test_a_host_asking_for_the_password_in_the_clear_never_gets_it(
    asker: CleartextAsker,
) -> None:
    base = {"host": HOST, "port": asker.port, "connect_timeout": 2}
    assert _grant(base).status == "failed"  # verify-full: no TLS, no connection
    relaxed = {**base, "sslmode": "disable", "allow_insecure_transport": True}
    assert _grant(relaxed).status == "failed"  # require_auth: no cleartext password
    assert CANARY.encode() not in asker.received
    # The listener does get a password from a client that allows it: the test can see a leak.
    assert _grant({**relaxed, "require_auth": "none"}).status == "failed"
    assert CANARY.encode() in asker.received


@pytest.mark.parametrize("field", ["host", "login_host"])
def test_a_host_list_with_one_local_entry_is_refused(asker: CleartextAsker, field: str) -> None:
    # libpq tries each host of a comma list in turn: the socket directory does not exist, so
    # the password would go to the listener if the list passed as loopback.
    hosts = f"/nonexistent-jitc-socket-dir,{HOST}"
    connection = {"port": asker.port, "connect_timeout": 2, field: hosts}
    with pytest.raises(CatalogError) as err:
        _catalog(connection)
    assert "single host" in str(err.value)
    if field == "host":
        # The test can see a leak: an equivalent relaxed single host does hand it over.
        assert (
            _grant(
                {
                    **connection,
                    "host": HOST,
                    "sslmode": "disable",
                    "allow_insecure_transport": True,
                    "require_auth": "none",
                }
            ).status
            == "failed"
        )
        assert CANARY.encode() in asker.received
