"""Lambda entry point `jitc.aws.intake.handler`: a Function URL (or API Gateway HTTP API)
request in, 202 with the request id out once the signed request is on the queue; 4xx naming the
problem and nothing enqueued otherwise."""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.logging import correlation_paths

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


def _path(raw_path: str, stage: str) -> str:
    """The route within the API: an HTTP API stage other than `$default` prefixes its name."""
    return raw_path if stage == "$default" else raw_path[len("/" + stage) :]


def _refusal(status: int, field: str, message: str) -> dict[str, Any]:
    metrics.add_metric(name="RequestsRejected", unit=MetricUnit.Count, value=1)
    return _reply(status, {"error": "refused", "field": field, "message": message})


@logger.inject_lambda_context(correlation_id_path=correlation_paths.LAMBDA_FUNCTION_URL)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # The payload (format 2.0) is read here rather than through Powertools' event classes, whose
    # package imports every event type it knows (~20 ms of CPU in each cold start).
    request_context = event["requestContext"]
    method = request_context["http"]["method"].upper()
    if method != "POST":
        return _refusal(405, "method", f"{method} is not allowed; POST a signed request")
    path = _path(event["rawPath"], request_context.get("stage", "$default"))
    if path not in PATHS:
        return _refusal(404, "path", f"{path} is not a route; POST to /v1/requests")
    text = event.get("body") or ""
    try:
        body = (
            base64.b64decode(text, validate=True) if event.get("isBase64Encoded") else text.encode()
        )
    except (binascii.Error, ValueError):
        return _refusal(400, "body", "not valid base64")
    headers = {name.lower(): value for name, value in (event.get("headers") or {}).items()}
    response = runtime.intake().handle(headers, body)
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
