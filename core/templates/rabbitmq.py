"""RabbitMQ: one user per grant through the management HTTP API, labelled in a ledger vhost.

The user is `<prefix><grant id>`; the grant's MACed label (a compact label of `jitc.labels`) is
the exchange name of the user's one topic permission in the connector's ledger vhost. Topic
permissions are user data, freed with the user; a tag would be an Erlang atom, never freed while
the node runs, and a node that runs out of atoms stops. Only an `administrator` may create users
or set topic permissions, and no grant is given the `administrator` tag unless its permission is
privileged, so a grantee cannot write a label; the MAC keeps anyone without the connector's key
from forging one. The ledger vhost holds no queue and no exchange: a topic permission there
governs nothing. Users labelled by earlier versions carry the label as a tag: it is still read.

A grant sets per-vhost configure/write/read patterns (the requested resources are vhosts), the
tags the catalog allows, and a connection and channel limit (`user-limits`). The password is
hashed here (salted SHA-256, RabbitMQ's default scheme), so the clear password is never sent to
the server. RabbitMQ has no per-user expiry: the expiry timer and the sweep enforce it. A revoke
deletes the user, which closes its connections.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar, Literal
from urllib.parse import quote, urlsplit

from pydantic import Field, field_validator, model_validator

from jitc.errors import Refused
from jitc.labels import LabelKey, spec_digest
from jitc.models import empty_list
from jitc.secrets import Secret
from jitc.templates import userledger
from jitc.templates.base import GrantSpec, PermissionSettings, Settings, keep_connection_field
from jitc.templates.transport import is_loopback

if TYPE_CHECKING:
    from jitc.templates.rabbitmq_session import RabbitMQSession

MASK = "********"
Tag = Literal["management", "monitoring", "policymaker", "administrator"]
PRIVILEGED_TAGS = frozenset({"monitoring", "policymaker", "administrator"})

BUILTIN_PATTERNS: dict[str, tuple[str, str, str]] = {
    # (configure, write, read)
    "read-only": ("^$", "^$", ".*"),
    "read-write": ("^$", ".*", ".*"),
    "full": (".*", ".*", ".*"),
}


def _check_regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"{text!r} is not a regular expression: {exc}") from None
    return text


class Connection(Settings):
    api_url: str = Field(
        default="https://127.0.0.1:15672",
        pattern=r"^https?://[A-Za-z0-9.:\[\]-]+(:\d{1,5})?/?$",
        description="the management plugin's base URL",
    )
    user: str = Field(
        pattern=r"^[A-Za-z0-9_.@-]{1,64}$", description="the connector's administrator user"
    )
    verify_tls: bool = True
    allow_insecure_transport: bool = Field(
        default=False, description="allow http:// to a host other than loopback"
    )
    timeout: float = Field(default=5.0, gt=0, le=60)
    amqp_host: str | None = Field(default=None, description="host the grantee connects to")
    amqp_port: int = Field(default=5672, ge=1, le=65535)
    user_prefix: str = Field(default="jit-", pattern=r"^[a-z][a-z0-9_.-]{0,11}$")
    ledger_vhost: str = Field(
        default="jitc-ledger",
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$",
        description="the vhost whose topic permissions hold the labels; made when missing",
    )
    max_connections: int = Field(default=3, ge=1, le=1000)
    max_channels: int = Field(default=32, ge=1, le=65535)
    terminate_wait_seconds: float = Field(default=5.0, ge=0, le=60)
    keep_connection_seconds: float = keep_connection_field("HTTP client")

    @model_validator(mode="after")
    def _transport(self) -> Connection:
        # A catalog edit must not be able to send the admin password in the clear to any host.
        if self.plain_http and not self._loopback and not self.allow_insecure_transport:
            raise ValueError(
                "api_url: http:// sends the admin password in the clear; use https:// or set "
                "allow_insecure_transport: true"
            )
        return self

    @property
    def plain_http(self) -> bool:
        return urlsplit(self.api_url).scheme == "http"

    @property
    def _loopback(self) -> bool:
        return is_loopback(urlsplit(self.api_url).hostname or "")

    def warnings(self) -> list[str]:
        """Each relaxed setting, for `jitc catalog check`."""
        found = []
        if self.plain_http:
            where = "a loopback host" if self._loopback else "allow_insecure_transport"
            found.append(f"api_url is http:// ({where}): the admin password travels in the clear")
        if not self.verify_tls:
            found.append("verify_tls false: the API's certificate is not checked")
        return found


class Permission(PermissionSettings):
    """`resources` are virtual hosts: a request names the ones it needs."""

    template: Literal["read-only", "read-write", "full"] | None = Field(
        default=None, description="built-in configure/write/read patterns"
    )
    configure: str | None = None
    write: str | None = None
    read: str | None = None
    tags: list[Tag] = Field(default_factory=empty_list)
    privileged: bool = Field(
        default=False, description="allows monitoring/policymaker/administrator"
    )
    max_connections: int | None = Field(default=None, ge=1, le=1000)
    vhosts: dict[str, str] = Field(
        default_factory=dict,
        description="resource name -> virtual host, for names a request cannot spell (`/`)",
    )

    @field_validator("vhosts")
    @classmethod
    def _vhosts(cls, vhosts: dict[str, str]) -> dict[str, str]:
        for resource, vhost in vhosts.items():
            if not vhost or vhost in (".", "..") or any(ord(c) < 32 for c in vhost):
                raise ValueError(f"vhosts.{resource}: {vhost!r} is not a virtual host name")
        return vhosts

    def vhost(self, resource: str) -> str:
        return self.vhosts.get(resource, resource)

    @field_validator("configure", "write", "read")
    @classmethod
    def _regex(cls, text: str | None) -> str | None:
        return None if text is None else _check_regex(text)

    @model_validator(mode="after")
    def _shape(self) -> Permission:
        explicit = (self.configure, self.write, self.read)
        if self.template is not None and any(p is not None for p in explicit):
            raise ValueError("give either template or configure/write/read, not both")
        if self.template is None and any(p is None for p in explicit):
            raise ValueError("give template, or all of configure, write and read")
        strong = sorted(set(self.tags) & PRIVILEGED_TAGS)
        if strong and not self.privileged:
            raise ValueError(
                f"tags {', '.join(strong)} need a permission marked privileged "
                "(without it only management is allowed)"
            )
        return self

    def patterns(self) -> tuple[str, str, str]:
        if self.template is not None:
            return BUILTIN_PATTERNS[self.template]
        assert self.configure is not None and self.write is not None and self.read is not None
        return (self.configure, self.write, self.read)


def user_name(connection: Connection, grant_id: str) -> str:
    return userledger.user_name(connection.user_prefix, grant_id)


def tombstone_name(connection: Connection, grant_id: str) -> str:
    return userledger.tombstone_name(connection.user_prefix, grant_id)


Call = tuple[str, str, dict[str, object] | None]


def label_calls(
    connection: Connection, name: str, label: str, marked_hash: str | None
) -> list[Call]:
    """Write a label: the user first when there is a `marked_hash` (the hash of a password
    nobody knows, salted with the connector's mark: no tags, no permissions, it logs in
    nowhere), then its topic permission in the ledger vhost, which governs nothing there
    (`^$`)."""
    calls: list[Call] = []
    if marked_hash is not None:
        body: dict[str, object] = {
            "password_hash": marked_hash,
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": "",
        }
        calls.append(("PUT", f"/api/users/{name}", body))
    path = f"/api/topic-permissions/{quote(connection.ledger_vhost, safe='')}/{name}"
    calls.append(("PUT", path, {"exchange": label, "write": "^$", "read": "^$"}))
    return calls


def grant_calls(
    connection: Connection,
    spec: GrantSpec,
    label: str | None,
    password_hash: str,
    marked_hash: str | None,
) -> list[Call]:
    """The management API calls of a grant, in order: (method, path, body); `label` None when
    the user already holds it, `marked_hash` None when the user exists (`label_calls`). Names
    in paths are percent-encoded here (names are ours: prefix and grant id)."""
    permission = spec.permission
    assert isinstance(permission, Permission)
    name = user_name(connection, spec.grant_id)
    configure, write, read = permission.patterns()
    calls = [] if label is None else label_calls(connection, name, label, marked_hash)
    calls += [
        (
            "PUT",
            f"/api/users/{name}",
            {
                "password_hash": password_hash,
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ",".join(permission.tags),
            },
        ),
        (
            "PUT",
            f"/api/user-limits/{name}/max-connections",
            {"value": permission.max_connections or connection.max_connections},
        ),
        ("PUT", f"/api/user-limits/{name}/max-channels", {"value": connection.max_channels}),
    ]
    calls += [
        (
            "PUT",
            f"/api/permissions/{quote(permission.vhost(resource), safe='')}/{name}",
            {"configure": configure, "write": write, "read": read},
        )
        for resource in spec.resources
    ]
    return calls


class RabbitMQTemplate:
    kind: ClassVar[str] = "rabbitmq"
    Connection: ClassVar[type[Settings]] = Connection
    Permission: ClassVar[type[PermissionSettings]] = Permission
    uses_label_key: ClassVar[bool] = True

    def needs_secret_delivery(self, permission: PermissionSettings) -> bool:
        return True

    def check(self, connection: Settings, permission: PermissionSettings, spec: GrantSpec) -> None:
        assert isinstance(connection, Connection) and isinstance(permission, Permission)
        for index, resource in enumerate(spec.resources):
            if permission.vhost(resource) in (".", ".."):
                raise Refused(f"resources[{index}]", f"{resource!r} is not a virtual host name")
            if permission.vhost(resource) == connection.ledger_vhost:
                raise Refused(f"resources[{index}]", f"{resource!r} is the connector's ledger")

    def plan(self, connection: Settings, spec: GrantSpec) -> list[str]:
        assert isinstance(connection, Connection)
        label = f"jitc1:{spec.integration}:{spec.grant_id}:a:{int(spec.expires_at.timestamp())}:"
        label += f"{spec.permission_name}:{spec_digest(spec)}:{MASK}"
        return [
            f"{method} {path} {_show(body)}"
            for method, path, body in grant_calls(connection, spec, label, MASK, MASK)
        ]

    def open(
        self,
        integration: str,
        connection: Settings,
        secret: Secret | None,
        label_key: LabelKey | None = None,
    ) -> RabbitMQSession:
        from jitc.templates.rabbitmq_session import take

        assert isinstance(connection, Connection)
        return take(integration, connection, secret, label_key)


def _show(body: dict[str, object] | None) -> str:
    import json

    return "" if body is None else json.dumps(body, sort_keys=True)
