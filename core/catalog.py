"""The catalog: the company's own file saying what the connector may do, and for whom.

Nothing outside the catalog can be granted: a request is checked against it before any
connection is made or any secret is read.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jitc.errors import CatalogError, Refused
from jitc.models import NAME_PATTERN, AccessRequest, Duration, parse_duration, parsed_duration
from jitc.secrets import SecretRef
from jitc.templates import get_template
from jitc.templates.base import GrantSpec, PermissionSettings, Settings, Template

DEFAULT_MAX_DURATION = "8h"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ControlPlane(_Strict):
    keys: dict[str, str] = Field(
        default_factory=dict, description="key id -> Ed25519 public key (base64)"
    )
    max_skew: Duration = Field(default="5m", description="how old or early a signed request may be")
    max_message_age: Duration = Field(
        default="24h", description="how long a signed grant may wait in the queue and still run"
    )

    @field_validator("keys")
    @classmethod
    def _keys(cls, keys: dict[str, str]) -> dict[str, str]:
        for key_id, text in keys.items():
            try:
                raw = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"key {key_id!r} is not base64") from None
            if len(raw) != 32:
                raise ValueError(f"key {key_id!r} is not an Ed25519 public key (32 bytes)")
        return keys


class Connector(_Strict):
    signing_key: str | None = Field(
        default=None, description="secret reference to the connector's Ed25519 key for its events"
    )
    webhook_url: str | None = Field(default=None, pattern=r"^https?://")
    label_key: str | None = Field(
        default=None,
        description="secret reference to the key that authenticates the labels written in targets",
    )

    @property
    def label_key_ref(self) -> SecretRef | None:
        return SecretRef(self.label_key) if self.label_key else None

    def own_secrets(self) -> set[tuple[str, str]]:
        """The connector's own keys, as (scheme, location): never an integration's credential."""
        refs = (SecretRef(text) for text in (self.signing_key, self.label_key) if text)
        return {(ref.scheme, ref.location) for ref in refs}


class _RawIntegration(_Strict):
    kind: str
    description: str = ""
    connection: dict[str, Any] = Field(default_factory=dict)
    credentials: str | None = None
    max_duration: Duration = DEFAULT_MAX_DURATION
    permissions: dict[str, dict[str, Any]]


class _RawCatalog(_Strict):
    version: int = 1
    control_plane: ControlPlane = Field(default_factory=ControlPlane)
    connector: Connector = Field(default_factory=Connector)
    integrations: dict[str, _RawIntegration]


class Integration(NamedTuple):  # not a frozen dataclass: see jitc.gcp.handlers.HttpRequest
    name: str
    kind: str
    description: str
    connection: Settings
    credentials: SecretRef | None
    max_duration: timedelta
    permissions: dict[str, PermissionSettings]
    max_duration_text: str = ""  # as the catalog wrote it, for people

    @property
    def template(self) -> Template:
        return get_template(self.kind)


class Catalog(NamedTuple):  # not a frozen dataclass: see jitc.gcp.handlers.HttpRequest
    control_plane: ControlPlane
    connector: Connector
    integrations: dict[str, Integration]

    def integration(self, name: str) -> Integration:
        try:
            return self.integrations[name]
        except KeyError:
            raise Refused("integration", f"integration {name!r} is not in the catalog") from None

    def check_grant(
        self, request: AccessRequest, issued_at: datetime, now: datetime, plain: bool = False
    ) -> GrantSpec:
        """Everything a grant must satisfy before anything is touched; raises Refused.

        `plain` is the local operator asking for credentials in the clear (CLI only): then the
        identity needs no public key.
        """
        # A signature time ahead of our clock (within the allowed skew) must not lengthen access.
        issued_at = min(issued_at, now)
        integration = self.integration(request.integration)
        assert request.permission is not None and request.identity is not None
        permission = integration.permissions.get(request.permission)
        if permission is None:
            raise Refused(
                "permission",
                f"permission {request.permission!r} is not offered by {integration.name!r}",
            )
        allowed = set(permission.resources)
        for index, resource in enumerate(request.resources):
            if resource not in allowed:
                raise Refused(
                    f"resources[{index}]",
                    f"resource {resource!r} is not allowed for permission {request.permission!r}",
                )
        if len(set(request.resources)) != len(request.resources):
            raise Refused("resources", "resources must not repeat")
        expires_at = request.expiry(issued_at)
        field = "duration" if request.duration is not None else "expires_at"
        if expires_at <= now:
            raise Refused(field, "the access would already have expired")
        limit = integration.max_duration
        if permission.max_duration is not None:
            limit = min(limit, parsed_duration(permission.max_duration))
        if expires_at - issued_at > limit + timedelta(seconds=1):
            raise Refused(
                field, f"longer than the {int(limit.total_seconds())} s this permission allows"
            )
        if (
            integration.template.needs_secret_delivery(permission)
            and request.identity.public_key is None
            and not plain
        ):
            raise Refused(
                "identity.public_key",
                "this permission generates credentials, which are only delivered sealed "
                "to the identity's public key",
            )
        spec = GrantSpec(
            grant_id=request.target_grant_id,
            request_id=request.request_id,
            integration=integration.name,
            permission_name=request.permission,
            permission=permission,
            resources=tuple(request.resources),
            identity=request.identity,
            expires_at=expires_at,
            request_digest=request.digest,
        )
        integration.template.check(integration.connection, permission, spec)
        return spec


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _errors(exc: ValidationError, prefix: str) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        if len(loc) > 2 and loc[0] == "integrations":
            parts.append(f"integration {loc[1]!r}: {prefix}{_where(loc[2:])}: {err['msg']}")
        else:
            parts.append(f"{prefix}{_where(loc)}: {err['msg']}")
    return "; ".join(parts)


def _own_secret(connector: Connector, ref: SecretRef) -> bool:
    try:
        return (ref.scheme, ref.location) in connector.own_secrets()
    except ValueError:
        return False


# Secret schemes some store of this project resolves; another is most likely a typo.
KNOWN_SECRET_SCHEMES = ("env", "file", "aws-sm", "gcp-sm")


def catalog_warnings(catalog: Catalog) -> list[str]:
    """What a reviewer should look at twice: allowed, but weaker than the defaults
    (`jitc catalog check` prints them)."""
    found = []
    if not catalog.control_plane.keys:
        found.append("control_plane.keys is empty: no request can be accepted over HTTP")
    refs: list[tuple[str, object]] = [
        (f"integration {i.name!r}: credentials", i.credentials)
        for i in catalog.integrations.values()
    ]
    refs += [
        ("connector.signing_key", catalog.connector.signing_key),
        ("connector.label_key", catalog.connector.label_key),
    ]
    for where, ref in refs:
        scheme = str(ref).partition(":")[0] if ref else None
        if scheme and scheme not in KNOWN_SECRET_SCHEMES:
            found.append(
                f"{where}: secret scheme {scheme!r} is not one of {', '.join(KNOWN_SECRET_SCHEMES)}"
            )
    for name, integration in catalog.integrations.items():
        relaxed = getattr(integration.connection, "warnings", None)
        for text in relaxed() if relaxed is not None else []:
            found.append(f"integration {name!r}: {text}")
    return found


def parse_catalog(doc: Any, source: str = "catalog") -> Catalog:
    """Validate a catalog document; errors name the integration and the field."""
    try:
        raw = _RawCatalog.model_validate(doc)
    except ValidationError as exc:
        raise CatalogError(f"{source}: {_errors(exc, '')}") from None
    integrations: dict[str, Integration] = {}
    for name, item in raw.integrations.items():
        where = f"{source}: integration {name!r}"
        if not re.match(NAME_PATTERN, name):
            raise CatalogError(f"{where}: name must match {NAME_PATTERN}")
        try:
            template = get_template(item.kind)
        except KeyError as exc:
            raise CatalogError(f"{where}: kind: {exc.args[0]}") from None
        try:
            connection = template.Connection.model_validate(item.connection)
        except ValidationError as exc:
            raise CatalogError(f"{where}: {_errors(exc, 'connection.')}") from None
        permissions: dict[str, PermissionSettings] = {}
        for pname, pdoc in item.permissions.items():
            if not re.match(NAME_PATTERN, pname):
                raise CatalogError(f"{where}: permissions.{pname}: name must match {NAME_PATTERN}")
            try:
                permissions[pname] = template.Permission.model_validate(pdoc)
            except ValidationError as exc:
                raise CatalogError(f"{where}: {_errors(exc, f'permissions.{pname}.')}") from None
        # A template that acts only on what its permissions name is told them here.
        scope = getattr(template, "scope", None)
        if scope is not None:
            connection = scope(connection, permissions)
        try:
            credentials = SecretRef(item.credentials) if item.credentials else None
        except ValueError as exc:
            raise CatalogError(f"{where}: credentials: {exc}") from None
        if credentials is not None and _own_secret(raw.connector, credentials):
            raise CatalogError(
                f"{where}: credentials: {credentials} is one of the connector's own keys; "
                "it is never sent to a target"
            )
        if getattr(template, "uses_label_key", False) and not raw.connector.label_key:
            raise CatalogError(
                f"{where}: connector.label_key is required: kind {item.kind!r} writes labels "
                "in the target that, without a secret key, anyone who can write there could forge"
            )
        integrations[name] = Integration(
            name=name,
            kind=item.kind,
            description=item.description,
            connection=connection,
            credentials=credentials,
            max_duration=parse_duration(item.max_duration),
            permissions=permissions,
            max_duration_text=item.max_duration,
        )
    return Catalog(raw.control_plane, raw.connector, integrations)


def _yaml() -> Any:
    # Imported when a YAML file is read, not with the catalog: the Lambda functions get the
    # catalog as JSON and skip PyYAML's import (~60 ms of each cold start).
    import yaml

    return yaml


def load_catalog(path: str | Path) -> Catalog:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        doc = _yaml().safe_load(text)
    except _yaml().YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from None
    return parse_catalog(doc, str(path))
