"""The instance's one TLS context: Google's clients and the OIDC certificate fetch share it,
and it still checks every server's certificate and name."""

from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import requests
import requests.utils
import urllib3.connection
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jitc.gcp import runtime
from jitc.gcp.oidc import CertificateCache

KEY_ID = "k1"


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
    ca: bool, names: list[x509.GeneralName],
) -> x509.Certificate:  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


class Server:
    """An HTTPS server on loopback whose certificate `names` (signed by `ca_key`) it shows."""

    def __init__(self, folder: Path, ca_key: ec.EllipticCurvePrivateKey,
                 names: list[x509.GeneralName]) -> None:  # fmt: skip
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate("server", key, "test ca", ca_key, ca=False, names=names)
        chain = folder / f"server-{id(self)}.pem"
        chain.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            + cert.public_bytes(serialization.Encoding.PEM)
        )
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(handler) -> None:
                self.requests += 1
                body = json.dumps({KEY_ID: "pem"}).encode()
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(body)))
                handler.send_header("Connection", "close")  # each request a new connection
                handler.end_headers()
                handler.wfile.write(body)

            def log_message(handler, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(chain)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ec.EllipticCurvePrivateKey]:
    """A test CA, the only root of the shared context (in place of certifi's bundle); urllib3
    and urllib may build no context of their own."""
    key = ec.generate_private_key(ec.SECP256R1())
    bundle = tmp_path / "roots.pem"
    cert = _certificate("test ca", key, "test ca", key, ca=True, names=[])
    bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    monkeypatch.setattr(requests.utils, "DEFAULT_CA_BUNDLE_PATH", str(bundle))
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("a TLS context built per connection")

    monkeypatch.setattr(urllib3.connection, "create_urllib3_context", refused)
    monkeypatch.setattr(ssl, "_create_default_https_context", refused)
    runtime.tls_context.cache_clear()
    yield key
    runtime.tls_context.cache_clear()


LOOPBACK: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]


def _session() -> requests.Session:
    session = requests.Session()
    runtime._share_tls(session)
    return session


def test_every_connection_and_the_certificates_use_one_context(
    ca: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    server = Server(tmp_path, ca, LOOPBACK)
    try:
        one, two = _session(), _session()
        for session in (one, two, one):
            assert session.get(server.url, timeout=5).json() == {KEY_ID: "pem"}
        certs = CertificateCache(server.url, context=runtime.tls_context())
        assert certs.get(KEY_ID) == {KEY_ID: "pem"}
        assert server.requests == 4
        assert runtime.tls_context.cache_info().misses == 1
    finally:
        server.close()


@pytest.mark.parametrize("case", ["other name", "other issuer"])
def test_the_shared_context_still_checks_certificate_and_name(
    ca: ec.EllipticCurvePrivateKey, tmp_path: Path, case: str
) -> None:
    if case == "other name":
        server = Server(tmp_path, ca, [x509.DNSName("elsewhere.example.com")])
    else:
        server = Server(tmp_path, ec.generate_private_key(ec.SECP256R1()), LOOPBACK)
    try:
        with pytest.raises(requests.exceptions.SSLError):
            _session().get(server.url, timeout=5)
        with pytest.raises(OSError):  # urllib's URLError wrapping the certificate error
            CertificateCache(server.url, context=runtime.tls_context()).get(KEY_ID)
        assert server.requests == 0
    finally:
        server.close()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_other_tls_settings_go_requests_own_way_and_leave_the_shared_context_alone(
    ca: ec.EllipticCurvePrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = Server(tmp_path, ca, LOOPBACK)
    other = Server(tmp_path, ec.generate_private_key(ec.SECP256R1()), LOOPBACK)
    try:
        session = _session()
        shared = runtime.tls_context()
        # requests' own way builds its context per connection again.
        monkeypatch.undo()
        with pytest.raises(requests.exceptions.SSLError):
            session.get(server.url, timeout=5, verify=certifi_bundle())
        assert session.get(server.url, timeout=5, verify=False).status_code == 200
        # The shared context was never given another root: it still refuses the other CA.
        with pytest.raises(OSError):
            CertificateCache(other.url, context=shared).get(KEY_ID)
        assert other.requests == 0
    finally:
        server.close()
        other.close()


def certifi_bundle() -> str:
    import certifi

    return str(certifi.where())


def test_the_google_clients_sessions_share_it_over_https_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from google.auth.credentials import AnonymousCredentials

    for name, value in {
        "JITC_PROJECT": "p-one", "JITC_QUEUE": "projects/p-one/locations/l/queues/q",
        "JITC_WORKER_URL": "https://worker.example.com", "JITC_INVOKER_EMAIL": "i@p-one.iam.gserviceaccount.com",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    runtime.reset()
    monkeypatch.setattr(runtime, "credentials", functools.cache(AnonymousCredentials))
    try:
        monkeypatch.delenv("JITC_SECRETS_ENDPOINT", raising=False)
        monkeypatch.setenv("JITC_TASKS_ENDPOINT", "http://127.0.0.1:9")
        secrets, tasks = runtime.secrets_client(), runtime.tasks_client()
        adapter = secrets.transport._session.get_adapter("https://secretmanager.googleapis.com/")
        assert adapter.poolmanager.connection_pool_kw["ssl_context"] is runtime.tls_context()
        # A plain-http loopback endpoint: nothing to share, no context built for it.
        plain = tasks.transport._session.get_adapter("https://x/")
        assert "ssl_context" not in plain.poolmanager.connection_pool_kw
        assert runtime.certificates().context is runtime.tls_context()
    finally:
        runtime.reset()
