"""Logging for the function app, through Python's standard logging.

The Functions Python worker forwards every record of the root logger to the host, which writes
it to Application Insights as a trace. Each record's message is one JSON object (so a query can
parse it even without custom dimensions), and the ids go in `extra["custom_dimensions"]`, the
key that Azure Monitor's logging exporters turn into customDimensions.
"""

from __future__ import annotations

import json
import logging
from typing import Any

logger = logging.getLogger("jitc.azure")


def log(level: int, event: str, **fields: Any) -> None:
    dimensions = {
        key: value
        for key, value in fields.items()
        if key in ("request_id", "grant_id", "message_id", "integration") and value is not None
    }
    text = json.dumps({"event": event, **fields}, default=str, sort_keys=True)
    logger.log(level, text, extra={"custom_dimensions": dimensions})


def info(event: str, **fields: Any) -> None:
    log(logging.INFO, event, **fields)


def warning(event: str, **fields: Any) -> None:
    log(logging.WARNING, event, **fields)


def error(event: str, **fields: Any) -> None:
    log(logging.ERROR, event, **fields)
