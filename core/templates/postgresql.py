"""PostgreSQL: ephemeral login roles that are members of a per-permission bundle role, or
labelled membership of an existing group role.

A grant is one `CREATE ROLE ... IN ROLE bundle` plus its label: the privileges live on a bundle
role, made once per permission, resource and version of its statements, so no table's ACL grows
with the number of grants. Every role the connector creates carries a MACed label (jitc.labels),
so the server itself is the ledger and nobody else's comment can steer a revoke or a sweep.
Identifiers and literals from requests are bound with psycopg's `sql` composition; the catalog
may override statement text, whose placeholders are checked when the catalog loads.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import re
import ssl
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from jitc.errors import Refused
from jitc.models import empty_list
from jitc.secrets import Secret
from jitc.templates.base import GrantSpec, PermissionSettings, Settings, keep_connection_field
from jitc.templates.statements import check_placeholders

PLACEHOLDERS = frozenset({"role", "database", "schema", "resource"})
MASK = "'********'"
_GUC_VALUE = r"^\d{1,9}(ms|s|min|h|d)?$"
_WEAK_SSL = frozenset({"disable", "allow", "prefer", "require"})
# A CA bundle inline in the catalog: a regional bundle (RDS) is a few certificates; a catalog is
# no place for a whole trust store.
PEM_LIMIT = 16 * 1024
# Trailing blanks only, never a newline: `\s*$` would backtrack over every blank line.
_PEM_LABEL = re.compile(r"^-----BEGIN ([^-\r\n]*)-----[ \t\r]*$", re.MULTILINE)
_PEM_CERTIFICATE = re.compile(
    r"^-----BEGIN CERTIFICATE-----[ \t\r]*$(.*?)^-----END CERTIFICATE-----[ \t\r]*$",
    re.MULTILINE | re.DOTALL,
)

# Bundle statements: privileges a bundle role holds for every member. Never CREATE: a member
# could `SET ROLE` the bundle and make objects that outlive every grant (PostgreSQL < 16).
# Never TRIGGER or REFERENCES: a trigger on a table the grantee does not own runs as whoever
# writes to that table, and outlives the grant if its function cannot be dropped.
BUILTIN_STATEMENTS: dict[str, tuple[str, ...]] = {
    "read-only": (
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
        "GRANT SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
    ),
    "read-write": (
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
        "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
    ),
    "owner": (
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA {schema} TO {role}",
        "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
        "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {role}",
    ),
}
# Granted to the grantee's own role, never to a bundle (see above); what it creates is its own
# and is dropped at revoke.
USER_STATEMENTS: dict[str, tuple[str, ...]] = {
    "owner": ("GRANT CREATE ON SCHEMA {schema} TO {role}",),
}
# Groups that hand out more than data access; the catalog may add to them.
DENIED_GROUPS = frozenset(
    {
        "pg_read_all_data",
        "pg_write_all_data",
        "pg_read_server_files",
        "pg_write_server_files",
        "pg_execute_server_program",
        "pg_signal_backend",
        "pg_checkpoint",
        "pg_create_subscription",
        "pg_use_reserved_connections",
        "pg_database_owner",
        "pg_monitor",
        "pg_read_all_settings",
        "pg_read_all_stats",
        "pg_stat_scan_tables",
    }
)


if TYPE_CHECKING:
    # The label key is only named in open()'s signature: jitc.labels is imported with the
    # session, not when the catalog is read (the intake reads it and never opens one).
    from jitc.labels import LabelKey
    from jitc.templates.postgresql_session import PostgreSQLSession


def is_loopback(host: str) -> bool:
    """A Unix socket or this machine's loopback address: no network carries the password."""
    if host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host) in (
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address("::1"),
        )
    except ValueError:
        return False


def check_ca_pem(text: str) -> str:
    """The certificates of `text`, one or more X.509 certificates in PEM, written out again
    from what was checked: libpq is never handed the text itself, whose comments OpenSSL may
    read otherwise than this check (a block past a line's 254th character, or after a control
    character, is a certificate to OpenSSL). Anything that is not plainly certificates and
    comments is refused: a private key pasted along would be published with the catalog."""
    if len(text.encode()) > PEM_LIMIT:
        raise ValueError(f"is larger than {PEM_LIMIT // 1024} KiB")
    if not text.isascii() or any(c < " " and c not in "\t\r\n" for c in text):
        raise ValueError("must be PEM text (printable ASCII)")
    labels = _PEM_LABEL.findall(text)
    if not labels:
        raise ValueError("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    others = sorted(set(labels) - {"CERTIFICATE"})
    if others:
        raise ValueError(f"may hold certificates only, not {', '.join(others)}")
    bodies = _PEM_CERTIFICATE.findall(text)
    if len(bodies) != len(labels):
        raise ValueError("has a certificate without its -----END CERTIFICATE----- line")
    if text.count("-----") != 4 * len(bodies):
        # Every "-----" belongs to a BEGIN or END line of its own: none hides in a comment.
        raise ValueError("has a BEGIN or END of a PEM block that is not on a line of its own")
    ders = []
    for number, body in enumerate(bodies, 1):
        try:
            der = base64.b64decode("".join(body.split()), validate=True)
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=der)
        except (ValueError, ssl.SSLError):
            raise ValueError(f"certificate {number} is not an X.509 certificate") from None
        ders.append(der)
    return "".join(ssl.DER_cert_to_PEM_cert(der) for der in ders)


class Connection(Settings):
    host: str = "127.0.0.1"
    port: int = Field(default=5432, ge=1, le=65535)
    dbname: str
    user: str = Field(description="the connector's admin role")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = (
        Field(default=None, description="default: verify-full, or disable on a loopback host")
    )
    sslrootcert: str | None = Field(default=None, description="CA file, or 'system'")
    sslrootcert_pem: str | None = Field(
        default=None,
        description="the CA certificate(s) the server's chains to, in PEM, inline (instead of "
        "sslrootcert: for a platform where no file can be placed and a CA 'system' lacks)",
    )
    require_auth: Literal["scram-sha-256", "none"] | None = Field(
        default=None, description="default: scram-sha-256, or any on a loopback host"
    )
    channel_binding: Literal["disable", "prefer", "require"] | None = Field(
        default=None, description="default: require when TLS and SCRAM are required"
    )
    allow_insecure_transport: bool = Field(
        default=False, description="allow an sslmode weaker than verify-ca off loopback"
    )
    allow_public_create: bool = Field(
        default=False,
        description="PostgreSQL 15 and older: grant even while PUBLIC may CREATE in a schema or "
        "the database, where a grantee could make objects owned by a shared bundle role",
    )
    connect_timeout: int = Field(default=5, ge=1, le=60)
    login_host: str | None = Field(default=None, description="host the grantee connects to")
    role_prefix: str = Field(default="jit_", pattern=r"^[a-z][a-z0-9_]{0,11}$")
    connection_limit: int = Field(default=3, ge=1, le=100)
    statement_timeout: str | None = Field(default=None, pattern=_GUC_VALUE)
    idle_in_transaction_session_timeout: str | None = Field(default=None, pattern=_GUC_VALUE)
    idle_session_timeout: str | None = Field(default=None, pattern=_GUC_VALUE)
    terminate_wait_seconds: float = Field(default=5.0, ge=0, le=60)
    admin_lock_timeout: str = Field(default="5s", pattern=_GUC_VALUE)
    admin_statement_timeout: str = Field(default="120s", pattern=_GUC_VALUE)
    keep_connection_seconds: float = keep_connection_field()
    schema_check_seconds: float = Field(
        default=5,
        ge=0,
        le=3600,
        description="how long a schema's fingerprint (which brings a bundle up to date for "
        "tables created since) is reused by the sessions of one process",
    )
    public_create_check_seconds: float = Field(
        default=300,
        ge=0,
        le=86400,
        description="how long a check that PUBLIC may not CREATE in any reachable database "
        "is reused (PostgreSQL 15 and older)",
    )
    bundle_grace_seconds: int = Field(
        default=600,
        ge=0,
        le=86400,
        description="the sweep leaves a bundle no grant uses alone this long after it was made "
        "or refreshed: the grant that made it joins it just after",
    )
    denied_groups: list[str] = Field(
        default_factory=empty_list, description="groups never handed out, besides the built-in list"
    )

    @field_validator("host", "login_host")
    @classmethod
    def _one_host(cls, value: str | None) -> str | None:
        # libpq reads a comma-separated list as several hosts and tries each in turn: one
        # loopback entry would make the whole list look local and relax TLS and SCRAM for all.
        if value is not None and (not value or any(c in value for c in ", \t\n\r=")):
            raise ValueError("host must be a single host name, address or socket directory")
        return value

    @field_validator("sslrootcert_pem")
    @classmethod
    def _ca_certificates(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if info.data.get("sslrootcert") is not None:
            raise ValueError(
                "sslrootcert_pem and sslrootcert are exclusive: give the CA inline or as a file"
            )
        return check_ca_pem(value)

    @model_validator(mode="after")
    def _transport(self) -> Connection:
        if self.sslmode in _WEAK_SSL and not (
            is_loopback(self.host) or self.allow_insecure_transport
        ):
            raise ValueError(
                f"sslmode {self.sslmode!r} lets a network attacker read or relay the admin "
                "session; use verify-full, or set allow_insecure_transport: true"
            )
        if self.sslrootcert == "system" and self.effective_sslmode != "verify-full":
            # Any public CA signs for anyone's name: without the name checked, whoever holds
            # any certificate could stand in for the server (libpq refuses it too).
            raise ValueError("sslrootcert 'system' needs sslmode verify-full")
        return self

    @property
    def effective_sslmode(self) -> str:
        return self.sslmode or ("disable" if is_loopback(self.host) else "verify-full")

    @property
    def effective_require_auth(self) -> str | None:
        if self.require_auth is not None:
            return None if self.require_auth == "none" else self.require_auth
        return None if is_loopback(self.host) else "scram-sha-256"

    @property
    def effective_channel_binding(self) -> str | None:
        if self.channel_binding is not None:
            return self.channel_binding
        tls = self.effective_sslmode in ("require", "verify-ca", "verify-full")
        return "require" if tls and self.effective_require_auth == "scram-sha-256" else None

    def session_settings(self) -> dict[str, str]:
        """Per-role settings, only those the catalog asks for: each costs at drop time, and a
        grantee can change its own (`ALTER ROLE self SET ...`), so they are a default, not a
        control."""
        names = ("statement_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout")
        return {name: value for name in names if (value := getattr(self, name)) is not None}

    def warnings(self) -> list[str]:
        """Each relaxed setting, for `jitc catalog check`."""
        found = []
        if self.effective_sslmode in _WEAK_SSL:
            where = "a loopback host" if is_loopback(self.host) else "allow_insecure_transport"
            found.append(f"sslmode {self.effective_sslmode} ({where}): TLS is not verified")
        if self.effective_require_auth is None and not is_loopback(self.host):
            found.append("require_auth none: the admin password may be sent in the clear")
        if self.channel_binding in ("disable", "prefer") and self.effective_sslmode != "disable":
            found.append(f"channel_binding {self.channel_binding}: SCRAM can be relayed")
        if self.allow_public_create:
            found.append(
                "allow_public_create: on PostgreSQL 15 and older a grantee can make objects "
                "as its bundle where PUBLIC may CREATE"
            )
        if self.session_settings():
            found.append(
                "per-role settings are set, but a grantee can change its own: not a control"
            )
        pinned = self.sslrootcert is not None or self.sslrootcert_pem is not None
        if self.effective_sslmode == "verify-ca":
            found.append(
                "sslmode verify-ca: the server's name is not checked, so any server with a "
                "certificate from the same CA passes"
            )
        elif pinned and self.effective_sslmode not in ("verify-full", "verify-ca"):
            found.append(f"sslmode {self.effective_sslmode}: the CA given is not used")
        if not pinned and self.effective_sslmode in ("verify-full", "verify-ca"):
            found.append(
                f"sslmode {self.effective_sslmode} names no CA: libpq looks for "
                "~/.postgresql/root.crt, which no function has; set sslrootcert_pem (the "
                "provider's CA bundle) or sslrootcert: system"
            )
        return found


class Permission(PermissionSettings):
    mode: Literal["ephemeral", "membership"] = "ephemeral"
    template: Literal["read-only", "read-write", "owner"] | None = Field(
        default=None, description="built-in statements (ephemeral mode)"
    )
    statements: list[str] | None = Field(
        default=None,
        description="statement text with placeholders {role} {database} {schema} {resource}, "
        "run once per requested resource on the permission's bundle role (ephemeral mode)",
    )
    terminate_sessions: bool = Field(
        default=True, description="membership mode: end the member's sessions at revoke"
    )

    @field_validator("statements")
    @classmethod
    def _placeholders(cls, statements: list[str] | None) -> list[str] | None:
        return check_placeholders(statements, PLACEHOLDERS, "role")

    @model_validator(mode="after")
    def _mode(self) -> Permission:
        if self.mode == "ephemeral" and (self.template is None) == (self.statements is None):
            raise ValueError("ephemeral mode needs exactly one of template or statements")
        if self.mode == "membership" and (self.template is not None or self.statements):
            raise ValueError(
                "membership mode grants the group roles listed in resources; it takes no statements"
            )
        return self

    def statement_texts(self) -> tuple[str, ...]:
        if self.statements is not None:
            return tuple(self.statements)
        assert self.template is not None
        return BUILTIN_STATEMENTS[self.template]

    def user_statement_texts(self) -> tuple[str, ...]:
        return USER_STATEMENTS.get(self.template or "", ())


def _b32(data: bytes, length: int) -> str:
    return base64.b32encode(data).decode().lower()[:length]


def role_name(connection: Connection, grant_id: str) -> str:
    """One name per grant id, whatever the request says: a second role for one grant cannot
    exist, and a revoke that arrives first takes the name for its tombstone, so the server's
    unique index orders a grant and a revoke of one grant without any lock of ours."""
    return f"{connection.role_prefix}{grant_id[1:]}"


def bundle_name(
    connection: Connection,
    integration: str,
    permission_name: str,
    resource: str,
    texts: tuple[str, ...],
) -> str:
    """The bundle of one permission version: edited statements make a new bundle."""
    return _bundle_name(
        connection.role_prefix, connection.dbname, integration, permission_name, resource, texts
    )


@functools.lru_cache(maxsize=1024)
def _bundle_name(
    prefix: str,
    dbname: str,
    integration: str,
    permission_name: str,
    resource: str,
    texts: tuple[str, ...],
) -> str:
    # A pure function of catalog values, asked several times per grant: hashed once.
    source = "\0".join((integration, dbname, permission_name, resource, *texts))
    return f"{prefix}b_{_b32(hashlib.sha256(source.encode()).digest(), 24)}"


def member_name(spec: GrantSpec) -> str:
    if spec.identity.username is None:
        raise Refused("identity.username", "membership mode needs the identity's login role")
    return spec.identity.username


class PostgreSQLTemplate:
    kind: ClassVar[str] = "postgresql"
    Connection: ClassVar[type[Settings]] = Connection
    Permission: ClassVar[type[PermissionSettings]] = Permission
    uses_label_key: ClassVar[bool] = True

    def needs_secret_delivery(self, permission: PermissionSettings) -> bool:
        assert isinstance(permission, Permission)
        return permission.mode == "ephemeral"

    def check(self, connection: Settings, permission: PermissionSettings, spec: GrantSpec) -> None:
        assert isinstance(permission, Permission)
        if permission.mode == "membership":
            member_name(spec)

    def plan(self, connection: Settings, spec: GrantSpec) -> list[str]:
        assert isinstance(connection, Connection)
        from jitc.templates.postgresql_session import plan_statements

        return plan_statements(connection, spec)

    def open(
        self,
        integration: str,
        connection: Settings,
        secret: Secret | None,
        label_key: LabelKey,
    ) -> PostgreSQLSession:
        from jitc.templates.postgresql_pool import take

        assert isinstance(connection, Connection)
        return take(integration, connection, secret, label_key)
