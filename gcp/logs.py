"""Structured JSON logs that Cloud Logging parses from a function's stdout: `severity`,
`message`, `logging.googleapis.com/trace` (from the request's trace header) and
`logging.googleapis.com/labels` with the request and grant ids.

Events never carry secrets: the engine scrubs error texts, and outcomes are logged without
their sealed credentials.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from typing import Any

TRACE_KEY = "logging.googleapis.com/trace"
LABELS_KEY = "logging.googleapis.com/labels"
_trace: contextvars.ContextVar[str | None] = contextvars.ContextVar("jitc_trace", default=None)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def bind_trace(header: str | None, project: str | None) -> None:
    """`X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=1` (or `traceparent`) -> the log's trace."""
    trace_id = (header or "").split("/", 1)[0].strip()
    hexdigits = "0123456789abcdefABCDEF"
    valid = trace_id and len(trace_id) <= 64 and all(c in hexdigits for c in trace_id)
    _trace.set(f"projects/{project}/traces/{trace_id}" if valid and project else None)


def trace_from_traceparent(header: str | None) -> str | None:
    parts = (header or "").split("-")
    return parts[1] if len(parts) == 4 else None


class CloudLoggingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "severity": record.levelname if record.levelname != "WARN" else "WARNING",
            "message": record.getMessage(),
            "logger": record.name,
        }
        labels: dict[str, str] = {}
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            if key in ("request_id", "grant_id") and value:
                labels[key] = str(value)
            doc[key] = value
        if labels:
            doc[LABELS_KEY] = labels
        trace = _trace.get()
        if trace:
            doc[TRACE_KEY] = trace
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: an exception's text may quote a request or a server's answer.
            doc["error"] = record.exc_info[0].__name__
        return json.dumps(doc, default=str, separators=(",", ":"))


def setup(level: str | None = None) -> logging.Logger:
    """One JSON handler on the root logger, so the core's loggers come out alike."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, CloudLoggingFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(CloudLoggingFormatter())
        root.handlers = [handler]
    root.setLevel(level or os.environ.get("JITC_LOG_LEVEL", "INFO"))
    return logging.getLogger("jitc.gcp")


logger = setup()


