"""Lambda entry point `jitc.aws.intake.handler`: a Function URL (or API Gateway HTTP API)
request in, 202 with the request id out once the signed request is on the queue; 4xx naming the
problem and nothing enqueued otherwise."""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.data_classes import LambdaFunctionUrlEvent, event_source

from jitc.aws import runtime
from jitc.aws.observability import MetricUnit, logger, metrics, tracer

if TYPE_CHECKING:
    # Types only: importing Powertools' typing module costs ~30 ms of every cold start.
    from aws_lambda_powertools.utilities.typing import LambdaContext

PATHS = frozenset({"/", "/v1/requests"})


def _reply(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", "Cache-Control": "no-store"},
        "body": json.dumps(body),
    }


def _refusal(status: int, field: str, message: str) -> dict[str, Any]:
    metrics.add_metric(name="RequestsRejected", unit=MetricUnit.Count, value=1)
    return _reply(status, {"error": "refused", "field": field, "message": message})


@logger.inject_lambda_context(correlation_id_path=correlation_paths.LAMBDA_FUNCTION_URL)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=LambdaFunctionUrlEvent)
def handler(event: LambdaFunctionUrlEvent, context: LambdaContext) -> dict[str, Any]:
    method = event.request_context.http.method.upper()
    if method != "POST":
        return _refusal(405, "method", f"{method} is not allowed; POST a signed request")
    if event.path not in PATHS:
        return _refusal(404, "path", f"{event.path} is not a route; POST to /v1/requests")
    text = event.body or ""
    try:
        body = base64.b64decode(text, validate=True) if event.is_base64_encoded else text.encode()
    except (binascii.Error, ValueError):
        return _refusal(400, "body", "not valid base64")
    response = runtime.intake().handle(dict(event.headers), body)
    if response.status == 202:
        metrics.add_metric(name="RequestsAccepted", unit=MetricUnit.Count, value=1)
        ids = {key: response.body[key] for key in ("request_id", "grant_id")}
        logger.info("request accepted", extra=ids)
    else:
        metrics.add_metric(name="RequestsRejected", unit=MetricUnit.Count, value=1)
        logger.info(
            "request rejected",
            extra={"status": response.status, "field": response.body.get("field")},
        )
    return _reply(response.status, response.body)
