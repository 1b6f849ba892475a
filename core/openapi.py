"""The intake's OpenAPI document, built from the same models as the JSON Schemas in schemas/."""

from __future__ import annotations

from typing import Any

from jitc.intake import MAX_BODY_BYTES
from jitc.models import AccessRequest, Outcome
from jitc.signing import HEADER_KEY_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP

_REF = "#/components/schemas/{model}"


def _components() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in (AccessRequest, Outcome):
        doc = model.model_json_schema(ref_template=_REF)
        schemas.update(doc.pop("$defs", {}))
        schemas[model.__name__] = doc
    schemas["Accepted"] = {
        "type": "object",
        "required": ["status", "request_id", "grant_id"],
        "properties": {
            "status": {"const": "accepted"},
            "request_id": {"type": "string"},
            "grant_id": {"type": "string"},
        },
    }
    schemas["Refused"] = {
        "type": "object",
        "required": ["error", "field", "message"],
        "properties": {
            "error": {"enum": ["refused", "unavailable"]},
            "field": {"type": "string", "description": "the input the answer is about"},
            "message": {"type": "string"},
        },
    }
    return schemas


def _header(name: str, description: str, pattern: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": True,
        "description": description,
        "schema": {"type": "string", "pattern": pattern},
    }


def _refusal(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="Refused")}}},
    }


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "jit-connector intake",
            "version": "1",
            "description": (
                "Signed access requests from the control plane. Outcomes travel back as "
                "webhooks signed by the connector (schema Outcome)."
            ),
        },
        "paths": {
            "/v1/requests": {
                "post": {
                    "operationId": "submitRequest",
                    "summary": "Accept a signed grant or revoke; 202 once it is durably queued",
                    "parameters": [
                        _header(HEADER_KEY_ID, "id of the signing key in the catalog", r"^.+$"),
                        _header(HEADER_TIMESTAMP, "Unix seconds, ASCII digits", r"^[0-9]{1,12}$"),
                        _header(
                            HEADER_SIGNATURE,
                            'base64 Ed25519 signature of timestamp + "." + body',
                            r"^[A-Za-z0-9+/=]+$",
                        ),
                    ],
                    "requestBody": {
                        "required": True,
                        "description": f"at most {MAX_BODY_BYTES} bytes",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": _REF.format(model="AccessRequest")}
                            }
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "durably queued; the outcome follows as a webhook",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": _REF.format(model="Accepted")}
                                }
                            },
                        },
                        "400": _refusal("malformed body or invalid field"),
                        "401": _refusal("unsigned, bad signature or unknown key, stale or future"),
                        "403": _refusal("not allowed by the catalog"),
                        "409": _refusal("replayed request"),
                        "411": _refusal("no Content-Length"),
                        "413": _refusal(f"body over {MAX_BODY_BYTES} bytes"),
                        "503": _refusal("the request could not be queued; send it again"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "responses": {"200": {"description": "the intake is up"}},
                }
            },
        },
        "components": {"schemas": _components()},
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
