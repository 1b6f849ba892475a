"""The three HTTP functions over the core, framework-neutral: each takes the method, path,
headers and body of a request and returns (status, JSON body). `main.py` adapts Flask to these.

- intake: the control plane's signed request in; 202 once it is a Cloud Task, 4xx naming the
  field and nothing queued otherwise.
- worker: one Cloud Task = one message, with the invoker's OIDC token. 2xx when done or
  refused (Cloud Tasks never retries it), 5xx when it failed (retried with the queue's backoff).
- scheduled jobs (the sweep): Cloud Scheduler with an OIDC token; 5xx when a part failed, so the
  job's failure shows in its logs and alerting.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from jitc.errors import Refused
from jitc.gcp import runtime
from jitc.gcp.logs import bind_trace, logger, trace_from_traceparent
from jitc.gcp.tasks import HOP
from jitc.messages import decode_message
from jitc.models import AuditEvent, Outcome

INTAKE_PATHS = frozenset({"/", "/v1/requests"})
GRANT_ID = re.compile(r"^g[a-z2-7]{24}$")
# Time the end of a job needs (events to send): nothing new starts with less left.
RESERVE_SECONDS = 30.0
MAX_TASK_BYTES = 100 * 1024  # Cloud Tasks' largest task

Reply = tuple[int, dict[str, Any]]
# One message at a time per instance: the sinks buffer one message's events (Terraform sets
# the functions' concurrency to 1; this keeps it true wherever they run).
_serial = threading.Lock()


# The records of this package are NamedTuples, not frozen dataclasses: a dataclass compiles
# its generated methods when its module is imported, ~3M instructions each in every cold start.
class HttpRequest(NamedTuple):
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


def _refusal(status: int, field: str, message: str) -> Reply:
    return status, {"error": "refused", "field": field, "message": message}


def _header(request: HttpRequest, name: str) -> str | None:
    lowered = name.lower()
    for key, value in request.headers.items():
        if key.lower() == lowered:
            return value
    return None


def _trace(request: HttpRequest) -> None:
    header = _header(request, "X-Cloud-Trace-Context")
    if header is None:
        header = trace_from_traceparent(_header(request, "traceparent"))
    bind_trace(header, runtime.settings().project)


def intake(request: HttpRequest) -> Reply:
    _trace(request)
    if request.method.upper() != "POST":
        return _refusal(405, "method", f"{request.method} is not allowed; POST a signed request")
    if request.path not in INTAKE_PATHS:
        return _refusal(404, "path", f"{request.path} is not a route; POST to /v1/requests")
    response = runtime.intake().handle(dict(request.headers), request.body)
    if response.status == 202:
        ids = {key: response.body[key] for key in ("request_id", "grant_id")}
        logger.info("request accepted", extra=ids)
    else:
        logger.info(
            "request rejected",
            extra={"status": response.status, "field": response.body.get("field")},
        )
    return response.status, response.body


def _authenticate(request: HttpRequest, audience: str) -> Reply | None:
    try:
        caller = runtime.verifier(audience).verify(_header(request, "Authorization"))
    except Refused as exc:
        logger.warning("caller refused", extra={"field": exc.field, "reason": exc.message})
        return _refusal(401, exc.field, exc.message)
    logger.debug("caller", extra={"caller": caller.email})
    return None


def _deadline() -> Callable[[], bool]:
    end = time.monotonic() + runtime.settings().timeout_seconds - RESERVE_SECONDS
    return lambda: time.monotonic() < end


def _hop(doc: dict[str, Any]) -> Reply:
    """A hop towards an expiry more than 30 days ahead: schedule the next step. It can only
    ever lead to a revoke, so like an expiry message it needs no control-plane signature."""
    try:
        grant_id, integration = str(doc["grant_id"]), str(doc["integration"])
        if not GRANT_ID.fullmatch(grant_id):
            raise ValueError("not a grant id")
        at = datetime.fromisoformat(str(doc["expires_at"]))
        runtime.catalog().integration(integration)
        if at.tzinfo is None:
            raise ValueError("naive time")
    except Refused as exc:
        return _refusal(200, exc.field, exc.message)
    except (KeyError, ValueError):
        return _refusal(200, "message", "malformed hop")
    runtime.scheduler().hop(grant_id, integration, at)
    logger.info("expiry hop scheduled", extra={"grant_id": grant_id})
    return 200, {"status": "rescheduled", "grant_id": grant_id}


def _work(text: str) -> Reply:
    engine = runtime.engine()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("kind") == HOP:
        return _hop(doc)
    try:
        work = decode_message(text, engine.catalog, time.time())
    except Refused as exc:
        engine.sink.audit(
            AuditEvent(type="refusal", status="refused", field=exc.field, message=exc.message)
        )
        runtime.sinks().flush()
        return _refusal(200, exc.field, exc.message)
    proceed = _deadline()
    outcomes = engine.execute_batch([work], proceed=proceed)
    runtime.sinks().flush()
    if not outcomes:
        return 503, {"status": "not started", "message": "out of time; delivered again"}
    outcome: Outcome = outcomes[0]
    body = {
        "status": outcome.status,
        "request_id": outcome.request_id,
        "grant_id": outcome.grant_id,
    }
    if outcome.status == "failed":
        # 5xx: Cloud Tasks delivers it again with the queue's backoff; a revoke is never dropped.
        logger.warning("failed; delivered again", extra={**body, "reason": outcome.message})
        return 500, body
    logger.info("done", extra=body)
    return 200, body


def worker(request: HttpRequest) -> Reply:
    _trace(request)
    if request.method.upper() != "POST":
        return _refusal(405, "method", "POST only")
    denied = _authenticate(request, runtime.settings().worker_url)
    if denied is not None:
        return denied
    if len(request.body) > MAX_TASK_BYTES:
        return _refusal(413, "body", f"larger than {MAX_TASK_BYTES} bytes")
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        return _refusal(200, "body", "not UTF-8")
    with _serial:
        runtime.sinks().discard()
        try:
            return _work(text)
        except Exception:
            runtime.sinks().discard()
            logger.exception(
                "worker failed",
                extra={"retry": _header(request, "X-CloudTasks-TaskRetryCount")},
            )
            return 500, {"status": "failed"}


def _sweep() -> tuple[bool, dict[str, Any]]:
    report = runtime.engine().sweep(proceed=_deadline())
    summary = {
        "revoked": report.revoked,
        "forgotten": report.forgotten,
        "failed": report.failed,
        "remaining": report.remaining,
        "unfinished": report.unfinished,
    }
    return not report.failed and not report.unfinished, summary


def _sync() -> tuple[bool, dict[str, Any]]:
    from jitc.gcp.sync import sync

    return sync(_deadline())


# Scheduled jobs by name: each is one Cloud Scheduler job calling its own function. A job
# returns (complete, summary); an incomplete one answers 500, which the job's alerting sees.
JOBS: dict[str, Callable[[], tuple[bool, dict[str, Any]]]] = {"sweep": _sweep, "sync": _sync}


def scheduled(name: str, request: HttpRequest, audience: str | None = None) -> Reply:
    _trace(request)
    if request.method.upper() != "POST":
        return _refusal(405, "method", "POST only")
    s = runtime.settings()
    # Each job's own function URL: a job whose audience is not configured refuses every call
    # (never falls back to another job's, whose tokens would then open it).
    target = s.sweep_url if audience is None else audience
    if not target:
        return 500, {"status": "failed", "message": f"no audience configured for {name}"}
    denied = _authenticate(request, target)
    if denied is not None:
        return denied
    with _serial:
        runtime.sinks().discard()
        try:
            complete, summary = JOBS[name]()
            runtime.sinks().flush()
        except Exception:
            runtime.sinks().discard()
            logger.exception(f"{name} failed")
            return 500, {"status": "failed"}
    # The heartbeat that the sweep-silence alert counts: present only for a complete run.
    log = logger.info if complete else logger.warning
    log(f"{name} done", extra={"job": name, "complete": complete, name: summary})
    return (200 if complete else 500), {"status": "done" if complete else "incomplete", **summary}
