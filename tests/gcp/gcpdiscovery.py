"""Requests checked against Google's published discovery documents (the copies
google-api-python-client ships): the method must exist for the HTTP verb and path, path
parameters must match their patterns, query parameters must be known and of their type and
enum, and the body must match the request schema: no unknown field, types, enums, byte and
date-time formats, and every field the documentation calls "Required." present.

The fake GCP server runs every request it receives through `check` and refuses (400) one that
fails, so a request the real API would refuse fails the test that made it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import googleapiclient

DOCUMENTS = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"
APIS = {
    "cloudtasks": "cloudtasks.v2.json",
    "secretmanager": "secretmanager.v1.json",
    "cloudresourcemanager": "cloudresourcemanager.v3.json",
    "storage": "storage.v1.json",
    "pubsub": "pubsub.v1.json",
    "bigquery": "bigquery.v2.json",
}


@dataclass(frozen=True)
class Method:
    api: str
    id: str
    http_method: str
    matcher: re.Pattern[str]
    spec: dict[str, Any]
    doc: dict[str, Any]


class Violation(ValueError):
    pass


def _methods(resource: dict[str, Any]) -> list[dict[str, Any]]:
    found = list(resource.get("methods", {}).values())
    for child in resource.get("resources", {}).values():
        found += _methods(child)
    return found


def _path_regex(template: str) -> str:
    out = ""
    for part in re.split(r"(\{\+?[A-Za-z0-9_]+\})", template):
        if part.startswith("{+"):
            out += f"(?P<{part[2:-1]}>.+?)"
        elif part.startswith("{"):
            out += f"(?P<{part[1:-1]}>[^/]+)"
        else:
            out += re.escape(part)
    return out


@cache
def methods() -> list[Method]:
    found = []
    for api, name in APIS.items():
        doc = json.loads((DOCUMENTS / name).read_text())
        base = "/" + doc["servicePath"]
        for spec in _methods(doc):
            matcher = re.compile("^" + re.escape(base) + _path_regex(spec["path"]) + "$")
            found.append(Method(api, spec["id"], spec["httpMethod"], matcher, spec, doc))
    return found


def find(http_method: str, path: str) -> tuple[Method, dict[str, str]]:
    candidates = []
    for method in methods():
        match = method.matcher.match(path)
        if method.http_method == http_method and match:
            candidates.append((method, match.groupdict()))
    # The most specific template wins (a literal suffix beats a greedy {+name}).
    candidates.sort(key=lambda c: -len(c[0].spec["path"]))
    for method, params in candidates:
        if all(_param_ok(method.spec["parameters"].get(k, {}), v) for k, v in params.items()):
            return method, params
    raise Violation(f"no {http_method} {path} in the discovery documents")


def _param_ok(spec: dict[str, Any], value: str) -> bool:
    pattern = spec.get("pattern")
    return pattern is None or re.fullmatch(pattern, value) is not None


def _scalar(spec: dict[str, Any], value: Any, where: str, int_enums: bool) -> None:
    kind = spec.get("type")
    fmt = spec.get("format")
    enum = spec.get("enum")
    if kind == "string" and enum is not None and int_enums and isinstance(value, int):
        # `$alt=json;enum-encoding=int` (the GAPIC REST transports): enums as their numbers.
        if not 0 <= value < len(enum):
            raise Violation(f"{where}: {value} is not an index of {enum}")
        return
    if kind == "string":
        if not isinstance(value, str):
            raise Violation(f"{where}: expected a string")
        if fmt in ("int64", "uint64") and not re.fullmatch(r"-?\d+", value):
            raise Violation(f"{where}: expected an {fmt} as a string")
        if fmt == "byte":
            try:
                base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                raise Violation(f"{where}: not base64") from None
        if fmt == "google-datetime":
            if not re.fullmatch(
                r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)", value
            ):
                raise Violation(f"{where}: not an RFC 3339 time")
            datetime.fromisoformat(
                value.replace("Z", "+00:00")[:26] if "." in value else value.replace("Z", "+00:00")
            )
        if fmt == "google-duration" and not re.fullmatch(r"-?\d+(\.\d{1,9})?s", value):
            raise Violation(f"{where}: not a duration")
        if enum is not None and value not in enum:
            raise Violation(f"{where}: {value!r} is not one of {enum}")
    elif kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            raise Violation(f"{where}: expected an integer")
    elif kind == "number":
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise Violation(f"{where}: expected a number")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise Violation(f"{where}: expected a boolean")
    elif kind == "any":
        return
    else:
        raise Violation(f"{where}: unknown type {kind}")


def check_value(
    doc: dict[str, Any],
    spec: dict[str, Any],
    value: Any,
    where: str,
    in_path: frozenset[str] = frozenset(),
    int_enums: bool = False,
) -> None:
    if "$ref" in spec:
        spec = doc["schemas"][spec["$ref"]]
    kind = spec.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise Violation(f"{where}: expected an object")
        properties = spec.get("properties", {})
        extra = spec.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                check_value(doc, properties[key], item, f"{where}.{key}", int_enums=int_enums)
            elif extra is not None:
                check_value(doc, extra, item, f"{where}[{key}]", int_enums=int_enums)
            else:
                raise Violation(f"{where}: unknown field {key!r}")
        for key, prop in properties.items():
            described = str(prop.get("description", ""))
            if described.startswith("Required.") and key not in value and key not in in_path:
                raise Violation(f"{where}: required field {key!r} is missing")
    elif kind == "array":
        if not isinstance(value, list):
            raise Violation(f"{where}: expected an array")
        for index, item in enumerate(value):
            check_value(doc, spec["items"], item, f"{where}[{index}]", int_enums=int_enums)
    else:
        _scalar(spec, value, where, int_enums)


def check(
    http_method: str,
    path: str,
    query: dict[str, list[str]],
    body: bytes,
    *,
    download: bool = False,
    upload: bool = False,
) -> tuple[Method, dict[str, str]]:
    """The method a request calls and its path parameters; Violation if the API would refuse it.

    `download`: the request came to the media download path (`/download` + the method's path):
    the method must support media download and ask `alt=media`. `upload`: it came to the
    method's `mediaUpload.protocols.simple.path`, with a simple protocol `uploadType`, and
    `body` is its metadata part (checked against the request schema like a JSON body)."""
    method, params = find(http_method, path)
    spec = method.spec["parameters"]
    alt = (query.pop("$alt", None) or query.pop("alt", None) or ["json"])[0]
    if download:
        if not method.spec.get("supportsMediaDownload") or alt != "media":
            raise Violation(f"{method.id}: not a media download (alt={alt!r})")
    elif upload:
        simple = method.spec.get("mediaUpload", {}).get("protocols", {}).get("simple")
        kind = (query.pop("uploadType", None) or [""])[0]
        if simple is None or "/upload" + path != _upload_path(method, simple["path"], params):
            raise Violation(f"{method.id}: no simple media upload at {path}")
        if kind not in ("media", "multipart") or (kind == "multipart") != bool(body.strip()):
            raise Violation(f"{method.id}: uploadType={kind!r} does not match the body")
    elif alt == "media" and method.spec.get("supportsMediaDownload"):
        pass  # GCS serves media on the JSON path too
    elif alt.split(";")[0] != "json":
        raise Violation(f"{method.id}: alt={alt!r}")
    int_enums = "enum-encoding=int" in alt
    for name, value in params.items():
        if not _param_ok(spec.get(name, {}), value):
            raise Violation(f"{method.id}: path parameter {name}={value!r} fails its pattern")
    known = {**spec, **method.doc.get("parameters", {})}
    for name, values in query.items():
        if name not in known or known[name].get("location") not in ("query", None):
            raise Violation(f"{method.id}: unknown query parameter {name!r}")
        for value in values:
            param = known[name]
            if param.get("type") == "integer" and not re.fullmatch(r"-?\d+", value):
                raise Violation(f"{method.id}: {name} must be an integer")
            if "enum" in param and value not in param["enum"]:
                raise Violation(f"{method.id}: {name}={value!r} is not one of {param['enum']}")
    for name, param in spec.items():
        if param.get("required") and param.get("location") == "query" and name not in query:
            raise Violation(f"{method.id}: required query parameter {name!r} is missing")
    request = method.spec.get("request")
    if request is not None:
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            raise Violation(f"{method.id}: the body is not JSON") from None
        check_value(method.doc, request, doc, method.id, frozenset(params), int_enums)
    elif body.strip():
        raise Violation(f"{method.id}: takes no body")
    return method, params


def _upload_path(method: Method, template: str, params: dict[str, str]) -> str:
    for name, value in params.items():
        template = template.replace("{" + name + "}", value)
    return template
