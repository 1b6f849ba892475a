"""The service account a Google client acts as, found once for the process's clients."""

from __future__ import annotations

import os
from typing import Any

CLOUD_PLATFORM = ("https://www.googleapis.com/auth/cloud-platform",)


def service_account(**scopes: Any) -> Any:
    """Credentials as `google.auth.default(**scopes)` finds them (`scopes` or
    `default_scopes`). On Cloud Run (`K_SERVICE` set) without a key file they can only be the
    metadata server's, which `google.auth.default` finds only after probing for them (a ping
    of the metadata server, a project-id request, the import of the user-credentials modules:
    ~10 ms of CPU and two round trips in every cold start): built directly, the same account
    and scopes."""
    get = os.environ.get
    if get("K_SERVICE") and not get("GOOGLE_APPLICATION_CREDENTIALS"):
        from google.auth import compute_engine

        return compute_engine.Credentials(**scopes)  # type: ignore[no-untyped-call]
    import google.auth

    found, _ = google.auth.default(**scopes)
    return found
