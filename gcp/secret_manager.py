"""`gcp-sm:projects/P/secrets/S/versions/V[#field]`: secrets read from Secret Manager at the
moment of use.

Nothing is cached here: the engine keeps a value for one batch and drops it. Errors carry the
reference and Google's status name, never the value or Google's message (which may quote the
request).
"""

from __future__ import annotations

import re
from typing import Any

from jitc.errors import SecretError
from jitc.secrets import Secret, SecretRef, pick_field

SCHEME = "gcp-sm"
# A version resource name as Secret Manager's API documents it; `latest` is an alias.
VERSION_NAME = re.compile(
    r"^projects/[a-z0-9-]{1,63}/secrets/[A-Za-z0-9_-]{1,255}/versions/([0-9]+|latest)$"
)


class SecretManagerStore:
    def __init__(self, client: Any) -> None:
        self._client = client

    def resolve(self, ref: SecretRef) -> Secret:
        from google.api_core import exceptions

        if ref.scheme != SCHEME:
            raise SecretError(f"secret {ref}: not a Secret Manager reference")
        if not VERSION_NAME.fullmatch(ref.location):
            raise SecretError(
                f"secret {ref}: expected projects/PROJECT/secrets/SECRET/versions/VERSION"
            )
        try:
            response = self._client.access_secret_version(name=ref.location)
        except exceptions.GoogleAPICallError as exc:
            status = getattr(exc.grpc_status_code, "name", None) or str(exc.code or "error")
            raise SecretError(f"secret {ref}: Secret Manager answered {status}") from None
        except exceptions.GoogleAPIError as exc:
            reason = type(exc).__name__
            raise SecretError(f"secret {ref}: Secret Manager unreachable ({reason})") from None
        except OSError as exc:
            raise SecretError(
                f"secret {ref}: Secret Manager unreachable ({type(exc).__name__})"
            ) from None
        try:
            raw = bytes(response.payload.data).decode("utf-8")
        except UnicodeDecodeError:
            raise SecretError(f"secret {ref}: has no text value") from None
        return pick_field(ref, raw)
