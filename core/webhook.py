"""Outcomes and audit events to the control plane as HTTPS webhooks signed by the connector.

The body is signed exactly like the control plane's requests (Ed25519 over `timestamp.body`),
so the receiver verifies with the connector's public key. Delivery is retried; a sink that
still fails raises, so the caller's queue redelivers rather than losing the event.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from jitc.endpoints import https_or_loopback
from jitc.errors import JitcError
from jitc.models import AuditEvent, Outcome
from jitc.secrets import Secret, SecretRef, SecretStore
from jitc.signing import sign


class WebhookError(JitcError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the last HTTP status, when the receiver answered at all


ANSWER_MAX = 65536  # bytes of a 2xx answer read: an acknowledgement is small
# One exchange (connect, send, the whole answer) may take this many `timeout`s in all: urlopen's
# timeout bounds each read on the socket, so a receiver dripping a byte at a time would
# otherwise hold the caller for days.
EXCHANGE_TIMEOUTS = 3


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: urllib would follow a 302 to a POST with a GET that has no body,
    to any URL (plain http to another host too), and take that answer's 200 as the event
    delivered (or, for a fetch of public keys, take keys from whoever answered there)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


UNREDIRECTED = urllib.request.build_opener(_NoRedirect)


def webhook_url_allowed(url: str) -> bool:
    return https_or_loopback(url)


class WebhookSink:
    def __init__(
        self,
        url: str,
        signing_key: Callable[[], Secret],
        key_id: str = "connector",
        attempts: int = 3,
        timeout: float = 10.0,
        backoff: float = 0.5,
    ) -> None:
        if not webhook_url_allowed(url):
            raise ValueError("webhook URL must be https (plain http only to loopback, for tests)")
        self.url = url
        self._key = signing_key
        self.key_id = key_id
        self.attempts = attempts
        self.timeout = timeout
        self.backoff = backoff

    @classmethod
    def from_catalog(cls, url: str, key_ref: str, secrets: SecretStore) -> WebhookSink:
        """The connector's key is read from its store at each delivery, never kept."""
        ref = SecretRef(key_ref)
        return cls(url, lambda: secrets.resolve(ref))

    def audit(self, event: AuditEvent) -> None:
        self._post({"type": "audit", "audit": event.model_dump(mode="json", exclude_none=True)})

    def outcome(self, outcome: Outcome) -> None:
        doc = outcome.model_dump(mode="json", exclude_none=True, exclude={"credentials"})
        self._post({"type": "outcome", "outcome": doc})

    def send(self, doc: dict[str, object]) -> bytes:
        """Post any signed event; the 2xx answer's body (its first 64 KiB) is returned: the
        inventory sync reads the control plane's acknowledgement from it."""
        return self._post(doc)

    def _post(self, doc: dict[str, object]) -> bytes:
        body = json.dumps(doc, separators=(",", ":")).encode()
        last = ""
        status: int | None = None
        for attempt in range(self.attempts):
            envelope = sign(body, self._key().reveal(), self.key_id)
            request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
                self.url,
                data=body,
                method="POST",
                headers={"Content-Type": "application/json", **envelope.headers()},
            )
            try:
                code, answer = self._exchange(request)
                if 200 <= code < 300:
                    return answer
                last, status = f"HTTP {code}", code
            except urllib.error.HTTPError as exc:
                last, status = f"HTTP {exc.code}", exc.code
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    break
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                last = type(exc).__name__
            time.sleep(self.backoff * (2**attempt))
        raise WebhookError(f"webhook {self.url} failed: {last}", status)

    def _exchange(self, request: urllib.request.Request) -> tuple[int, bytes]:
        """The answer's status and body (a 2xx's first ANSWER_MAX bytes), within
        EXCHANGE_TIMEOUTS timeouts in all. An exchange that overruns is left to its thread,
        which ends at the socket's next timeout or the receiver's last byte."""
        done: list[tuple[int, bytes] | BaseException] = []

        def run() -> None:
            try:
                with UNREDIRECTED.open(request, timeout=self.timeout) as response:
                    ok = 200 <= response.status < 300
                    done.append((response.status, bytes(response.read(ANSWER_MAX)) if ok else b""))
            except BaseException as exc:  # handed to the caller as it is
                done.append(exc)

        worker = threading.Thread(target=run, name="jitc-webhook", daemon=True)
        worker.start()
        worker.join(self.timeout * EXCHANGE_TIMEOUTS)
        if not done:
            raise TimeoutError("the receiver did not finish its answer in time")
        result = done[0]
        if isinstance(result, BaseException):
            raise result
        return result
