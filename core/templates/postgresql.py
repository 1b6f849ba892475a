"""PostgreSQL: ephemeral login roles, or labelled membership of an existing group role.

Every role the connector creates carries a comment `jitc:{...}` with the grant id, the expiry and
all a revoke needs, so the server itself is the ledger. Identifiers and literals from requests
are bound with psycopg's `sql` composition; the catalog may override statement text, whose
placeholders are checked when the catalog loads.
"""

from __future__ import annotations

import re
import string
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from jitc.errors import Refused
from jitc.secrets import Secret
from jitc.templates.base import GrantSpec, PermissionSettings, Settings

PLACEHOLDERS = frozenset({"role", "database", "schema", "resource"})
MASK = "'********'"
_GUC_VALUE = r"^\d{1,9}(ms|s|min|h|d)?$"
# Concurrent GRANTs on one object fail with "tuple concurrently updated": every transaction of
# ours that changes privileges takes this cluster-wide lock first, so parallel workers queue.
ACL_LOCK_KEY = 0x6A697463_61636C  # "jitcacl"

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
        "GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}",
        "GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA {schema} TO {role}",
        "GRANT ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
        "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {role}",
    ),
}


if TYPE_CHECKING:
    from jitc.templates.postgresql_session import PostgreSQLSession


class Connection(Settings):
    host: str = "127.0.0.1"
    port: int = Field(default=5432, ge=1, le=65535)
    dbname: str
    user: str = Field(description="the connector's admin role")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    connect_timeout: int = Field(default=5, ge=1, le=60)
    login_host: str | None = Field(default=None, description="host the grantee connects to")
    role_prefix: str = Field(default="jit_", pattern=r"^[a-z][a-z0-9_]{0,11}$")
    connection_limit: int = Field(default=3, ge=1, le=100)
    statement_timeout: str = Field(default="15min", pattern=_GUC_VALUE)
    idle_in_transaction_session_timeout: str = Field(default="5min", pattern=_GUC_VALUE)
    idle_session_timeout: str = Field(default="30min", pattern=_GUC_VALUE)
    terminate_wait_seconds: float = Field(default=5.0, ge=0, le=60)


class Permission(PermissionSettings):
    mode: Literal["ephemeral", "membership"] = "ephemeral"
    template: Literal["read-only", "read-write", "owner"] | None = Field(
        default=None, description="built-in statements (ephemeral mode)"
    )
    statements: list[str] | None = Field(
        default=None,
        description="statement text with placeholders {role} {database} {schema} {resource}, "
        "run once per requested resource (ephemeral mode)",
    )
    terminate_sessions: bool = Field(
        default=True, description="membership mode: end the member's sessions at revoke"
    )

    @field_validator("statements")
    @classmethod
    def _placeholders(cls, statements: list[str] | None) -> list[str] | None:
        for index, text in enumerate(statements or []):
            for _, name, spec, conversion in string.Formatter().parse(text):
                if name is None:
                    continue
                if name not in PLACEHOLDERS or spec or conversion:
                    raise ValueError(
                        f"statement {index}: unknown placeholder {{{name}}} "
                        f"(allowed: {', '.join(sorted('{' + p + '}' for p in PLACEHOLDERS))})"
                    )
            if "{role}" not in text:
                raise ValueError(f"statement {index}: must name {{role}}")
        return statements

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


def _username_hint(spec: GrantSpec) -> str:
    source = spec.identity.username or spec.identity.email.split("@", 1)[0]
    return re.sub(r"[^a-z0-9_]", "_", source.lower())[:20]


def role_name(connection: Connection, spec: GrantSpec) -> str:
    """Deterministic per grant, so a redelivered grant finds the role it already made."""
    if spec.permission.mode == "membership":  # type: ignore[attr-defined]
        return f"{connection.role_prefix}m_{spec.grant_id[1:13]}"
    return f"{connection.role_prefix}{_username_hint(spec)}_{spec.grant_id[1:11]}"


def tombstone_name(connection: Connection, grant_id: str) -> str:
    return f"{connection.role_prefix}x_{grant_id[1:]}"


def member_name(spec: GrantSpec) -> str:
    if spec.identity.username is None:
        raise Refused("identity.username", "membership mode needs the identity's login role")
    return spec.identity.username


def label_extra(spec: GrantSpec) -> dict[str, Any]:
    permission = spec.permission
    assert isinstance(permission, Permission)
    if permission.mode == "membership":
        return {
            "member": member_name(spec),
            "groups": list(spec.resources),
            "terminate_sessions": permission.terminate_sessions,
        }
    return {}


class PostgreSQLTemplate:
    kind: ClassVar[str] = "postgresql"
    Connection: ClassVar[type[Settings]] = Connection
    Permission: ClassVar[type[PermissionSettings]] = Permission

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
        self, integration: str, connection: Settings, secret: Secret | None
    ) -> PostgreSQLSession:
        from jitc.templates.postgresql_session import PostgreSQLSession

        assert isinstance(connection, Connection)
        return PostgreSQLSession(integration, connection, secret)
