"""One Powertools Logger, Metrics and Tracer per function, shared by the handlers and adapters.

Names come from the environment Terraform sets (POWERTOOLS_SERVICE_NAME,
POWERTOOLS_METRICS_NAMESPACE); the defaults keep local runs and tests meaningful.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = "jit-connector"
NAMESPACE = "JitConnector"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
# Only botocore is patched: the AWS calls are what a trace should show, and patching every
# module Powertools knows (requests, httplib, sqlite3, ...) costs ~15 MB and ~150 ms per cold start.
tracer = Tracer(service=SERVICE, patch_modules=["botocore"])

__all__ = ["NAMESPACE", "SERVICE", "MetricUnit", "logger", "metrics", "tracer"]
