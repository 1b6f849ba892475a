"""The worker's own OIDC check, against certificates served by the loopback GCP."""

from __future__ import annotations

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
