"""The HTTP intake: a `func.HttpRequest` in, 202 with the request id once the signed request is
on the queue; 4xx JSON naming the problem and nothing enqueued otherwise.

The function key (or Entra ID authentication on the app) only decides who may call; the
control plane's Ed25519 signature, its time window and the replay guard (core `Intake`) decide
what is accepted, always.
"""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func

from jitc.azure import observability, runtime

ROUTE = "v1/requests"


def _reply(status: int, body: dict[str, Any]) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body),
        status_code=status,
        mimetype="application/json",
        headers={"Cache-Control": "no-store"},
    )


def handle(request: func.HttpRequest) -> func.HttpResponse:
    if request.method.upper() != "POST":
        return _reply(
            405,
            {"error": "refused", "field": "method", "message": "POST a signed request"},
        )
    response = runtime.intake().handle(dict(request.headers), request.get_body())
    if response.status == 202:
        observability.info(
            "request accepted",
            request_id=response.body["request_id"],
            grant_id=response.body["grant_id"],
        )
    else:
        observability.info(
            "request rejected", status=response.status, field=response.body.get("field")
        )
    return _reply(response.status, response.body)
