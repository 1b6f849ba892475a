"""Local stand-ins for the Azure services that have no emulator here, and the Azurite runner.

Each fake is a real HTTP(S) server on an ephemeral loopback port that the real SDK client talks
to: the App Service managed-identity endpoint (what `DefaultAzureCredential` uses inside a
Function App), Key Vault, and ARM's authorization API. They check what Azure checks (see
azspec.py): the token's audience, the API version, the request's shape, and whether the
caller's identity holds an assignment whose role allows the action on a scope covering the
target, as the Terraform module assigns them. Every call is recorded with its action and scope.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fnmatch
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import azspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
NODE = Path(__file__).resolve().parent / "node"


# -- TLS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        return context


def make_tls(folder: Path) -> Tls:
    """A self-signed certificate for 127.0.0.1, made fresh by each test run."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jitc-test-127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return Tls(cert_path, key_path)


# -- tokens ----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Tokens:
    """Issues and checks the JWTs of the fake identity endpoint (HS256 with a run secret)."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def issue(self, oid: str, audience: str, lifetime: int = 3600) -> tuple[str, int]:
        now = int(time.time())
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{TENANT}/",
            "oid": oid,
            "tid": TENANT,
            "sub": oid,
            "nbf": now - 60,
            "iat": now - 60,
            "exp": now + lifetime,
        }
        payload = _b64(json.dumps(claims).encode())
        mac = hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(mac)}", now + lifetime

    def check(self, authorization: str | None, audience: str) -> str | None:
        """The caller's object id, or None for a missing, forged, expired or misdirected token."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        token = authorization.removeprefix("Bearer ")
        try:
            header, payload, mac = token.split(".")
            expected = hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256)
            if not hmac.compare_digest(_unb64(mac), expected.digest()):
                return None
            claims = json.loads(_unb64(payload))
        except (ValueError, json.JSONDecodeError):
            return None
        if claims.get("aud") != audience or claims.get("exp", 0) < time.time():
            return None
        return str(claims["oid"])


# -- authorization ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    principal: str
    role: str
    actions: tuple[str, ...]
    data_actions: tuple[str, ...]
    scope: str
    allowed_roles: frozenset[str] | None = None  # the ABAC condition's role GUIDs


@dataclass(frozen=True)
class Call:
    service: str
    method: str
    action: str
    scope: str
    principal: str
    allowed: bool


def _covers(parent: str, scope: str) -> bool:
    parent, scope = parent.rstrip("/").lower(), scope.rstrip("/").lower()
    return scope == parent or scope.startswith(parent + "/") or parent == ""


def _matches(pattern: str, action: str) -> bool:
    return fnmatch.fnmatchcase(action.lower(), pattern.lower())


@dataclass
class Authz:
    """Azure RBAC for the fakes: assignments (rendered from the Terraform) and a call log."""

    assignments: list[Assignment] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    enforce: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def allows(
        self, principal: str, action: str, scope: str, data: bool, role: str | None = None
    ) -> bool:
        for a in self.assignments:
            if a.principal != principal or not _covers(a.scope, scope):
                continue
            patterns = a.data_actions if data else a.actions
            wanted = [action, *azspec.IMPLIED.get(action, [])]
            if not any(_matches(p, w) for p in patterns for w in wanted):
                continue
            conditioned = action.lower() in (
                "microsoft.authorization/roleassignments/write",
                "microsoft.authorization/roleassignments/delete",
            )
            if (
                a.allowed_roles is not None
                and conditioned
                and (role is None or role.lower() not in a.allowed_roles)
            ):
                continue
            return True
        return False

    def check(
        self,
        service: str,
        method: str,
        principal: str,
        action: str,
        scope: str,
        data: bool,
        role: str | None = None,
    ) -> bool:
        allowed = self.allows(principal, action, scope, data, role) or not self.enforce
        with self.lock:
            self.calls.append(Call(service, method, action, scope, principal, allowed))
        return allowed


# -- HTTP plumbing ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def _send(self, status: int, doc: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if doc is None else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        try:
            status, doc, headers = self.server.app.handle(
                self.command, urllib.parse.unquote(parts.path), query, self.headers, self._body()
            )
        except Exception as exc:  # a fake's own bug: visible, not silent
            status, doc, headers = 500, {"error": {"code": "FakeBug", "message": repr(exc)}}, {}
        self._send(status, doc, headers)

    do_GET = do_PUT = do_DELETE = do_POST = do_PATCH = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: Any


def _serve(app: Any, tls: Tls | None) -> tuple[_Server, int]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.app = app
    if tls is not None:
        server.socket = tls.context().wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


def _error(status: int, code: str, message: str) -> tuple[int, Any, dict[str, str]]:
    return status, {"error": {"code": code, "message": message}}, {}


# -- the managed identity endpoint -----------------------------------------------------------


class IdentityEndpoint:
    """App Service's managed identity endpoint (IDENTITY_ENDPOINT / IDENTITY_HEADER)."""

    def __init__(self, tokens: Tokens, principal: str, client_id: str) -> None:
        self.tokens = tokens
        self.principal = principal
        self.client_id = client_id
        self.header = secrets.token_hex(16)
        self.audiences: list[str] = []
        self.server, self.port = _serve(self, None)

    @property
    def env(self) -> dict[str, str]:
        return {
            "IDENTITY_ENDPOINT": f"http://127.0.0.1:{self.port}/msi/token",
            "IDENTITY_HEADER": self.header,
            "AZURE_CLIENT_ID": self.client_id,
        }

    def handle(self, method: str, path: str, query: dict[str, str], headers: Any, body: Any) -> Any:
        if method != "GET" or path != "/msi/token":
            return _error(404, "NotFound", path)
        if headers.get("X-IDENTITY-HEADER") != self.header:
            return _error(401, "Unauthorized", "X-IDENTITY-HEADER")
        if query.get("api-version") != "2019-08-01" or not query.get("resource"):
            return _error(400, "BadRequest", "api-version 2019-08-01 and resource are required")
        if query.get("client_id") not in (None, self.client_id):
            return _error(400, "BadRequest", "no such user-assigned identity")
        resource = query["resource"]
        self.audiences.append(resource)
        token, expires = self.tokens.issue(self.principal, resource)
        return (
            200,
            {
                "access_token": token,
                "expires_on": str(expires),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": self.client_id,
            },
            {},
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- Key Vault -------------------------------------------------------------------------------


class FakeKeyVault:
    """One vault: `GET /secrets/{name}[/{version}]`, behind the challenge and RBAC."""

    def __init__(self, tokens: Tokens, authz: Authz, tls: Tls, resource_id: str) -> None:
        self.tokens = tokens
        self.authz = authz
        self.resource_id = resource_id
        self.secrets: dict[str, dict[str, str]] = {}  # name -> version -> value
        self.server, self.port = _serve(self, tls)
        # The challenge names a resource whose domain the vault's host ends with, as real
        # vaults name vault.azure.net: the SDK's challenge check runs unchanged.
        self.resource = f"https://0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def dns_suffix(self) -> str:
        return f"0.0.1:{self.port}"

    def put(self, name: str, value: str) -> str:
        version = secrets.token_hex(16)
        self.secrets.setdefault(name, {})[version] = value
        self.secrets[name][""] = value
        return version

    def reference(self, name: str, field: str | None = None, version: str | None = None) -> str:
        path = f"{self.url}/secrets/{name}" + (f"/{version}" if version else "")
        return f"azure-kv:{path}" + (f"#{field}" if field else "")

    def handle(self, method: str, path: str, query: dict[str, str], headers: Any, body: Any) -> Any:
        if query.get("api-version") not in azspec.API_VERSIONS["keyvault"]:
            return _error(400, "BadParameter", f"api-version {query.get('api-version')!r}")
        principal = self.tokens.check(headers.get("Authorization"), self.resource)
        if principal is None:
            challenge = (
                f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
                f'resource="{self.resource}"'
            )
            status, doc, _ = _error(401, "Unauthorized", "AKV10000: Request is missing a Bearer")
            return status, doc, {"WWW-Authenticate": challenge}
        match = re.fullmatch(r"/secrets/([^/]+)(?:/([^/]*))?", path)
        if method != "GET" or match is None:
            return _error(405, "BadParameter", f"{method} {path} is not served by this fake")
        name, version = match.group(1), match.group(2) or ""
        if not azspec.SECRET_NAME.match(name):
            return _error(400, "BadParameter", "invalid secret name")
        scope = f"{self.resource_id}/secrets/{name}"
        action = "Microsoft.KeyVault/vaults/secrets/getSecret/action"
        if not self.authz.check("keyvault", method, principal, action, scope, data=True):
            status, doc, hdrs = _error(403, "Forbidden", "Caller is not authorized")
            doc["error"]["innererror"] = {"code": "ForbiddenByRbac"}
            return status, doc, hdrs
        value = self.secrets.get(name, {}).get(version)
        if value is None:
            return _error(404, "SecretNotFound", f"A secret with (name/id) {name} was not found")
        version = version or next(
            v for v in self.secrets[name] if v and self.secrets[name][v] == value
        )
        return (
            200,
            {
                "value": value,
                "id": f"{self.url}/secrets/{name}/{version}",
                "attributes": {"enabled": True, "created": 1700000000, "updated": 1700000000},
            },
            {},
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- ARM authorization -----------------------------------------------------------------------

PROVIDER = "/providers/Microsoft.Authorization/"


@dataclass
class RoleAssignment:
    scope: str
    name: str
    role_definition_id: str
    principal_id: str
    principal_type: str
    description: str | None = None
    ends: dt.datetime | None = None  # made by PIM with an expiration

    @property
    def id(self) -> str:
        return f"{self.scope}{PROVIDER}roleAssignments/{self.name}"

    def doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": "Microsoft.Authorization/roleAssignments",
            "properties": {
                "scope": self.scope,
                "roleDefinitionId": self.role_definition_id,
                "principalId": self.principal_id,
                "principalType": self.principal_type,
                "description": self.description,
            },
        }


class FakeArm:
    """Role assignments, role definitions and PIM schedule requests, at any scope."""

    def __init__(self, tokens: Tokens, authz: Authz, tls: Tls, subscription: str) -> None:
        self.tokens = tokens
        self.authz = authz
        self.subscription = subscription
        self.assignments: dict[str, RoleAssignment] = {}  # lower-case id -> assignment
        self.requests: dict[str, dict[str, Any]] = {}  # lower-case id -> request doc
        self.roles: dict[str, tuple[str, list[str]]] = {
            guid: (name, actions) for name, (guid, actions, _) in azspec.BUILTIN_ROLES.items()
        }
        self.clock_offset = dt.timedelta(0)
        # Called with (method, path) before a request is served: another writer acting at
        # that moment (ARM has no ETags on role assignments, so nothing orders the two).
        self.meanwhile: Callable[[str, str], None] | None = None
        # Entra ID object id -> its type, for the principals a test names: ARM compares a
        # request's principalType with the directory's (400 UnmatchedPrincipalType).
        self.directory: dict[str, str] = {}
        self.lock = threading.RLock()
        self.server, self.port = _serve(self, tls)

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.clock_offset

    def role_id(self, guid: str) -> str:
        return f"/subscriptions/{self.subscription}{PROVIDER}roleDefinitions/{guid}"

    def add_role(self, guid: str, name: str, actions: list[str]) -> None:
        self.roles[guid] = (name, actions)

    # What a neighbour with rights of its own does, outside the connector.
    def assign(
        self, scope: str, name: str, role_guid: str, principal: str, description: str | None = None
    ) -> RoleAssignment:
        made = RoleAssignment(scope, name, self.role_id(role_guid), principal, "User", description)
        with self.lock:
            self.assignments[made.id.lower()] = made
        return made

    def _expire(self) -> None:
        now = self.now()
        for key, assignment in list(self.assignments.items()):
            if assignment.ends is not None and assignment.ends <= now:
                del self.assignments[key]  # PIM ends it on time: the "fail closed" row

    def holds(self, principal: str, role_guid: str, scope: str) -> bool:
        """Whether `principal` has the role at `scope` or above (what access checks use)."""
        with self.lock:
            self._expire()
            return any(
                a.principal_id == principal
                and a.role_definition_id.lower() == self.role_id(role_guid).lower()
                and _covers(a.scope, scope)
                for a in self.assignments.values()
            )

    def handle(self, method: str, path: str, query: dict[str, str], headers: Any, body: Any) -> Any:
        if self.meanwhile is not None:
            self.meanwhile(method, path)
        principal = self.tokens.check(headers.get("Authorization"), self.endpoint)
        if principal is None:
            return _error(401, "InvalidAuthenticationToken", "missing or invalid token")
        scope, sep, rest = path.partition(PROVIDER)
        if not sep or not scope.startswith("/subscriptions/"):
            return _error(404, "InvalidResourceType", path)
        kind, _, name = rest.partition("/")
        if kind not in azspec.API_VERSIONS:
            return _error(404, "InvalidResourceType", kind)
        if query.get("api-version") not in azspec.API_VERSIONS[kind]:
            return _error(400, "InvalidApiVersionParameter", f"{query.get('api-version')!r}")
        with self.lock:
            self._expire()
            if kind == "roleAssignments":
                return self._assignments(method, principal, scope, name, query, body)
            if kind == "roleDefinitions":
                return self._definitions(method, principal, scope, name)
            return self._schedule_requests(method, principal, scope, name, query, body)

    def _denied(self, action: str, scope: str) -> Any:
        return _error(
            403,
            "AuthorizationFailed",
            f"does not have authorization to perform {action} on {scope}",
        )

    def _assignments(
        self, method: str, principal: str, scope: str, name: str, query: dict[str, str], body: Any
    ) -> Any:
        base = "Microsoft.Authorization/roleAssignments/"
        if method == "GET" and not name:
            if not self.authz.check("arm", method, principal, base + "read", scope, False):
                return self._denied(base + "read", scope)
            flt = query.get("$filter")
            match = re.fullmatch(r"principalId eq '([0-9a-f-]{36})'", flt or "")
            if flt not in (None, "atScope()") and match is None:
                return _error(400, "InvalidFilter", f"$filter {flt!r}")
            found = [
                a
                for a in self.assignments.values()
                if (_covers(a.scope, scope) or ((flt is None or match) and _covers(scope, a.scope)))
                and (match is None or a.principal_id == match.group(1))
            ]
            return 200, {"value": [a.doc() for a in found]}, {}
        if not azspec.GUID.match(name):
            return _error(
                400,
                "InvalidRoleAssignmentId",
                f"The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID.",
            )
        key = f"{scope}{PROVIDER}roleAssignments/{name}".lower()
        existing = self.assignments.get(key)
        if method == "GET":
            if not self.authz.check("arm", method, principal, base + "read", scope, False):
                return self._denied(base + "read", scope)
            if existing is None:
                return _error(404, "RoleAssignmentNotFound", "The role assignment does not exist.")
            return 200, existing.doc(), {}
        if method == "DELETE":
            role = existing.role_definition_id.rsplit("/", 1)[1] if existing else None
            if not self.authz.check("arm", method, principal, base + "delete", scope, False, role):
                return self._denied(base + "delete", scope)
            if existing is None:
                return 204, None, {}
            del self.assignments[key]
            return 200, existing.doc(), {}
        if method != "PUT":
            return _error(405, "MethodNotAllowed", method)
        props = (body or {}).get("properties")
        if not isinstance(props, dict):
            return _error(400, "InvalidRequestContent", "properties is required")
        for required in ("roleDefinitionId", "principalId"):
            if not isinstance(props.get(required), str):
                return _error(400, "InvalidRequestContent", f"properties.{required} is required")
        role_match = azspec.ROLE_DEFINITION_ID.match(props["roleDefinitionId"])
        if role_match is None or role_match.group("guid") not in self.roles:
            return _error(
                400, "RoleDefinitionDoesNotExist", "The specified role definition does not exist."
            )
        if props.get("principalType") not in (None, *azspec.PRINCIPAL_TYPES):
            return _error(400, "InvalidRequestContent", "principalType")
        if not azspec.GUID.match(props["principalId"]):
            return _error(400, "InvalidPrincipalId", "principalId must be a GUID")
        known = self.directory.get(props["principalId"])
        if known is not None and props.get("principalType") not in (None, known):
            return _error(
                400,
                "UnmatchedPrincipalType",
                f"The PrincipalId '{props['principalId']}' has type '{known}', which is "
                f"different from specified PrincipalType '{props.get('principalType')}'.",
            )
        if len(props.get("description") or "") > azspec.DESCRIPTION_MAX:
            return _error(400, "InvalidRequestContent", "properties.description is too long")
        role = role_match.group("guid")
        if not self.authz.check("arm", method, principal, base + "write", scope, False, role):
            return self._denied(base + "write", scope)
        if existing is not None:
            if (
                existing.principal_id != props["principalId"]
                or existing.role_definition_id.lower() != props["roleDefinitionId"].lower()
            ):
                return _error(
                    400,
                    "RoleAssignmentUpdateNotPermitted",
                    "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.",
                )
            existing.description = props.get("description")
            return 200, existing.doc(), {}
        for other in self.assignments.values():
            if (
                other.scope.lower() == scope.lower()
                and other.principal_id == props["principalId"]
                and other.role_definition_id.lower() == props["roleDefinitionId"].lower()
            ):
                return _error(
                    409,
                    "RoleAssignmentExists",
                    f"The role assignment already exists. The ID of the existing role assignment is {other.name}.",
                )
        made = RoleAssignment(
            scope, name, props["roleDefinitionId"], props["principalId"],
            props.get("principalType") or "User", props.get("description"),
        )  # fmt: skip
        self.assignments[key] = made
        return 201, made.doc(), {}

    def _definitions(self, method: str, principal: str, scope: str, name: str) -> Any:
        action = "Microsoft.Authorization/roleDefinitions/read"
        if method != "GET":
            return _error(405, "MethodNotAllowed", method)
        if not self.authz.check("arm", method, principal, action, scope, False):
            return self._denied(action, scope)
        if name not in self.roles:
            return _error(404, "RoleDefinitionDoesNotExist", name)
        role_name, actions = self.roles[name]
        return (
            200,
            {
                "id": self.role_id(name),
                "name": name,
                "type": "Microsoft.Authorization/roleDefinitions",
                "properties": {
                    "roleName": role_name,
                    "type": "BuiltInRole",
                    "permissions": [
                        {
                            "actions": actions,
                            "notActions": [],
                            "dataActions": [],
                            "notDataActions": [],
                        }
                    ],
                    "assignableScopes": ["/"],
                },
            },
            {},
        )

    def _schedule_requests(
        self, method: str, principal: str, scope: str, name: str, query: dict[str, str], body: Any
    ) -> Any:
        base = "Microsoft.Authorization/roleAssignmentScheduleRequests/"
        if method == "GET":
            if not self.authz.check("arm", method, principal, base + "read", scope, False):
                return self._denied(base + "read", scope)
            if not name:
                found = [
                    r for r in self.requests.values() if _covers(scope, r["properties"]["scope"])
                ]
                return 200, {"value": found}, {}
            request = self.requests.get(
                f"{scope}{PROVIDER}roleAssignmentScheduleRequests/{name}".lower()
            )
            if request is None:
                return _error(404, "RoleAssignmentScheduleRequestNotFound", name)
            return 200, request, {}
        if method != "PUT":
            return _error(405, "MethodNotAllowed", method)
        if not azspec.GUID.match(name):
            return _error(400, "InvalidResourceName", "the request name must be a GUID")
        props = (body or {}).get("properties")
        if not isinstance(props, dict):
            return _error(400, "InvalidRequestContent", "properties is required")
        for required in ("roleDefinitionId", "principalId", "requestType"):
            if not isinstance(props.get(required), str):
                return _error(400, "InvalidRequestContent", f"properties.{required} is required")
        if props["requestType"] not in azspec.REQUEST_TYPES:
            return _error(400, "InvalidRequestContent", "requestType")
        role_match = azspec.ROLE_DEFINITION_ID.match(props["roleDefinitionId"])
        if role_match is None or role_match.group("guid") not in self.roles:
            return _error(400, "RoleDefinitionDoesNotExist", props["roleDefinitionId"])
        if not self.authz.check("arm", method, principal, base + "write", scope, False):
            return self._denied(base + "write", scope)
        key = f"{scope}{PROVIDER}roleAssignmentScheduleRequests/{name}".lower()
        if key in self.requests:
            return _error(400, "RoleAssignmentRequestExists", "a request with this name exists")
        holding = [
            a for a in self.assignments.values()
            if a.scope.lower() == scope.lower() and a.principal_id == props["principalId"]
            and a.role_definition_id.lower() == props["roleDefinitionId"].lower()
        ]  # fmt: skip
        ends = None
        if props["requestType"] == "AdminAssign":
            info = props.get("scheduleInfo") or {}
            expiration = info.get("expiration") or {}
            if expiration.get("type") not in azspec.EXPIRATION_TYPES:
                return _error(400, "InvalidRequestContent", "scheduleInfo.expiration.type")
            if expiration["type"] == "AfterDateTime":
                if not isinstance(expiration.get("endDateTime"), str):
                    return _error(
                        400, "InvalidRequestContent", "expiration.endDateTime is required"
                    )
                ends = dt.datetime.fromisoformat(expiration["endDateTime"].replace("Z", "+00:00"))
            if holding:
                return _error(409, "RoleAssignmentExists", "The Role assignment already exists.")
            made = RoleAssignment(
                scope, str(uuid.uuid4()), props["roleDefinitionId"], props["principalId"],
                "User", None, ends,
            )  # fmt: skip
            self.assignments[made.id.lower()] = made
        elif props["requestType"] == "AdminRemove":
            if not holding:
                return _error(
                    400, "RoleAssignmentDoesNotExist", "The Role assignment does not exist."
                )
            for a in holding:
                del self.assignments[a.id.lower()]
        doc = {
            "id": f"{scope}{PROVIDER}roleAssignmentScheduleRequests/{name}",
            "name": name,
            "type": "Microsoft.Authorization/RoleAssignmentScheduleRequests",
            "properties": {**props, "scope": scope, "status": "Provisioned"},
        }
        self.requests[key] = doc
        return 201, doc, {}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- Azurite ---------------------------------------------------------------------------------


class Azurite:
    """Azurite's queue service, in memory, HTTPS with the test certificate, OAuth on."""

    ACCOUNT = "devstoreaccount1"
    KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

    def __init__(self, tls: Tls) -> None:
        binary = NODE / "node_modules" / ".bin" / "azurite-queue"
        if not binary.exists() or shutil.which("node") is None:
            raise RuntimeError(f"Azurite is not installed: run `npm ci` in {NODE}")
        self.process = subprocess.Popen(
            [
                str(binary), "--inMemoryPersistence", "--queueHost", "127.0.0.1",
                "--queuePort", "0", "--cert", str(tls.cert), "--key", str(tls.key),
                "--oauth", "basic", "--disableTelemetry", "--silent",
                # The SDK speaks a service version newer than the latest Azurite knows; the
                # operations used here exist unchanged in the versions Azurite serves.
                "--skipApiVersionCheck",
            ],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.port = self._wait_port()

    def _wait_port(self) -> int:
        assert self.process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            match = re.search(r"listens on https://127\.0\.0\.1:(\d+)", line)
            if match:
                threading.Thread(target=self.process.stdout.read, daemon=True).start()
                return int(match.group(1))
        self.process.kill()
        raise RuntimeError("Azurite did not start")

    @property
    def queue_service_uri(self) -> str:
        return f"https://127.0.0.1:{self.port}/{self.ACCOUNT}"

    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=https;"
            f"AccountName={self.ACCOUNT};AccountKey={self.KEY};"
            f"QueueEndpoint={self.queue_service_uri};"
        )

    def close(self) -> None:
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


class StorageProxy:
    """The app's way to Azurite: an HTTPS reverse proxy that judges each queue call as Azure
    Storage would for an Entra ID token (the data action the operation needs, on the queue's
    scope) and records it, then forwards it unchanged. Azurite itself checks the token's claims
    but evaluates no role."""

    def __init__(self, azurite: Azurite, authz: Authz, tls: Tls, storage_id: str) -> None:
        self.azurite = azurite
        self.authz = authz
        self.tls = tls
        self.storage_id = storage_id
        self.server, self.port = _serve_raw(self, tls)

    @property
    def queue_service_uri(self) -> str:
        return f"https://127.0.0.1:{self.port}/{Azurite.ACCOUNT}"

    def judge(self, method: str, path: str, query: dict[str, str], token: str | None) -> bool:
        parts = path.strip("/").split("/")
        queue = parts[1] if len(parts) > 1 else ""
        if len(parts) == 2:
            operation = "queue"
        elif len(parts) == 3 and parts[2] == "messages":
            operation = "peek" if query.get("peekonly") == "true" else "messages"
        else:
            operation = "message"
        action = azspec.QUEUE_ACTIONS.get((method, operation))
        principal = _claims(token).get("oid", "") if token else ""
        scope = f"{self.storage_id}/queueServices/default/queues/{queue}"
        if action is None:
            action = f"unknown {method} {operation}"
        return self.authz.check("storage", method, str(principal), action, scope, data=True)

    def forward(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        import http.client

        context = ssl.create_default_context(cafile=str(self.tls.cert))
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.azurite.port, context=context, timeout=30
        )
        try:
            forwarded = {
                k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")
            }
            connection.request(method, path, body=body or None, headers=forwarded)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _claims(token: str) -> dict[str, Any]:
    try:
        return dict(json.loads(_unb64(token.removeprefix("Bearer ").split(".")[1])))
    except (ValueError, IndexError):
        return {}


class _RawHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _proxy(self) -> None:
        proxy: StorageProxy = self.server.app
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        if not proxy.judge(self.command, parts.path, query, self.headers.get("Authorization")):
            data = (
                b'<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthorizationPermissionMismatch'
                b"</Code><Message>This request is not authorized to perform this operation using "
                b"this permission.</Message></Error>"
            )
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("x-ms-error-code", "AuthorizationPermissionMismatch")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        status, headers, data = proxy.forward(self.command, self.path, self.headers, body)
        self.send_response(status)
        for key, value in headers:
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_DELETE = do_POST = do_HEAD = _proxy


def _serve_raw(app: Any, tls: Tls) -> tuple[_Server, int]:
    server = _Server(("127.0.0.1", 0), _RawHandler)
    server.app = app
    server.socket = tls.context().wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
