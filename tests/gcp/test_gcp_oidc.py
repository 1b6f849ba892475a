"""The worker's own OIDC check, against certificates served by the loopback GCP."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from gcpfake import FakeGcp, _rsa_key, sign_jwt

from jitc.errors import Refused
from jitc.gcp.oidc import CertificateCache, OidcVerifier

AUDIENCE = "https://europe-west1-p.cloudfunctions.net/jitc-worker"
INVOKER = "jitc-invoker@p.iam.gserviceaccount.com"


def test_a_valid_token_passes_and_made_up_key_ids_cannot_flood_googles_endpoint(
    fake: FakeGcp,
) -> None:
    certs = CertificateCache(f"{fake.url}/oauth2/v1/certs")
    verifier = OidcVerifier(AUDIENCE, INVOKER, certs)
    caller = verifier.verify("Bearer " + fake.oidc_token(AUDIENCE, INVOKER))
    assert caller.email == INVOKER
    claims = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "email": INVOKER,
              "email_verified": True, "iat": 0, "exp": 2**31}  # fmt: skip
    for index in range(20):
        token = sign_jwt(_rsa_key(), f"made-up-{index}", claims)
        with pytest.raises(Refused):
            verifier.verify(f"Bearer {token}")
    assert certs.fetches == 1


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_the_certificates_are_never_fetched_through_a_redirect(fake: FakeGcp, status: int) -> None:
    # A redirect followed could lead off https, to whoever then chooses the keys every token
    # is checked with. The endpoint redirects to a document of keys that would verify a forged
    # token; the fetch fails instead and the token is refused.
    served = []

    class Redirecting(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.append(self.path)
            self.send_response(status)
            self.send_header("Location", f"{fake.url}/oauth2/v1/certs")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        certs = CertificateCache(f"http://127.0.0.1:{server.server_address[1]}/certs")
        verifier = OidcVerifier(AUDIENCE, INVOKER, certs)
        with pytest.raises(Exception):  # noqa: B017 - urllib's HTTPError, or the verifier's refusal
            verifier.verify("Bearer " + fake.oidc_token(AUDIENCE, INVOKER))
        assert served == ["/certs"] and certs.fetches == 0
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("header", ["", "Basic abc", "Bearer ", "Bearer not.a.jwt", "Bearer x"])
def test_malformed_authorization_is_refused(fake: FakeGcp, header: str) -> None:
    verifier = OidcVerifier(AUDIENCE, INVOKER, CertificateCache(f"{fake.url}/oauth2/v1/certs"))
    with pytest.raises(Refused) as caught:
        verifier.verify(header or None)
    assert caught.value.field == "authorization"


def test_an_hs256_token_keyed_with_the_public_certificate_is_refused(fake: FakeGcp) -> None:
    import base64
    import hashlib
    import hmac
    import json

    def part(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")

    head = part({"alg": "HS256", "kid": fake.oidc_kid})
    body = part({"iss": "https://accounts.google.com", "aud": AUDIENCE, "email": INVOKER,
                 "email_verified": True, "iat": 0, "exp": 2**31})  # fmt: skip
    mac = hmac.new(fake.oidc_cert.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    token = f"{head}.{body}." + base64.urlsafe_b64encode(mac).decode().rstrip("=")
    verifier = OidcVerifier(AUDIENCE, INVOKER, CertificateCache(f"{fake.url}/oauth2/v1/certs"))
    with pytest.raises(Refused):
        verifier.verify(f"Bearer {token}")


def _as_cloud_run_forwards(token: str) -> str:
    """What the function receives when Cloud Run checked the token for IAM: the signature is
    replaced (https://cloud.google.com/run/docs/troubleshooting#signature-removed)."""
    return token.rsplit(".", 1)[0] + ".SIGNATURE_REMOVED_BY_GOOGLE"


def test_behind_cloud_runs_iam_check_a_token_without_its_signature_is_the_norm(
    fake: FakeGcp,
) -> None:
    # Cloud Tasks and Cloud Scheduler put their token in Authorization; with IAM-authenticated
    # invocation (the module's worker and sweep) Cloud Run always strips its signature.
    certs = CertificateCache(f"{fake.url}/oauth2/v1/certs")
    verifier = OidcVerifier(AUDIENCE, INVOKER, certs, behind_iam=True)
    stripped = _as_cloud_run_forwards(fake.oidc_token(AUDIENCE, INVOKER))
    assert verifier.verify(f"Bearer {stripped}").email == INVOKER
    # Its claims are still checked: another account, another audience, expired, unverified.
    now = int(time.time())
    for token in (
        fake.oidc_token(AUDIENCE, "someone@p.iam.gserviceaccount.com"),
        fake.oidc_token("https://elsewhere.example/", INVOKER),
        fake.oidc_token(AUDIENCE, INVOKER, iat=now - 7200, exp=now - 3600),
        fake.oidc_token(AUDIENCE, INVOKER, email_verified=False),
        fake.oidc_token(AUDIENCE, INVOKER, iss="https://evil.example"),
    ):
        with pytest.raises(Refused):
            verifier.verify(f"Bearer {_as_cloud_run_forwards(token)}")


def test_a_token_without_its_signature_is_refused_where_cloud_run_did_not_check_it(
    fake: FakeGcp,
) -> None:
    verifier = OidcVerifier(AUDIENCE, INVOKER, CertificateCache(f"{fake.url}/oauth2/v1/certs"))
    stripped = _as_cloud_run_forwards(fake.oidc_token(AUDIENCE, INVOKER))
    with pytest.raises(Refused) as caught:
        verifier.verify(f"Bearer {stripped}")
    assert caught.value.field == "authorization"
