"""One Powertools Logger, Metrics and Tracer per function, shared by the handlers and adapters.

Names come from the environment Terraform sets (POWERTOOLS_SERVICE_NAME,
POWERTOOLS_METRICS_NAMESPACE); the defaults keep local runs and tests meaningful.

The Tracer exists only when tracing is on (Terraform's `tracing`, which sets
POWERTOOLS_TRACE_DISABLED): importing the X-Ray SDK costs a cold start more than the rest of
the connector together, so with tracing off its decorators are plain pass-throughs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = "jit-connector"
NAMESPACE = "JitConnector"

F = TypeVar("F", bound=Callable[..., Any])


class Traces(Protocol):
    """What the handlers use of Powertools' Tracer."""

    def capture_lambda_handler(self, lambda_handler: F) -> F: ...

    def capture_method(self, *, capture_response: bool = ...) -> Callable[[F], F]: ...


class _Untraced:
    """The two Tracer decorators the handlers use, doing nothing."""

    def capture_lambda_handler(self, lambda_handler: F) -> F:
        return lambda_handler

    def capture_method(self, *, capture_response: bool = True) -> Callable[[F], F]:
        return lambda method: method


def tracing_on() -> bool:
    return os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").lower() not in ("1", "true")


def _tracer() -> Traces:
    if not tracing_on():
        return _Untraced()
    from aws_lambda_powertools import Tracer

    # Only botocore is patched: the AWS calls are what a trace should show, and patching every
    # module Powertools knows (requests, httplib, sqlite3, ...) costs ~15 MB and ~150 ms.
    return cast(Traces, Tracer(service=SERVICE, patch_modules=["botocore"]))


logger = Logger(service=SERVICE)

# botocore's and urllib3's debug logs quote every request's parameters (GetSecretValue's answer,
# PutSecretValue's SecretString): whatever level a function's logging is set to, theirs stays
# above DEBUG, in every function.
for _name in ("botocore", "boto3", "urllib3"):
    logging.getLogger(_name).setLevel(logging.INFO)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer = _tracer()

__all__ = ["NAMESPACE", "SERVICE", "MetricUnit", "logger", "metrics", "tracer", "tracing_on"]
