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
tracer = Tracer(service=SERVICE)

__all__ = ["NAMESPACE", "SERVICE", "MetricUnit", "logger", "metrics", "tracer"]
