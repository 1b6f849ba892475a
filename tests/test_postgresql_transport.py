"""A catalog edit cannot send a secret to a host in a form it can read.

The admin connection verifies TLS and requires SCRAM off loopback unless the catalog relaxes it
explicitly per integration; the connector's own keys are never an integration's credential;
`catalog_warnings` names every relaxed setting. The server side is a listener that speaks just
enough of the PostgreSQL protocol to ask for the password in the clear and record what comes.
"""

from __future__ import annotations

import abc
import base64
import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import socket
import ssl
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pgtest import PG_DSN
from pgtest import connection as pgtest_connection
from psycopg import sql

from jitc.catalog import catalog_warnings, parse_catalog
from jitc.engine import Engine
from jitc.errors import CatalogError, TargetError
from jitc.local import MemorySink, NullScheduler
from jitc.messages import parse_request
from jitc.secrets import EnvSecretStore, Secret, SecretStores

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
    strict = _catalog(
        {"host": "db.example.com", "sslrootcert": "system"}, {"label_key": "mem:label"}
    )
    # `mem:` is this test's own secret store, which the catalog cannot know of.
    assert [w for w in catalog_warnings(strict) if "secret scheme 'mem'" not in w] == []


class _Listener(abc.ABC):
    """A PostgreSQL server's socket on 127.0.0.2: accepts connections and hands each to
    `_talk`; `received` holds every byte read."""

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

    @abc.abstractmethod
    def _talk(self, conn: socket.socket) -> None:
        """One client's conversation."""

    def close(self) -> None:
        self.sock.close()


class CleartextAsker(_Listener):
    """Accepts PostgreSQL connections, refuses TLS, asks for a cleartext password, records."""

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


# --- sslrootcert_pem: the CA inline in the catalog -------------------------------------------


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A test CA, a server certificate it signs for 127.0.0.2, and another, unrelated CA."""
    ca_key, ca = _ca("jitc test CA")
    _, other = _ca("jitc other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("pki")
    (folder / "server.pem").write_text(_pem(server))
    (folder / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return {
        "ca": _pem(ca),
        "other": _pem(other),
        "cert": str(folder / "server.pem"),
        "key": str(folder / "server.key"),
    }


class TlsListener(_Listener):
    """Accepts PostgreSQL connections, answers the SSLRequest with 'S', completes a TLS
    handshake as 127.0.0.2 and records each startup message that arrives over it."""

    def __init__(self, cert: str, key: str) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.ssl_requests = 0
        self.handshake_errors: list[str] = []
        self.startups: list[bytes] = []
        super().__init__()

    def _talk(self, conn: socket.socket) -> None:
        while True:
            (length,) = struct.unpack("!I", self._read(conn, 4))
            body = self._read(conn, length - 4)
            code = struct.unpack("!I", body[:4])[0]
            if code == 80877104:  # GSSENCRequest: not here
                conn.sendall(b"N")
                continue
            if code != 80877103:
                self.startups.append(b"cleartext:" + body)  # never expected
                return
            self.ssl_requests += 1
            conn.sendall(b"S")
            break
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except ssl.SSLError as exc:
            self.handshake_errors.append(str(exc))
            return
        with tls:
            (length,) = struct.unpack("!I", self._read(tls, 4))
            self.startups.append(self._read(tls, length - 4))
            message = b"SFATAL\x00C28000\x00Mjitc test listener\x00\x00"
            tls.sendall(b"E" + struct.pack("!I", len(message) + 4) + message)


@pytest.fixture
def tls_listener(pki: dict[str, Any]) -> Iterator[TlsListener]:
    server = TlsListener(pki["cert"], pki["key"])
    yield server
    server.close()


def _through(listener: TlsListener) -> dict[str, Any]:
    """Connection settings that reach `listener` and check its name."""
    return {"host": HOST, "port": listener.port, "connect_timeout": 2, "sslmode": "verify-full"}


def _admin_connect(connection: dict[str, Any]) -> None:
    from jitc.templates.postgresql_session import admin_connect

    settings = _catalog(connection).integrations["db"].connection
    admin_connect(settings, settings.dbname, Secret(CANARY)).close()


def test_an_inline_ca_verifies_the_servers_certificate(
    pki: dict[str, Any], tls_listener: TlsListener
) -> None:
    connection = {
        **_through(tls_listener),
        # A bundle, as a rotation or a regional bundle has it: libpq reads every certificate.
        "sslrootcert_pem": f"# another\n{pki['other']}\n# this server's\n{pki['ca']}",
    }
    with pytest.raises(TargetError):  # the listener ends every session after the startup
        _admin_connect(connection)
    assert tls_listener.handshake_errors == []
    assert len(tls_listener.startups) == 1  # over TLS, verified against the inline CA
    assert b"user\x00jitc_admin\x00" in tls_listener.startups[0]
    assert b"application_name=jit-connector" in tls_listener.startups[0]


def test_another_cas_certificate_ends_the_connection_before_the_startup(
    pki: dict[str, Any], tls_listener: TlsListener
) -> None:
    connection = {
        **_through(tls_listener),
        "sslrootcert_pem": pki["other"],
    }
    with pytest.raises(TargetError):
        _admin_connect(connection)
    assert _grant(connection).status == "failed"  # the same, through a grant
    assert tls_listener.ssl_requests >= 2  # libpq did ask for TLS and got a handshake
    # which it broke off at the server's certificate
    assert tls_listener.handshake_errors and all(
        "unknown ca" in e.lower() for e in tls_listener.handshake_errors
    ), tls_listener.handshake_errors
    assert tls_listener.startups == []  # no user name, let alone a password, ever arrived


def test_the_inline_ca_is_checked_when_the_catalog_loads(pki: dict[str, Any]) -> None:
    base = {"host": "db.example.com"}
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    garbled = pki["ca"].replace(pki["ca"].splitlines()[3], "A" * 64)
    refused = {
        "not a certificate": ("just some text", "no PEM certificate"),
        "garbled": (garbled, "certificate 1 is not an X.509 certificate"),
        "a key along": (pki["ca"] + key.decode(), "certificates only, not PRIVATE KEY"),
        "no end": (pki["ca"].split("-----END")[0], "without its -----END"),
        "too large": (pki["ca"] * 30, "larger than 16 KiB"),
        "not ascii": (pki["ca"] + "\u00e9", "ASCII"),
    }
    for case, (text, needle) in refused.items():
        with pytest.raises(CatalogError) as err:
            _catalog({**base, "sslrootcert_pem": text})
        message = str(err.value)
        assert "connection.sslrootcert_pem" in message and needle in message, (case, message)
    with pytest.raises(CatalogError) as err:
        _catalog({**base, "sslrootcert": "system", "sslrootcert_pem": pki["ca"]})
    assert "sslrootcert_pem and sslrootcert are exclusive" in str(err.value)
    # Two CAs (a regional bundle, a CA rotation), blank lines and comments between: accepted.
    bundle = f"# current\n{pki['ca']}\n# next\n{pki['other']}"
    assert _catalog({**base, "sslrootcert_pem": bundle}).integrations["db"].connection


def test_an_inline_ca_counts_as_verification_like_a_ca_file(pki: dict[str, Any]) -> None:
    for ca in ({"sslrootcert": "/etc/db-ca.pem"}, {"sslrootcert_pem": pki["ca"]}):
        strict = _catalog({"host": "db.example.com", **ca})
        assert [w for w in catalog_warnings(strict) if "secret scheme 'mem'" not in w] == []
        with pytest.raises(CatalogError) as err:
            _catalog({"host": "db.example.com", "sslmode": "require", **ca})
        assert "allow_insecure_transport" in str(err.value)


def test_the_ca_file_is_private_and_a_planted_link_is_never_followed(
    pki: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jitc.templates import postgresql_session as session

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(session, "_CA_DIRECTORY", [])
    folder = Path(session.ca_directory())
    assert folder.parent == tmp_path
    # Someone who can write there plants a link at the name the CA's file will have.
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    digest = hashlib.sha256(pki["ca"].encode()).hexdigest()
    (folder / f"{digest}.pem").symlink_to(victim)
    path = Path(session.ca_file(pki["ca"]))
    assert path == folder / f"{digest}.pem"
    assert victim.read_text() == "untouched"
    assert not path.is_symlink() and path.read_text() == pki["ca"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert session.ca_file(pki["ca"]) == str(path)  # once per process
    other = session.ca_file(pki["other"])
    assert other != str(path) and Path(other).read_text() == pki["other"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([path.name, Path(other).name])


@pytest.mark.parametrize("planted", ["link", "open"])
def test_a_ca_directory_anyone_else_made_is_never_used_and_blocks_nothing(
    pki: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: str
) -> None:
    """Any local user can make the predictable name first (a sticky temp dir keeps its owner
    from removing it): the connector neither trusts what is there nor stops connecting."""
    from jitc.templates import postgresql_session as session

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(session, "_CA_DIRECTORY", [])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    predictable = tmp_path / f"jitc-ca-{os.geteuid()}"
    if planted == "link":
        predictable.symlink_to(elsewhere)
    else:
        predictable.mkdir()
        predictable.chmod(0o755)
    path = Path(session.ca_file(pki["ca"]))
    assert path.parent.parent == tmp_path and path.parent != predictable
    assert stat.S_IMODE(path.parent.lstat().st_mode) == 0o700 and path.read_text() == pki["ca"]
    assert list(elsewhere.iterdir()) == [] and not any(predictable.iterdir())


# --- what OpenSSL reads is what the check read ------------------------------------------------


def _hidden_by_a_long_line(pem: str) -> str:
    """`pem` on one line that starts as a comment: OpenSSL reads PEM in pieces of 254
    characters, so a BEGIN line can start mid-line, where no reviewer and no line-based check
    looks (the rest of the line is past the edge of a diff)."""
    data = "".join(pem.splitlines()[1:-1])
    line = "# this server's CA"
    line += " " * (254 - len(line)) + "-----BEGIN CERTIFICATE-----" + " " * (254 - 27) + data
    return line + " " * (-len(line) % 254) + "-----END CERTIFICATE-----\n"


def _hidden_by_a_control_character(pem: str) -> str:
    """OpenSSL strips every byte up to ' ' at the end of a BEGIN line; a line-based check that
    takes only blanks there counts no certificate."""
    return pem.replace("CERTIFICATE-----\n", "CERTIFICATE-----\x01\n", 1)


@pytest.mark.parametrize("hide", [_hidden_by_a_long_line, _hidden_by_a_control_character])
def test_a_certificate_the_check_did_not_see_is_never_trusted(
    pki: dict[str, Any], tls_listener: TlsListener, hide: Any
) -> None:
    connection = {
        **_through(tls_listener),
        # One CA to the check (another one); the listener's CA rides along unseen.
        "sslrootcert_pem": pki["other"] + hide(pki["ca"]),
    }
    with pytest.raises(CatalogError, match="sslrootcert_pem"):
        _catalog(connection)


def test_libpq_reads_only_the_certificates_the_check_read(
    pki: dict[str, Any], tls_listener: TlsListener
) -> None:
    """Comments and all are dropped: the file libpq reads is the checked certificates written
    out again, so no reading of the text other than the check's can add one."""
    connection = _catalog({"host": HOST, "sslrootcert_pem": f"# ours\n{pki['other']}"})
    assert connection.integrations["db"].connection.sslrootcert_pem == pki["other"]


def test_a_long_run_of_blank_lines_is_refused_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(CatalogError, match="sslrootcert_pem"):
        _catalog({"host": HOST, "sslrootcert_pem": "-----BEGIN CERTIFICATE-----\n" + "\n" * 16000})
    assert time.monotonic() - started < 1.0


def test_a_cached_ca_path_is_not_used_once_someone_else_remade_its_directory(
    pki: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tmp cleaner (systemd-tmpfiles' aging) removes the private directory of a long-lived
    `jitc serve`; another user makes one at the same, predictable name with a file at the CA's
    name (its sha256, from a public CA). libpq is never led there."""
    from jitc.templates import postgresql_session as session

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(session, "_CA_DIRECTORY", [])
    path = Path(session.ca_file(pki["other"]))
    folder = path.parent
    path.unlink()
    folder.rmdir()
    folder.mkdir(mode=0o755)  # someone else's now (here: open to others)
    path.write_text(pki["ca"])
    with pytest.raises(OSError, match="alone"):
        session.ca_file(pki["other"])


def test_a_changed_ca_file_is_written_again(
    pki: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jitc.templates import postgresql_session as session

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(session, "_CA_DIRECTORY", [])
    path = Path(session.ca_file(pki["other"]))
    path.write_text(pki["ca"])  # what a process of this user's could do
    assert session.ca_file(pki["other"]) == str(path) and path.read_text() == pki["other"]


def test_system_means_the_hosts_trust_store_and_needs_verify_full(
    pki: dict[str, Any], tls_listener: TlsListener, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psycopg's binary wheel links an OpenSSL whose own store is a folder of its build that no
    host has, so libpq's `system` trusted nothing on the serverless hosts: `system` is the
    store the interpreter's OpenSSL finds (here made to hold the test CA), and, as any public
    CA signs for anyone's name, only with the name checked."""
    store = tmp_path / "store.pem"
    store.write_text(pki["ca"])
    found = ssl.get_default_verify_paths()
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: found._replace(cafile=str(store)))
    connection = {
        "host": HOST, "port": tls_listener.port, "connect_timeout": 2, "sslrootcert": "system",
    }  # fmt: skip
    with pytest.raises(TargetError):  # the listener ends every session after the startup
        _admin_connect(connection)
    assert tls_listener.handshake_errors == []
    assert len(tls_listener.startups) == 1  # over TLS, verified against the host's store
    with pytest.raises(CatalogError, match="verify-full"):
        _catalog({**connection, "sslmode": "verify-ca"})


def test_a_ca_that_checks_no_name_or_is_not_used_is_named(pki: dict[str, Any]) -> None:
    """verify-ca with public roots pinned lets any server certified by them stand in; a CA
    given with an sslmode that verifies nothing is ignored by libpq."""
    remote = {"host": "db.example.com", "sslrootcert_pem": pki["ca"]}
    clean = catalog_warnings(_catalog({**remote, "sslmode": "verify-full"}))
    assert not [w for w in clean if "sslmode" in w], clean
    named = catalog_warnings(_catalog({**remote, "sslmode": "verify-ca"}))
    assert any("verify-ca: the server's name is not checked" in w for w in named), named
    loopback = catalog_warnings(_catalog({"host": "127.0.0.1", "sslrootcert_pem": pki["ca"]}))
    assert any("the CA given is not used" in w for w in loopback), loopback
    # Verification with no CA named fails at the first connection: said at the catalog check.
    for mode in ("verify-full", "verify-ca"):
        bare = catalog_warnings(_catalog({"host": "db.example.com", "sslmode": mode}))
        assert any(f"sslmode {mode} names no CA" in w for w in bare), bare
    system = {"host": "db.example.com", "sslrootcert": "system"}
    assert not [w for w in catalog_warnings(_catalog(system)) if "names no CA" in w]


def _local(**change: Any) -> dict[str, Any]:
    """The suite's own server, as the rest of the suite reaches it."""
    return {**pgtest_connection("jitc_tr_"), "connect_timeout": 2, **change}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"port": 1}, "connection refused: nothing listens at the host and port"),
        ({"dbname": "jitc_no_such_database"}, "the database does not exist"),
        ({"user": "jitc_no_such_role"}, "the role does not exist"),
        # Anyone who may create a database names it: its name is not the server's words (the
        # bundle check connects to every database listed). Read as a refused password, this
        # one made the engine read the secret again and run the grant again.
        (
            {"dbname": 'jitc" password authentication failed for user "x'},
            "the database does not exist",
        ),
        ({"dbname": "jitc Connection refused timeout expired"}, "the database does not exist"),
    ],
)
def test_a_failed_connection_says_why_and_never_echoes_the_servers_words(
    change: dict[str, Any], reason: str
) -> None:
    connection = _local(**change)
    with pytest.raises(TargetError) as failed:
        _admin_connect(connection)
    assert type(failed.value) is TargetError  # not AuthenticationFailed
    assert str(failed.value).endswith(f": {reason}")
    assert CANARY not in str(failed.value)
    outcome = _grant(connection)
    assert outcome.status == "failed" and reason in (outcome.message or "")
    # The server's own words stay out of the outcome.
    assert "FATAL" not in (outcome.message or "") and "TCP/IP" not in (outcome.message or "")


def test_a_certificate_of_another_ca_is_named_as_such(
    pki: dict[str, Any], tls_listener: TlsListener
) -> None:
    with pytest.raises(TargetError, match=r"not signed by a trusted CA$"):
        _admin_connect({**_through(tls_listener), "sslrootcert_pem": pki["other"]})


def test_verification_without_a_ca_names_the_settings_that_give_one(
    tls_listener: TlsListener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libpq looks for ~/.postgresql/root.crt, which a function's home never holds.
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(TargetError) as failed:
        _admin_connect(_through(tls_listener))
    assert str(failed.value).endswith(": no CA to check the server's certificate against")
    assert tls_listener.startups == []


def test_a_database_closed_to_connections_is_named_as_such() -> None:
    """Anyone who may create a database can close it (ALLOW_CONNECTIONS false) after giving a
    grant's role a privilege there: the revoke that cannot clean it says why, in our words."""
    name = 'jitc_closed" password authentication failed for user "x'
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {} ALLOW_CONNECTIONS false").format(
            sql.Identifier(name)))  # fmt: skip
        try:
            with pytest.raises(TargetError) as failed:
                _admin_connect(_local(dbname=name))
        finally:
            admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
    assert type(failed.value) is TargetError
    assert str(failed.value).endswith(
        ": the database accepts no connections (ALLOW_CONNECTIONS false)"
    )
