"""A small GCP on loopback for the real Google client libraries: OAuth token endpoint, Google's
OIDC certificates, Secret Manager, Cloud Tasks (which *delivers* its tasks), the IAM
policies of projects, folders, buckets and secrets, and BigQuery datasets' access entries.

It enforces what Google enforces, or the tests could not see deployment defects:

- every request is checked against Google's discovery documents (`discovery.check`) and
  refused with 400 when the real API would refuse it;
- every request is authenticated (an access token from `/token`, obtained with a service
  account key it knows, or a JWT self-signed with that key) and authorised: the method's
  permission on the method's resource, through the resource's IAM policy and its project's,
  with role contents from Google's documentation and conditions on `request.time` evaluated;
  creating a task with an OIDC token also needs `iam.serviceAccounts.actAs` on that account;
- IAM policies have etags (a stale one: 409, or 412 for Cloud Storage), need version 3 for
  conditions, and conditions need a title (<= 100) and a description (<= 256);
- a BigQuery dataset's access is its `access[]` entries (datasets.get/patch/update): the
  dataset's etag checked against `If-Match` (412), `accessPolicyVersion=3` needed to write or see
  a condition, the data roles answered in their legacy names (OWNER/WRITER/READER), service
  accounts answered as `userByEmail`, the access list shown only with
  `bigquery.datasets.getIamPolicy` and changed only with `bigquery.datasets.setIamPolicy`;
  BigQuery's errors carry `errors[].reason` (accessDenied, notFound, ...), and a test can turn on
  its limit of five updates per dataset every 10 s (`dataset_updates_per_window`), answered as
  BigQuery answers it: 403 with reason `rateLimitExceeded`;
- task names are reserved for a while after their task ran or was deleted (`ALREADY_EXISTS`),
  schedule times are refused beyond 30 days, and deliveries carry an OIDC token signed with
  this server's key, for the audience and service account the task names.

Every call is recorded with its caller, method id, permission and resource.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import gcpdiscovery as discovery
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

# Roles and the permissions they hold (the ones this connector's deployment uses), from
# https://cloud.google.com/iam/docs/understanding-roles
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "roles/secretmanager.secretAccessor": frozenset({"secretmanager.versions.access"}),
    "roles/cloudtasks.enqueuer": frozenset({"cloudtasks.tasks.create"}),
    "roles/cloudtasks.taskDeleter": frozenset({"cloudtasks.tasks.delete"}),
    "roles/cloudtasks.viewer": frozenset(
        {
            "cloudtasks.locations.get",
            "cloudtasks.locations.list",
            "cloudtasks.queues.get",
            "cloudtasks.queues.list",
            "cloudtasks.tasks.get",
            "cloudtasks.tasks.list",
        }
    ),
    "roles/iam.serviceAccountUser": frozenset(
        {"iam.serviceAccounts.actAs", "iam.serviceAccounts.get", "iam.serviceAccounts.list"}
    ),
    "roles/iam.serviceAccountTokenCreator": frozenset(
        {
            "iam.serviceAccounts.getAccessToken",
            "iam.serviceAccounts.getOpenIdToken",
            "iam.serviceAccounts.signBlob",
            "iam.serviceAccounts.signJwt",
        }
    ),
    "roles/resourcemanager.projectIamAdmin": frozenset(
        {
            "resourcemanager.projects.get",
            "resourcemanager.projects.getIamPolicy",
            "resourcemanager.projects.setIamPolicy",
        }
    ),
    "roles/resourcemanager.folderIamAdmin": frozenset(
        {
            "resourcemanager.folders.get",
            "resourcemanager.folders.getIamPolicy",
            "resourcemanager.folders.setIamPolicy",
        }
    ),
    "roles/storage.objectViewer": frozenset({"storage.objects.get", "storage.objects.list"}),
    # Read-only IAM (a subset: the getIamPolicy permissions of the resource kinds used here).
    "roles/iam.securityReviewer": frozenset(
        {
            "resourcemanager.projects.getIamPolicy",
            "resourcemanager.folders.getIamPolicy",
            "storage.buckets.getIamPolicy",
            "secretmanager.secrets.getIamPolicy",
        }
    ),
    "roles/bigquery.dataViewer": frozenset({"bigquery.datasets.get", "bigquery.tables.getData"}),
    "roles/bigquery.dataEditor": frozenset(
        {"bigquery.datasets.get", "bigquery.tables.getData", "bigquery.tables.updateData"}
    ),
    "roles/bigquery.dataOwner": frozenset(
        {
            "bigquery.datasets.get",
            "bigquery.datasets.update",
            "bigquery.datasets.getIamPolicy",
            "bigquery.datasets.setIamPolicy",
            "bigquery.tables.getData",
            "bigquery.tables.updateData",
        }
    ),
    "roles/bigquery.metadataViewer": frozenset({"bigquery.datasets.get"}),
    "roles/run.invoker": frozenset({"run.routes.invoke"}),
    "roles/pubsub.publisher": frozenset({"pubsub.topics.publish"}),
}

# Method id -> permission; the resource comes from the request (see `_resource`).
METHOD_PERMISSIONS = {
    "cloudtasks.projects.locations.queues.tasks.create": "cloudtasks.tasks.create",
    "cloudtasks.projects.locations.queues.tasks.get": "cloudtasks.tasks.get",
    "cloudtasks.projects.locations.queues.tasks.delete": "cloudtasks.tasks.delete",
    "secretmanager.projects.secrets.versions.access": "secretmanager.versions.access",
    "secretmanager.projects.secrets.getIamPolicy": "secretmanager.secrets.getIamPolicy",
    "secretmanager.projects.secrets.setIamPolicy": "secretmanager.secrets.setIamPolicy",
    "cloudresourcemanager.projects.getIamPolicy": "resourcemanager.projects.getIamPolicy",
    "cloudresourcemanager.projects.setIamPolicy": "resourcemanager.projects.setIamPolicy",
    "cloudresourcemanager.folders.getIamPolicy": "resourcemanager.folders.getIamPolicy",
    "cloudresourcemanager.folders.setIamPolicy": "resourcemanager.folders.setIamPolicy",
    "storage.buckets.getIamPolicy": "storage.buckets.getIamPolicy",
    "storage.buckets.setIamPolicy": "storage.buckets.setIamPolicy",
    "pubsub.projects.topics.publish": "pubsub.topics.publish",
    "storage.buckets.get": "storage.buckets.get",
    "storage.objects.get": "storage.objects.get",
    # Replacing an existing object also needs storage.objects.delete (checked in `_insert`).
    "storage.objects.insert": "storage.objects.create",
    # Seeing the access list also needs getIamPolicy, changing it setIamPolicy (`_dataset_*`).
    "bigquery.datasets.get": "bigquery.datasets.get",
    "bigquery.datasets.patch": "bigquery.datasets.update",
    "bigquery.datasets.update": "bigquery.datasets.update",
}
# BigQuery answers these roles only in their legacy names (Dataset.access[].role).
BIGQUERY_LEGACY = {
    "roles/bigquery.dataOwner": "OWNER",
    "roles/bigquery.dataEditor": "WRITER",
    "roles/bigquery.dataViewer": "READER",
}
BIGQUERY_MEMBER_FIELDS = ("userByEmail", "groupByEmail", "domain", "specialGroup", "iamMember")
BIGQUERY_AUTHORIZED = ("view", "dataset", "routine")
# https://cloud.google.com/bigquery/quotas#dataset_limits: authorized views (and datasets and
# routines) in one dataset's access list.
MAX_AUTHORIZED = 2500
# https://cloud.google.com/bigquery/quotas#dataset_limits: dataset metadata updates (patch,
# update) per dataset in a window; the next one is refused with this error
# (https://cloud.google.com/bigquery/docs/troubleshoot-quotas).
DATASET_UPDATES = 5
DATASET_UPDATE_WINDOW = timedelta(seconds=10)
DATASET_RATE_LIMITED = (
    "Exceeded rate limits: too many dataset metadata update operations for this dataset. For more "
    "information, see https://cloud.google.com/bigquery/docs/troubleshoot-quotas"
)
# BigQuery's errors[].reason by HTTP code (https://cloud.google.com/bigquery/docs/error-messages)
# for errors that name none of their own.
BIGQUERY_REASONS = {400: "invalid", 403: "accessDenied", 404: "notFound", 409: "duplicate"}
# Google refuses a condition on these (IAM Conditions overview).
LEGACY_BASIC_ROLES = frozenset({"roles/owner", "roles/editor", "roles/viewer"})
MAX_CONDITIONAL = 100
MAX_SAME_ROLE_MEMBER = 20
# A condition on an IAM-admin binding that limits the roles it may grant or revoke
# (https://cloud.google.com/iam/docs/setting-limits-on-granting-roles).
GRANTS_BY_ROLE = re.compile(
    r"^api\.getAttribute\('iam\.googleapis\.com/modifiedGrantsByRole', \[\]\)"
    r"\.hasOnly\((\[.*\])\)$"
)
CONDITION = re.compile(r'^request\.time < timestamp\("(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"\)$')
MAX_AHEAD = timedelta(days=30)


class ApiError(Exception):
    def __init__(
        self, http: int, status: str, message: str, reason: str | None = None,
        domain: str = "global",
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.http, self.status, self.message = http, status, message
        # BigQuery's (and other JSON APIs') errors[] entry: what a client tells errors apart by.
        self.reason, self.domain = reason, domain

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.http, "message": self.message}
        if self.reason is not None:
            error["errors"] = [
                {"message": self.message, "domain": self.domain, "reason": self.reason}
            ]
        error["status"] = self.status
        return {"error": error}


@dataclass
class Call:
    caller: str
    method: str
    permission: str
    resource: str
    allowed: bool


@dataclass
class Media:
    data: bytes
    headers: dict[str, str]


@dataclass
class Task:
    name: str
    url: str
    body: bytes
    headers: dict[str, str]
    oidc_email: str | None
    audience: str | None
    schedule: datetime
    created_by: str
    attempts: int = 0
    responses: list[int] = field(default_factory=list)
    next_try: datetime | None = None


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _etag() -> str:
    """An etag as Google writes them: standard base64 (the discovery type is `byte`)."""
    return base64.b64encode(secrets.token_bytes(9)).decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_jwt(key: rsa.RSAPrivateKey, kid: str, claims: dict[str, Any]) -> str:
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}).encode())
    payload = _b64url(json.dumps(claims).encode())
    signature = key.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{_b64url(signature)}"


def _verify_jwt(token: str, public: Any) -> dict[str, Any] | None:
    try:
        header, payload, signature = token.split(".")
        public.verify(
            _unb64url(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(),
            hashes.SHA256(),
        )  # fmt: skip
        claims: dict[str, Any] = json.loads(_unb64url(payload))
    except Exception:
        return None
    return claims


def _certificate(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-google-oidc")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class FakeGcp:
    def __init__(
        self, project: str, *, retry_seconds: float = 0.2, reserve: timedelta = timedelta(hours=1)
    ) -> None:
        self.project = project
        self.offset = timedelta(0)  # tests move this server's clock forward
        self.retry_seconds = retry_seconds
        self.reserve = reserve
        # The worker runs IAM-authenticated: Cloud Run checks each task's token and forwards it
        # with the signature replaced (https://cloud.google.com/run/docs/troubleshooting
        # #signature-removed).
        self.cloud_run_iam = True
        self.lock = threading.RLock()
        self.accounts: dict[str, rsa.RSAPrivateKey] = {}
        self.tokens: dict[str, str] = {}
        self.secrets: dict[str, bytes] = {}  # version name -> payload
        self.policies: dict[str, dict[str, Any]] = {}
        self.custom_roles: dict[str, frozenset[str]] = {}
        self.buckets: set[str] = set()
        # BigQuery datasets (projects/P/datasets/D) -> {"etag": ..., "access": [entries]}.
        self.datasets: dict[str, dict[str, Any]] = {}
        # Tests: called once before the next dataset write is applied (another writer's turn).
        self.before_dataset_write: Any = None
        # Tests: BigQuery's per-dataset update limit (DATASET_UPDATES), off unless set: without a
        # clock the test drives, a burst of writes in a test would wait out real seconds.
        self.dataset_updates_per_window: int | None = None
        self.dataset_updates: dict[str, list[datetime]] = {}
        self.rate_limited: list[str] = []  # datasets whose write was refused for the limit
        # Cloud Storage objects: (bucket, name) -> (generation, data, content type).
        self.objects: dict[tuple[str, str], tuple[int, bytes, str]] = {}
        self._generation = int(time.time() * 1_000_000)
        # Tests: called once before the next object write is applied (another writer's turn).
        self.before_object_write: Any = None
        self.queues: set[str] = set()
        self.topics: set[str] = set()
        self.published: dict[str, list[dict[str, Any]]] = {}
        self.tasks: dict[str, Task] = {}
        self.reserved: dict[str, datetime] = {}
        self.delivered: list[Task] = []
        # Tests: tasks this answers True for are accepted and then lost (a timer that never fires).
        self.lose: Any = None
        self.lost: list[Task] = []
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.oidc_key = _rsa_key()
        self.oidc_kid = secrets.token_hex(8)
        self.oidc_cert = _certificate(self.oidc_key)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self.server.serve_forever, daemon=True),
            threading.Thread(target=self._dispatch, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- setup --------------------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        with self.lock:
            self.offset += delta

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def service_account(self, name: str) -> tuple[str, dict[str, Any]]:
        """A service account and its key file (`token_uri` pointing here)."""
        email = f"{name}@{self.project}.iam.gserviceaccount.com"
        key = _rsa_key()
        self.accounts[email] = key
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()  # fmt: skip
        info = {
            "type": "service_account", "project_id": self.project,
            "private_key_id": secrets.token_hex(8), "private_key": pem, "client_email": email,
            "client_id": str(secrets.randbelow(10**20)), "token_uri": f"{self.url}/token",
        }  # fmt: skip
        return email, info

    def add_secret(self, secret: str, value: str) -> str:
        name = f"projects/{self.project}/secrets/{secret}"
        self.secrets[f"{name}/versions/1"] = value.encode()
        self.secrets[f"{name}/versions/latest"] = value.encode()
        return name

    def add_dataset(self, name: str) -> None:
        """A dataset with BigQuery's default access: the project's owners, writers, readers."""
        with self.lock:
            self.datasets[name] = {
                "etag": _etag(),
                "access": [
                    {"role": "OWNER", "specialGroup": "projectOwners"},
                    {"role": "WRITER", "specialGroup": "projectWriters"},
                    {"role": "READER", "specialGroup": "projectReaders"},
                ],
            }

    def bind(
        self, resource: str, role: str, member: str, condition: dict[str, str] | None = None
    ) -> None:
        with self.lock:
            if resource in self.datasets:
                entry = _dataset_entry(role, member, condition)
                self.datasets[resource]["access"].append(entry)
                self.datasets[resource]["etag"] = _etag()
                return
            policy = self.policies.setdefault(resource, {"version": 1, "bindings": []})
            binding: dict[str, Any] = {"role": role, "members": [member]}
            if condition is not None:
                binding["condition"] = condition
                policy["version"] = 3
            policy["bindings"].append(binding)
            policy["etag"] = _etag()

    def oidc_token(self, audience: str, email: str, **overrides: Any) -> str:
        # Tokens are minted on the real clock: the moved clock is for schedules and conditions.
        now = int(time.time())
        claims = {
            "iss": "https://accounts.google.com", "aud": audience, "azp": email,
            "email": email, "email_verified": True, "sub": str(abs(hash(email))),
            "iat": now, "exp": now + 3600, **overrides,
        }  # fmt: skip
        return sign_jwt(self.oidc_key, self.oidc_kid, claims)

    # -- IAM ----------------------------------------------------------------------------

    def role_permissions(self, role: str) -> frozenset[str]:
        if role in self.custom_roles:
            return self.custom_roles[role]
        return ROLE_PERMISSIONS.get(role, frozenset())

    def _holds(
        self, binding: dict[str, Any], member: str, modified: frozenset[str] = frozenset()
    ) -> bool:
        if member not in binding.get("members", []):
            return False
        condition = binding.get("condition")
        if condition is None:
            return True
        limited = GRANTS_BY_ROLE.fullmatch(condition.get("expression", ""))
        if limited is not None:
            # The roles whose grants this request changes (none for any other call).
            return modified <= frozenset(json.loads(limited.group(1)))
        match = CONDITION.fullmatch(condition.get("expression", ""))
        if match is None:
            return False  # not evaluated here: fail closed
        return self.now() < datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))

    def _ancestors(self, resource: str) -> list[str]:
        chain = [resource]
        project = re.match(r"^projects/[^/]+", resource)
        if project and project.group(0) != resource:
            chain.append(project.group(0))
        if resource.startswith("buckets/"):
            chain.append(f"projects/{self.project}")
        return chain

    def allowed(
        self, member: str, permission: str, resource: str, modified: frozenset[str] = frozenset()
    ) -> bool:
        with self.lock:
            for name in self._ancestors(resource):
                bindings = self.policies.get(name, {}).get("bindings", [])
                if name in self.datasets:
                    bindings = _dataset_bindings(self.datasets[name]["access"])
                for binding in bindings:
                    if permission in self.role_permissions(binding["role"]) and self._holds(
                        binding, member, modified
                    ):
                        return True
        return False

    def modified_roles(self, resource: str, policy: dict[str, Any]) -> frozenset[str]:
        """The roles whose grants (member and condition) a new policy adds or removes."""

        def grants(bindings: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
            return {
                (str(b.get("role")), str(m), json.dumps(b.get("condition"), sort_keys=True))
                for b in bindings for m in b.get("members", [])
            }  # fmt: skip

        with self.lock:
            before = grants(self.policies.get(resource, {}).get("bindings", []))
        after = grants(policy.get("bindings", []) or [])
        return frozenset(role for role, _, _ in before ^ after)

    def authorize(
        self, caller: str, method: str, permission: str, resource: str,
        modified: frozenset[str] = frozenset(),
    ) -> None:  # fmt: skip
        ok = self.allowed(f"serviceAccount:{caller}", permission, resource, modified)
        with self.lock:
            self.calls.append(Call(caller, method, permission, resource, ok))
        if not ok:
            raise ApiError(403, "PERMISSION_DENIED", f"{permission} denied on {resource}")

    # -- authentication -----------------------------------------------------------------

    def _token(self, form: dict[str, list[str]]) -> dict[str, Any]:
        assertion = (form.get("assertion") or [""])[0]
        # google-auth addresses its assertion to Google's token URI whatever token_uri says.
        email = self._account_of_jwt(assertion, audience="https://oauth2.googleapis.com/token")
        if email is None:
            raise ApiError(400, "invalid_grant", "bad assertion")
        token = secrets.token_urlsafe(24)
        self.tokens[token] = email
        return {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def _account_of_jwt(self, token: str, audience: str | None = None) -> str | None:
        try:
            claims = json.loads(_unb64url(token.split(".")[1]))
        except Exception:
            return None
        email = claims.get("iss")
        key = self.accounts.get(email)
        if key is None or _verify_jwt(token, key.public_key()) is None:
            return None
        if audience is not None and claims.get("aud") != audience:
            return None
        if not claims.get("exp") or claims["exp"] < time.time():
            return None
        return str(email)

    def caller(self, authorization: str | None) -> str:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme != "Bearer" or not token:
            raise ApiError(401, "UNAUTHENTICATED", "no credentials")
        if token in self.tokens:
            return self.tokens[token]
        email = self._account_of_jwt(token)  # a self-signed JWT
        if email is None:
            raise ApiError(401, "UNAUTHENTICATED", "invalid credentials")
        return email

    # -- APIs ---------------------------------------------------------------------------

    def handle(
        self, verb: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        path, query = parts.path, parse_qs(parts.query)
        if path == "/token" and verb == "POST":
            return 200, self._token(parse_qs(body.decode()))
        if path == "/oauth2/v1/certs":
            return 200, {self.oidc_kid: self.oidc_cert}
        download, upload = path.startswith("/download/"), path.startswith("/upload/")
        wants_media = download or query.get("alt") == ["media"]
        media = b""
        if download or upload:
            path = "/" + path.split("/", 2)[2]
        if upload and "uploadType" in query and query["uploadType"] == ["multipart"]:
            body, media = _multipart(headers.get("content-type", ""), body)
        elif upload:
            body, media = b"", body
        try:
            method, params = discovery.check(
                verb, path, query, body, download=download, upload=upload
            )
        except discovery.Violation as exc:
            with self.lock:
                self.violations.append(str(exc))
            raise ApiError(400, "INVALID_ARGUMENT", str(exc)) from None
        try:
            return self._call(method, params, query, headers, body, media, wants_media)
        except ApiError as exc:
            if method.api == "bigquery":
                exc.reason = exc.reason or BIGQUERY_REASONS.get(exc.http)
            raise

    def _call(
        self, method: discovery.Method, params: dict[str, str], query: dict[str, list[str]],
        headers: dict[str, str], body: bytes, media: bytes, wants_media: bool,
    ) -> tuple[int, Any]:  # fmt: skip
        caller = self.caller(headers.get("authorization"))
        doc = json.loads(body) if body.strip() else {}
        permission = METHOD_PERMISSIONS.get(method.id)
        if permission is None:  # a method no account of the module holds a permission for
            with self.lock:
                self.violations.append(f"{method.id}: not a method the connector calls")
            raise ApiError(403, "PERMISSION_DENIED", f"{method.id} denied")
        resource = self._resource(method.id, params)
        modified: frozenset[str] = frozenset()
        if method.id.endswith("setIamPolicy"):
            policy = doc if method.api == "storage" else doc.get("policy", {})
            modified = self.modified_roles(resource, policy)
        self.authorize(caller, method.id, permission, resource, modified)
        if method.api == "cloudtasks":
            return self._tasks(method.id, params, doc, caller)
        if method.id.endswith("versions.access"):
            return self._access(params["name"])
        if method.id == "pubsub.projects.topics.publish":
            return self._publish(resource, doc)
        if method.id == "storage.objects.get":
            return self._object(params, query, wants_media)
        if method.id == "storage.objects.insert":
            return self._insert(params, query, doc, media, caller, headers)
        if method.api == "bigquery":
            return self._dataset(method.id, resource, query, doc, caller, headers)
        if method.id.endswith("getIamPolicy"):
            return 200, self._get_policy(resource)
        policy = doc if method.api == "storage" else doc.get("policy", {})
        return 200, self._set_policy(resource, policy, method.api == "storage")

    def _resource(self, method: str, params: dict[str, str]) -> str:
        if method.startswith("cloudtasks."):
            name = params.get("parent") or params["name"].rsplit("/tasks/", 1)[0]
            return name
        if method.endswith("versions.access"):
            return params["name"].rsplit("/versions/", 1)[0]
        if method.startswith("storage."):
            return f"buckets/{params['bucket']}"
        if method.startswith("pubsub."):
            return params["topic"]
        if method.startswith("bigquery."):
            return f"projects/{params['projectId']}/datasets/{params['datasetId']}"
        return params["resource"]

    def _publish(self, topic: str, doc: dict[str, Any]) -> tuple[int, Any]:
        if topic not in self.topics:
            raise ApiError(404, "NOT_FOUND", f"topic {topic} not found")
        messages = doc.get("messages") or []
        if not 1 <= len(messages) <= 1000:
            raise ApiError(400, "INVALID_ARGUMENT", "1 to 1000 messages per publish")
        ids = []
        with self.lock:
            for message in messages:
                if not message.get("data") and not message.get("attributes"):
                    raise ApiError(400, "INVALID_ARGUMENT", "a message needs data or attributes")
                self.published.setdefault(topic, []).append(message)
                ids.append(str(len(self.published[topic])))
        return 200, {"messageIds": ids}

    def _access(self, name: str) -> tuple[int, Any]:
        data = self.secrets.get(name)
        if data is None:
            raise ApiError(404, "NOT_FOUND", f"{name} not found")
        crc = str(_crc32c(data))
        return 200, {
            "name": name,
            "payload": {"data": base64.b64encode(data).decode(), "dataCrc32c": crc},
        }

    def _object_doc(self, bucket: str, name: str) -> dict[str, Any]:
        generation, data, content_type = self.objects[(bucket, name)]
        return {
            "kind": "storage#object", "bucket": bucket, "name": name,
            "id": f"{bucket}/{name}/{generation}", "generation": str(generation),
            "metageneration": "1", "size": str(len(data)), "contentType": content_type,
            "crc32c": base64.b64encode(_crc32c(data).to_bytes(4, "big")).decode(),
            "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),
        }  # fmt: skip

    def _preconditions(self, current: int, query: dict[str, list[str]]) -> None:
        """`generation` selects a generation (404 if not it); `ifGenerationMatch` is a
        precondition (412; 0 means "no live object")."""
        if "generation" in query and int(query["generation"][0]) != current:
            raise ApiError(404, "NOT_FOUND", "no such generation")
        if "ifGenerationMatch" in query and int(query["ifGenerationMatch"][0]) != current:
            raise ApiError(412, "FAILED_PRECONDITION", "conditionNotMet")

    def _object(
        self, params: dict[str, str], query: dict[str, list[str]], download: bool
    ) -> tuple[int, Any]:
        # The object's name is one path segment, percent-encoded ("/" as %2F), as in Google's.
        key = (params["bucket"], unquote(params["object"]))
        with self.lock:
            if key[0] not in self.buckets:
                raise ApiError(404, "NOT_FOUND", "no such bucket")
            if key not in self.objects:
                raise ApiError(404, "NOT_FOUND", "no such object")
            self._preconditions(self.objects[key][0], query)
            if download:
                # Media with the headers Cloud Storage sends with it (the client reads the
                # object's generation and checks the hashes from them).
                generation, data, content_type = self.objects[key]
                crc = base64.b64encode(_crc32c(data).to_bytes(4, "big")).decode()
                md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
                return 200, Media(data, {
                    "Content-Type": content_type, "x-goog-generation": str(generation),
                    "x-goog-metageneration": "1", "x-goog-hash": f"crc32c={crc},md5={md5}",
                    "x-goog-stored-content-length": str(len(data)),
                    "x-goog-stored-content-encoding": "identity",
                })  # fmt: skip
            return 200, self._object_doc(*key)

    def _insert(
        self, params: dict[str, str], query: dict[str, list[str]], doc: dict[str, Any],
        media: bytes, caller: str, headers: dict[str, str],
    ) -> tuple[int, Any]:  # fmt: skip
        bucket = params["bucket"]
        name = (query.get("name") or [doc.get("name", "")])[0]
        if not name:
            raise ApiError(400, "INVALID_ARGUMENT", "an object needs a name")
        hook, self.before_object_write = self.before_object_write, None
        if hook is not None:
            hook()
        with self.lock:
            if bucket not in self.buckets:
                raise ApiError(404, "NOT_FOUND", "no such bucket")
            current = self.objects.get((bucket, name), (0, b"", ""))[0]
            if current:
                self.authorize(caller, "storage.objects.insert", "storage.objects.delete",
                               f"buckets/{bucket}")  # fmt: skip
            self._preconditions(current, {k: v for k, v in query.items() if k != "generation"})
            self._generation += 1
            content_type = doc.get("contentType") or "application/octet-stream"
            self.objects[(bucket, name)] = (self._generation, media, content_type)
            return 200, self._object_doc(bucket, name)

    # -- BigQuery datasets ------------------------------------------------------------------

    def _dataset(
        self, method: str, name: str, query: dict[str, list[str]], doc: dict[str, Any],
        caller: str, headers: dict[str, str],
    ) -> tuple[int, Any]:  # fmt: skip
        version = int((query.get("accessPolicyVersion") or ["0"])[0])
        if version not in (0, 1, 3):
            raise ApiError(400, "INVALID_ARGUMENT", "accessPolicyVersion is 0, 1 or 3")
        if method.endswith(".get"):
            with self.lock:
                if name not in self.datasets:
                    raise ApiError(404, "NOT_FOUND", f"Not found: Dataset {name}")
                # Without getIamPolicy the dataset comes back without its access list.
                permission = "bigquery.datasets.getIamPolicy"
                shown = self.allowed(f"serviceAccount:{caller}", permission, name)
                self.calls.append(Call(caller, method, permission, name, shown))
                return 200, self._dataset_doc(name, version, shown)
        hook, self.before_dataset_write = self.before_dataset_write, None
        if hook is not None:
            hook()
        with self.lock:
            if name not in self.datasets:
                raise ApiError(404, "NOT_FOUND", f"Not found: Dataset {name}")
            stored = self.datasets[name]
            # datasets.patch needs get as well as update (its IAM permissions).
            self.authorize(caller, method, "bigquery.datasets.get", name)
            if self.dataset_updates_per_window is not None:
                now = self.now()
                recent = [
                    t for t in self.dataset_updates.get(name, []) if now - t < DATASET_UPDATE_WINDOW
                ]
                self.dataset_updates[name] = recent
                if len(recent) >= self.dataset_updates_per_window:
                    self.rate_limited.append(name)
                    raise ApiError(
                        403, "PERMISSION_DENIED", DATASET_RATE_LIMITED,
                        reason="rateLimitExceeded", domain="usageLimits",
                    )  # fmt: skip
            match = headers.get("if-match")
            if match is not None and match != stored["etag"]:
                raise ApiError(412, "FAILED_PRECONDITION", "Precondition check failed.")
            reference = doc.get("datasetReference") or {}
            project, _, dataset = name.removeprefix("projects/").partition("/datasets/")
            if reference and (reference.get("projectId"), reference.get("datasetId")) != (
                project, dataset,
            ):  # fmt: skip
                raise ApiError(400, "INVALID_ARGUMENT", "datasetReference differs from the path")
            if "access" in doc or method.endswith(".update"):
                access = [_normalise_entry(e) for e in doc.get("access") or []]
                self._check_access(access, stored["access"], version)
                if _dataset_bindings(access) != _dataset_bindings(stored["access"]) or len(
                    access
                ) != len(stored["access"]):
                    self.authorize(caller, method, "bigquery.datasets.setIamPolicy", name)
                stored["access"] = access
            stored["etag"] = _etag()
            self.dataset_updates.setdefault(name, []).append(self.now())
            return 200, self._dataset_doc(name, version, True)

    def _check_access(
        self, access: list[dict[str, Any]], before: list[dict[str, Any]], version: int
    ) -> None:
        """What BigQuery refuses in an access list (with IAM's rules for conditions)."""
        conditional = [e for e in access if e.get("condition") is not None]
        had = any(e.get("condition") is not None for e in before)
        if (conditional or had) and version != 3:
            raise ApiError(
                400, "INVALID_ARGUMENT", "conditional access entries need accessPolicyVersion=3"
            )
        authorized = 0
        for entry in access:
            members = [f for f in BIGQUERY_MEMBER_FIELDS if entry.get(f)]
            targets = [f for f in BIGQUERY_AUTHORIZED if entry.get(f)]
            if len(members) + len(targets) != 1:
                raise ApiError(400, "INVALID_ARGUMENT", "an access entry names exactly one grantee")
            if targets:
                authorized += 1
                continue
            if not entry.get("role"):
                raise ApiError(400, "INVALID_ARGUMENT", "an access entry for a member needs a role")
            condition = entry.get("condition")
            if condition is None:
                continue
            role = _full_role(str(entry["role"]))
            if role in LEGACY_BASIC_ROLES:
                raise ApiError(400, "INVALID_ARGUMENT", f"conditions are not allowed on {role}")
            if entry.get("specialGroup") in ("allAuthenticatedUsers", "allUsers"):
                raise ApiError(400, "INVALID_ARGUMENT", "conditions are not allowed for all users")
            if not condition.get("title") or len(condition["title"]) > 100:
                raise ApiError(400, "INVALID_ARGUMENT", "condition title missing or > 100")
            if len(condition.get("description", "")) > 256:
                raise ApiError(400, "INVALID_ARGUMENT", "condition description > 256")
            if not condition.get("expression"):
                raise ApiError(400, "INVALID_ARGUMENT", "a condition needs an expression")
        if authorized > MAX_AUTHORIZED:
            raise ApiError(400, "INVALID_ARGUMENT", "more than 2500 authorized resources")
        if len(conditional) > MAX_CONDITIONAL:
            raise ApiError(400, "INVALID_ARGUMENT", "more than 100 conditional bindings")

    def _dataset_doc(self, name: str, version: int, show_access: bool) -> dict[str, Any]:
        stored = self.datasets[name]
        project, _, dataset = name.removeprefix("projects/").partition("/datasets/")
        doc: dict[str, Any] = {
            "kind": "bigquery#dataset", "id": f"{project}:{dataset}", "etag": stored["etag"],
            "datasetReference": {"projectId": project, "datasetId": dataset},
            "location": "EU",
        }  # fmt: skip
        if show_access:
            access = []
            for entry in stored["access"]:
                entry = json.loads(json.dumps(entry))
                if entry.get("condition") is not None and version != 3:
                    # What BigQuery answers an older reader for a conditional entry.
                    digest_ = hashlib.sha256(json.dumps(entry, sort_keys=True).encode())
                    entry["role"] = (
                        f"{_full_role(entry['role'])}_with_conditionalbinding_"
                        f"{digest_.hexdigest()[:10]}"
                    )
                    del entry["condition"]
                access.append(entry)
            doc["access"] = access
        return doc

    def _get_policy(self, resource: str) -> dict[str, Any]:
        with self.lock:
            policy = self.policies.setdefault(
                resource, {"version": 1, "bindings": [], "etag": _etag()}
            )
            policy.setdefault("etag", _etag())
            return json.loads(json.dumps(policy))

    def _set_policy(self, resource: str, policy: dict[str, Any], storage: bool) -> dict[str, Any]:
        with self.lock:
            current = self._get_policy(resource)
            if policy.get("etag") and policy["etag"] != current["etag"]:
                # Cloud Storage answers a stale etag with 412, the others with 409 ABORTED.
                raise ApiError(412 if storage else 409, "ABORTED", "etag mismatch")
            bindings = policy.get("bindings", [])
            for binding in bindings:
                condition = binding.get("condition")
                if condition is None:
                    continue
                if policy.get("version") != 3:
                    raise ApiError(400, "INVALID_ARGUMENT", "conditions need policy version 3")
                if not condition.get("title") or len(condition["title"]) > 100:
                    raise ApiError(400, "INVALID_ARGUMENT", "condition title missing or > 100")
                if len(condition.get("description", "")) > 256:
                    raise ApiError(400, "INVALID_ARGUMENT", "condition description > 256")
                if not binding.get("members"):
                    raise ApiError(400, "INVALID_ARGUMENT", "a binding needs members")
                # https://cloud.google.com/iam/docs/conditions-overview: no conditions on the
                # legacy basic roles, nor for allUsers / allAuthenticatedUsers.
                if binding.get("role") in LEGACY_BASIC_ROLES:
                    raise ApiError(
                        400, "INVALID_ARGUMENT", f"conditions are not allowed on {binding['role']}"
                    )
                if set(binding["members"]) & {"allUsers", "allAuthenticatedUsers"}:
                    raise ApiError(
                        400, "INVALID_ARGUMENT", "conditions are not allowed for all users"
                    )
            # Google's limits on conditional bindings (https://cloud.google.com/iam/docs/
            # allow-policies, "Policy limitations"): 100 per policy, and 20 of one role and
            # one member.
            conditional = [b for b in bindings if b.get("condition") is not None]
            if len(conditional) > MAX_CONDITIONAL:
                raise ApiError(400, "INVALID_ARGUMENT", "more than 100 conditional bindings")
            pairs: dict[tuple[str, str], int] = {}
            for binding in bindings:
                for member in binding.get("members", []):
                    key = (str(binding.get("role")), str(member))
                    pairs[key] = pairs.get(key, 0) + 1
                    if pairs[key] > MAX_SAME_ROLE_MEMBER:
                        raise ApiError(
                            400,
                            "INVALID_ARGUMENT",
                            f"more than 20 bindings of {key[0]} for one member",
                        )
            stored = {
                "version": policy.get("version", 1), "bindings": bindings,
                "etag": _etag(),
            }  # fmt: skip
            self.policies[resource] = stored
            return json.loads(json.dumps(stored))

    def _tasks(
        self, method: str, params: dict[str, str], doc: dict[str, Any], caller: str
    ) -> tuple[int, Any]:
        with self.lock:
            if method.endswith(".create"):
                return 200, self._create_task(params["parent"], doc["task"], caller)
            name = params["name"]
            self._expire_reservations()
            task = self.tasks.get(name)
            if method.endswith(".get"):
                if task is None:
                    raise ApiError(404, "NOT_FOUND", "no such task")
                return 200, {
                    "name": name,
                    "scheduleTime": task.schedule.isoformat().replace("+00:00", "Z"),
                }
            if task is None:
                raise ApiError(404, "NOT_FOUND", "no such task")
            del self.tasks[name]
            self.reserved[name] = self.now()
            return 200, {}

    def _expire_reservations(self) -> None:
        for name, since in list(self.reserved.items()):
            if self.now() - since > self.reserve:
                del self.reserved[name]

    def _create_task(self, parent: str, task: dict[str, Any], caller: str) -> dict[str, Any]:
        if parent not in self.queues:
            raise ApiError(404, "NOT_FOUND", f"queue {parent} not found")
        self._expire_reservations()
        name = task.get("name") or f"{parent}/tasks/{secrets.randbelow(10**19)}"
        if not name.startswith(f"{parent}/tasks/") or not re.fullmatch(
            r"[A-Za-z0-9_-]{1,500}", name.rsplit("/", 1)[1]
        ):
            raise ApiError(400, "INVALID_ARGUMENT", "bad task name")
        if name in self.tasks or name in self.reserved:
            raise ApiError(409, "ALREADY_EXISTS", "task exists or existed recently")
        http = task.get("httpRequest") or {}
        if not http.get("url"):
            raise ApiError(400, "INVALID_ARGUMENT", "httpRequest.url is required")
        oidc = http.get("oidcToken")
        email = None
        if oidc is not None:
            email = oidc.get("serviceAccountEmail")
            account = f"projects/-/serviceAccounts/{email}"
            self.authorize(
                caller, "iam.actAs (CreateTask oidcToken)", "iam.serviceAccounts.actAs", account
            )
        schedule = self.now()
        if task.get("scheduleTime"):
            schedule = datetime.fromisoformat(task["scheduleTime"].replace("Z", "+00:00"))
            if schedule > self.now() + MAX_AHEAD:
                raise ApiError(400, "INVALID_ARGUMENT", "scheduleTime is more than 30 days ahead")
        body = base64.b64decode(http.get("body", ""))
        if len(body) > 100 * 1024:
            raise ApiError(400, "INVALID_ARGUMENT", "task larger than 100KB")
        task = Task(
            name, http["url"], body, dict(http.get("headers", {})), email,
            (oidc or {}).get("audience") or http["url"], schedule, caller,
        )  # fmt: skip
        if self.lose is not None and self.lose(task):
            self.lost.append(task)
        else:
            self.tasks[name] = task
        return {"name": name, "scheduleTime": schedule.isoformat().replace("+00:00", "Z")}

    def due(self) -> list[Task]:
        with self.lock:
            return [t for t in self.tasks.values() if t.schedule <= self.now()]

    def _dispatch(self) -> None:
        while not self._stop.wait(0.05):
            now = self.now()
            with self.lock:
                ready = [
                    t for t in self.tasks.values()
                    if t.schedule <= now and (t.next_try is None or t.next_try <= now)
                ]  # fmt: skip
            for task in ready:
                self._deliver(task)

    def _deliver(self, task: Task) -> None:
        headers = {**task.headers, "User-Agent": "Google-Cloud-Tasks"}
        headers["X-CloudTasks-TaskName"] = task.name.rsplit("/", 1)[1]
        headers["X-CloudTasks-TaskRetryCount"] = str(task.attempts)
        if task.oidc_email:
            token = self.oidc_token(task.audience or task.url, task.oidc_email)
            if self.cloud_run_iam:
                token = token.rsplit(".", 1)[0] + ".SIGNATURE_REMOVED_BY_GOOGLE"
            headers["Authorization"] = "Bearer " + token
        request = urllib.request.Request(task.url, data=task.body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            status = 0
        with self.lock:
            task.attempts += 1
            task.responses.append(status)
            if 200 <= status < 300:
                if self.tasks.pop(task.name, None) is not None:
                    self.reserved[task.name] = self.now()
                    self.delivered.append(task)
            else:
                task.next_try = self.now() + timedelta(seconds=self.retry_seconds)

    # -- HTTP ---------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    status, doc = fake.handle(self.command, self.path, headers, body)
                except ApiError as exc:
                    status, doc = exc.http, exc.body()
                except Exception as exc:  # a defect of the fake: visible in the test
                    status, doc = (
                        500,
                        {"error": {"code": 500, "status": "INTERNAL", "message": repr(exc)}},
                    )
                if isinstance(doc, Media):
                    data, extra = doc.data, doc.headers
                else:
                    data, extra = json.dumps(doc).encode(), {"Content-Type": "application/json"}
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        return Handler


def _full_role(role: str) -> str:
    legacy = {v: k for k, v in BIGQUERY_LEGACY.items()}
    return legacy.get(role, role)


def _normalise_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """An access entry as BigQuery stores and answers it: legacy data-role names, and IAM
    members written as the member field they stand for."""
    entry = json.loads(json.dumps(entry))
    if "role" in entry:
        role = _full_role(str(entry["role"]))
        entry["role"] = BIGQUERY_LEGACY.get(role, role)
    member = entry.get("iamMember")
    if isinstance(member, str):
        kind, _, value = member.partition(":")
        field_ = {"user": "userByEmail", "serviceAccount": "userByEmail",
                  "group": "groupByEmail", "domain": "domain"}.get(kind)  # fmt: skip
        if field_ is not None:
            del entry["iamMember"]
            entry[field_] = value
    return entry


def _dataset_entry(
    role: str, member: str, condition: dict[str, str] | None = None
) -> dict[str, Any]:
    entry = _normalise_entry({"role": role, "iamMember": member})
    if condition is not None:
        entry["condition"] = dict(condition)
    return entry


def _dataset_bindings(access: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The IAM bindings an access list stands for (for the permission checks)."""
    bindings = []
    for entry in access:
        members: list[str] = []
        if entry.get("userByEmail"):
            members = [f"user:{entry['userByEmail']}", f"serviceAccount:{entry['userByEmail']}"]
        elif entry.get("groupByEmail"):
            members = [f"group:{entry['groupByEmail']}"]
        elif entry.get("domain"):
            members = [f"domain:{entry['domain']}"]
        elif entry.get("iamMember"):
            members = [str(entry["iamMember"])]
        if not members or not entry.get("role"):
            continue
        binding: dict[str, Any] = {"role": _full_role(str(entry["role"])), "members": members}
        if entry.get("condition") is not None:
            binding["condition"] = entry["condition"]
        bindings.append(binding)
    return bindings


def _multipart(content_type: str, body: bytes) -> tuple[bytes, bytes]:
    """(metadata JSON, media) of a `multipart/related` upload; ApiError if it is not one."""
    import email.parser

    if not content_type.startswith("multipart/related"):
        raise ApiError(400, "INVALID_ARGUMENT", "a multipart upload needs multipart/related")
    message = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts = message.get_payload() if message.is_multipart() else []
    if not isinstance(parts, list) or len(parts) != 2:
        raise ApiError(400, "INVALID_ARGUMENT", "a multipart upload has two parts")
    metadata, media = (part.get_payload(decode=True) for part in parts)
    if parts[0].get_content_type() != "application/json":
        raise ApiError(400, "INVALID_ARGUMENT", "the first part is the JSON metadata")
    return bytes(metadata or b""), bytes(media or b"")


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


class MetadataServer:
    """The Compute Engine metadata server of one service account, as google-auth reads it on
    Cloud Run: the ping, the project id, the universe, the account, and access tokens the fake
    accepts. `requests` counts the calls by path."""

    def __init__(self, fake: FakeGcp, email: str) -> None:
        self.requests: collections.Counter[str] = collections.Counter()

        def answer(path: str) -> tuple[int, str, str]:
            route = path.split("?", 1)[0]
            with fake.lock:
                self.requests[route] += 1
            # The account answers under its alias and under its address, as Google's does (a
            # compute_engine credential asks by address once it has learnt it).
            route = route.replace(f"/service-accounts/{email}/", "/service-accounts/default/")
            if route == "/":
                return 200, "text/plain", ""
            if route == "/computeMetadata/v1/project/project-id":
                return 200, "text/plain", fake.project
            if route == "/computeMetadata/v1/universe/universe-domain":
                return 200, "text/plain", "googleapis.com"
            if route == "/computeMetadata/v1/instance/service-accounts/default/":
                doc = {"email": email, "aliases": ["default"], "scopes": [CLOUD_PLATFORM]}
                return 200, "application/json", json.dumps(doc)
            if route == "/computeMetadata/v1/instance/service-accounts/default/token":
                token = secrets.token_urlsafe(24)
                with fake.lock:
                    fake.tokens[token] = email
                doc = {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}
                return 200, "application/json", json.dumps(doc)
            return 404, "text/plain", "not found"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("Metadata-Flavor") != "Google":
                    status, kind, body = 403, "text/plain", "missing Metadata-Flavor"
                else:
                    status, kind, body = answer(self.path)
                data = body.encode()
                self.send_response(status)
                self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
