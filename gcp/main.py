"""Cloud Run functions (2nd gen) entry points: `intake`, `worker`, `sweep`, `sync`.

`jitc package gcp` copies this file to the source root, where Cloud Functions load `main.py`;
each function's `entry_point` names one of these. Everything else is in `jitc.gcp.handlers`.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import threading
from typing import Any

import flask
import functions_framework

# What is loaded by now (the interpreter, Flask, functions-framework) lives as long as the
# instance: frozen, the garbage collector no longer walks it at every full collection. Nothing
# is unreachable at this point, so nothing is kept that a collection would have freed.
gc.freeze()


class _ColdStart:
    """The rest of the cold start (the connector's imports, then the first request, which loads
    the Google clients it needs) runs with young collections only every 100,000 new objects,
    not 700: it makes about 85,000, nearly all to live as long as the instance, and the
    collections that walked them again and again (about a thousand unreachable objects to free,
    pydantic's and the clients') cost a worker 50-60M instructions, a quarter of what the
    connector adds to a cold start. A first request that makes far more (a long sweep) is still
    collected, every 100,000.

    It ends when the first request does, whatever its answer, and no other is being served (with
    more than one request per instance, another one's objects would be frozen with the rest):
    one collection frees what is unreachable, what survives is frozen, the usual thresholds
    return. A request that arrives meanwhile waits for that."""

    def __init__(self) -> None:
        self.thresholds = gc.get_threshold()
        self._lock = threading.Lock()
        self._serving = 0
        self.over = False
        gc.set_threshold(100_000, *self.thresholds[1:])

    def begin(self) -> None:
        with self._lock:
            self._serving += 1

    def end(self) -> None:
        with self._lock:
            self._serving -= 1
            if self.over or self._serving:
                return
            self.over = True
            gc.collect()
            gc.freeze()
            gc.set_threshold(*self.thresholds)


_cold_start = _ColdStart()

from jitc.errors import CatalogError, ConfigError  # noqa: E402
from jitc.gcp import handlers  # noqa: E402
from jitc.gcp.logs import logger  # noqa: E402

# Likewise the connector's modules and pydantic's, unswept: pydantic leaves about a hundred
# objects unreachable here (temporary classes, ~50 KB), kept for the instance's life. A
# collection first would walk every object of the connector and of pydantic once more, 10M
# instructions of every cold start, to free them.
gc.freeze()

_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store"}


# Nothing this connector accepts is larger (the intake's limit is 64 KiB, a task's 100 KB):
# a larger body is refused before it is read, and one without a Content-Length (chunked) is
# read no further than the limit.
MAX_BODY_BYTES = 128 * 1024
_TOO_LARGE = {"error": "refused", "field": "body", "message": "too large"}


def _body(request: flask.Request) -> bytes | None:
    """The body, or None when it is larger than MAX_BODY_BYTES."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return None
    parts: list[bytes] = []
    size = 0
    while size <= MAX_BODY_BYTES:
        part = request.stream.read(MAX_BODY_BYTES + 1 - size)
        if not part:
            return b"".join(parts)
        parts.append(part)
        size += len(part)
    return None


def _call(handler: Any, request: flask.Request, *args: Any) -> flask.Response:
    _cold_start.begin()
    try:
        return _answer(handler, request, *args)
    finally:
        _cold_start.end()


def _answer(handler: Any, request: flask.Request, *args: Any) -> flask.Response:
    data = _body(request)
    if data is None:
        return flask.Response(json.dumps(_TOO_LARGE), status=413, headers=_HEADERS)
    http = handlers.HttpRequest(
        method=request.method,
        path=request.path,
        headers=dict(request.headers),
        body=data,
    )
    try:
        status, body = handler(*args, http) if args else handler(http)
    except (CatalogError, ConfigError) as exc:
        # The deployment's own settings are wrong: their text names a setting, never a secret.
        logger.error("deployment error", extra={"reason": str(exc)})
        status, body = 500, {"error": "unavailable", "message": "misconfigured; see the logs"}
    except Exception:
        # Anything else (credentials, a library fault): JSON like every other answer, and 5xx
        # so that Cloud Tasks and Cloud Scheduler try again. The type only, never the text.
        logger.exception("unhandled error")
        status, body = 500, {"error": "unavailable", "message": "internal error; try again"}
    return flask.Response(json.dumps(body), status=status, headers=_HEADERS)


@functions_framework.http
def intake(request: flask.Request) -> flask.Response:
    return _call(handlers.intake, request)


@functions_framework.http
def worker(request: flask.Request) -> flask.Response:
    return _call(handlers.worker, request)


@functions_framework.http
def sweep(request: flask.Request) -> flask.Response:
    return _call(handlers.scheduled, request, "sweep")


@functions_framework.http
def sync(request: flask.Request) -> flask.Response:
    # The OIDC audience is this function's own URL, as for the sweep.
    audience = os.environ.get("JITC_SYNC_URL") or ""
    return _call(functools.partial(handlers.scheduled, audience=audience), request, "sync")
