"""The OIDC token Cloud Tasks and Cloud Scheduler attach to their requests, checked by the
worker and the sweep themselves: signature (Google's certificates), audience (this function's
URL), issuer, and the email of the one service account that may invoke it.

Cloud Run checks the token too when invocation is IAM-authenticated; this check still holds
when a company deploys the functions public, and it ties the caller to one service account
rather than to anyone with `run.invoker`.

A token Cloud Run has checked for IAM reaches the function with its signature replaced by
`SIGNATURE_REMOVED_BY_GOOGLE` (against replays: https://cloud.google.com/run/docs/
troubleshooting#signature-removed), so Cloud Tasks' and Cloud Scheduler's tokens never arrive
verifiable here. Such a token is accepted only where the deployment says the function sits
behind Cloud Run's IAM check (`behind_iam`: never public), and then only for its claims:
audience, issuer, expiry, and the invoker's email. Anywhere else it is refused.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, NamedTuple

from jitc.endpoints import https_or_loopback
from jitc.errors import Refused
from jitc.webhook import UNREDIRECTED

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
CERTS_TTL_SECONDS = 3600.0
REFETCH_SECONDS = 60.0
CLOCK_SKEW_SECONDS = 10
REMOVED_SIGNATURE = "SIGNATURE_REMOVED_BY_GOOGLE"


class Caller(NamedTuple):  # not a frozen dataclass: see jitc.gcp.handlers.HttpRequest
    email: str
    subject: str


class CertificateCache:
    """Google's token-signing certificates (public), fetched at most once an hour, and again at
    once for a key id not yet seen (Google rotates them)."""

    def __init__(self, url: str = GOOGLE_CERTS_URL, timeout: float = 10.0) -> None:
        if not https_or_loopback(url):
            raise ValueError("the certificates URL must be https (plain http only to loopback)")
        self.url = url
        self.timeout = timeout
        self._certs: dict[str, str] = {}
        self._fetched = float("-inf")
        self._lock = threading.Lock()
        self.fetches = 0

    def _fetch(self) -> None:
        # Google's endpoint never redirects. A redirect followed could lead off https (urllib
        # follows https to plain http), and whoever answered there would choose the keys every
        # token is checked with: a 3xx is an error, and the certificates stay as they were.
        with UNREDIRECTED.open(self.url, timeout=self.timeout) as response:
            certs = json.loads(response.read())
        if not isinstance(certs, dict) or not all(isinstance(v, str) for v in certs.values()):
            raise ValueError("certificates document is not a map of key id to PEM")
        self._certs, self._fetched = certs, time.monotonic()
        self.fetches += 1

    def get(self, key_id: str | None) -> dict[str, str]:
        with self._lock:
            age = time.monotonic() - self._fetched
            unknown = key_id is not None and key_id not in self._certs
            # An unknown key id fetches again, but at most once a minute: tokens with made-up
            # key ids must not turn every request into a request to Google.
            if age > CERTS_TTL_SECONDS or (unknown and age > REFETCH_SECONDS):
                self._fetch()
            return dict(self._certs)


def _checked_by_cloud_run(token: str, audience: str) -> dict[str, Any]:
    """The claims of a token whose signature Cloud Run checked and removed: everything but the
    signature is checked again here."""
    import base64

    parts = token.split(".")
    if len(parts) != 3 or parts[2] != REMOVED_SIGNATURE:
        raise ValueError("not a token Cloud Run checked")
    header, payload = (
        json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))) for part in parts[:2]
    )
    if not isinstance(header, dict) or header.get("alg") != "RS256":
        raise ValueError("not RS256")
    if not isinstance(payload, dict) or payload.get("aud") != audience:
        raise ValueError("wrong audience")
    now = time.time()
    issued, expires = payload.get("iat"), payload.get("exp")
    if not isinstance(issued, int | float) or not isinstance(expires, int | float):
        raise ValueError("no iat or exp")
    if issued > now + CLOCK_SKEW_SECONDS or expires < now - CLOCK_SKEW_SECONDS:
        raise ValueError("expired or not yet valid")
    return payload


class OidcVerifier:
    def __init__(
        self, audience: str, email: str, certs: CertificateCache, behind_iam: bool = False
    ) -> None:
        self.audience = audience
        self.email = email.lower()
        self._certs = certs
        # True only where Cloud Run's IAM check is in front (the function is never public):
        # the one place a token without its signature can be genuine.
        self.behind_iam = behind_iam

    def verify(self, authorization: str | None) -> Caller:
        """The caller of a request with this Authorization header; Refused if it is not the
        expected service account with a valid token for this audience."""
        from google.auth import exceptions, jwt

        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Refused("authorization", "a Bearer OIDC token is required")
        if token.endswith("." + REMOVED_SIGNATURE):
            if not self.behind_iam:
                raise Refused(
                    "authorization",
                    "a token without its signature is accepted only behind Cloud Run's IAM check",
                )
            try:
                checked = _checked_by_cloud_run(token, self.audience)
            except (ValueError, TypeError):
                raise Refused("authorization", "the OIDC token is not valid") from None
            return self._caller(checked)
        try:
            header = jwt.decode_header(token)  # type: ignore[no-untyped-call]
            if header.get("alg") != "RS256":
                raise Refused("authorization", "the token must be signed with RS256")
            certs = self._certs.get(header.get("kid"))
            claims: dict[str, Any] = jwt.decode(  # type: ignore[no-untyped-call]
                token,
                certs=certs,
                audience=self.audience,
                clock_skew_in_seconds=CLOCK_SKEW_SECONDS,
            )
        except Refused:
            raise
        except (exceptions.GoogleAuthError, ValueError, KeyError, OSError):
            raise Refused("authorization", "the OIDC token is not valid") from None
        return self._caller(claims)

    def _caller(self, claims: dict[str, Any]) -> Caller:
        if claims.get("iss") not in ISSUERS:
            raise Refused("authorization", "the token was not issued by Google")
        email = str(claims.get("email", "")).lower()
        if email != self.email or claims.get("email_verified") is not True:
            raise Refused("authorization", "the token is not of the invoker service account")
        return Caller(email=email, subject=str(claims.get("sub", "")))
