"""The service account a Google client acts as, found once for all of the process's clients."""

from __future__ import annotations

import os
import threading
from typing import Any

CLOUD_PLATFORM = ("https://www.googleapis.com/auth/cloud-platform",)
# The variables google.auth consults to find credentials: the same values, the same account.
_DECIDING = ("GOOGLE_", "GCE_", "CLOUDSDK_", "K_SERVICE")

_found: dict[tuple[frozenset[tuple[str, str]], tuple[object, ...]], Any] = {}
_lock = threading.Lock()


def _key_file(environ: os._Environ[str]) -> tuple[object, ...]:
    """Which file the credentials come from, as it is now: a key file replaced where it lies (a
    mounted secret's new version, a rotated key, another `gcloud auth application-default
    login`) is read again, not served from memory after its key was deleted."""
    path = environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not path:
        if environ.get("K_SERVICE"):
            return ()
        from google.auth import _cloud_sdk

        path = _cloud_sdk.get_application_default_credentials_path()  # type: ignore[no-untyped-call]
    try:
        state = os.stat(path)
    except OSError:
        return (path,)
    return (path, state.st_dev, state.st_ino, state.st_size, state.st_mtime_ns)


def service_account() -> Any:
    """Credentials as `google.auth.default(scopes=CLOUD_PLATFORM)` finds them, one object for
    every Google client of the process: each client left to find its own would fetch an access
    token of its own (on Cloud Run a round trip to the metadata server per client in every cold
    start) and refresh it on its own. With their scope set, no client makes a rescoped copy
    (googleapiclient and google-cloud-storage copy credentials that lack one), and the scope is
    the one every client here asks for by default.

    On Cloud Run (`K_SERVICE` set) without a key file they can only be the metadata server's,
    which `google.auth.default` finds only after probing for them (a ping of the metadata
    server, a project-id request, the import of the user-credentials modules: ~10 ms of CPU and
    two round trips in every cold start): built directly, the same account and scope."""
    environ = os.environ
    key = (
        frozenset((k, v) for k, v in environ.items() if k.startswith(_DECIDING)),
        _key_file(environ),
    )
    with _lock:
        if key not in _found:
            _found.clear()  # one set: the one the environment names now
            if environ.get("K_SERVICE") and not environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
                from google.auth import compute_engine

                found: Any = compute_engine.Credentials(scopes=CLOUD_PLATFORM)  # type: ignore[no-untyped-call]
            else:
                import google.auth

                found, _ = google.auth.default(scopes=CLOUD_PLATFORM)
            _found[key] = found
        return _found[key]


def forget() -> None:
    """Forget the credentials found (tests; a new instance starts without them anyway)."""
    with _lock:
        _found.clear()
