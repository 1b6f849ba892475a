"""MySQL and MariaDB: an ephemeral account `'name'@'host'` per grant.

MariaDB has no per-user comment or attribute, so the ledger is a table the connector owns
(`<ledger_database>.grants`, default `jitc_ledger`), in a database that no grant can reach: the
catalog refuses it, and the system databases, as a resource. A row there is the grant's label;
an account is acted on only when a row names it *and* its name is the one derived from that
row's grant id, so a row pointing at someone else's account is ignored.

Expiry is enforced by the server itself where it can be: every grant also creates a one-shot
`CREATE EVENT ... ON SCHEDULE AT <expiry>` that locks the account and kills its connections,
which runs even when the connector is down, provided the server's `event_scheduler` is ON.

Identifiers are quoted with backticks (doubled inside), literals with the driver's escaping,
and every value is first checked against a narrow pattern, so neither can leave its quotes.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, ClassVar, Literal, NamedTuple

from pydantic import Field, field_validator, model_validator

from jitc import labels
from jitc.errors import Refused
from jitc.labels import LabelKey
from jitc.secrets import Secret
from jitc.templates.base import GrantSpec, PermissionSettings, Settings
from jitc.templates.statements import check_placeholders

if TYPE_CHECKING:
    from jitc.templates.mysql_session import MySQLSession

PLACEHOLDERS = frozenset({"user", "object", "database", "table"})
MASK = "'********'"
SYSTEM_DATABASES = frozenset({"mysql", "information_schema", "performance_schema", "sys"})
_NAME = r"[A-Za-z0-9_$]{1,64}"
RESOURCE_PATTERN = re.compile(rf"^({_NAME})(?:\.({_NAME}))?$")
HOST_PATTERN = r"^[A-Za-z0-9.%_:-]{1,60}$"

# What a statement may give without `privileged: true`: privileges on the resource's own
# objects. Left out: the grant option, ALL, global and admin privileges, PROXY, roles, and the
# objects that outlive the grant and run as their definer (routines, events, triggers).
PLAIN_PRIVILEGES = frozenset(
    {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "SHOW VIEW",
        "CREATE",
        "DROP",
        "ALTER",
        "INDEX",
        "CREATE VIEW",
        "REFERENCES",
        "CREATE TEMPORARY TABLES",
        "LOCK TABLES",
        "DELETE HISTORY",
        "EXECUTE",
    }
)
_PLAIN_GRANT = re.compile(
    r"GRANT\s+(?P<privileges>[A-Za-z ,()_$]+?)\s+ON\s+(?:TABLE\s+)?"
    r"(?:\{object\}|\{database\}\.\{table\})\s+TO\s+\{user\}\s*;?",
    re.IGNORECASE,
)
_COLUMNS = re.compile(r"\(\s*[A-Za-z0-9_$]+(?:\s*,\s*[A-Za-z0-9_$]+)*\s*\)")

BUILTIN_STATEMENTS: dict[str, tuple[str, ...]] = {
    "read-only": ("GRANT SELECT, SHOW VIEW ON {object} TO {user}",),
    "read-write": ("GRANT SELECT, INSERT, UPDATE, DELETE, SHOW VIEW ON {object} TO {user}",),
}


class Connection(Settings):
    host: str = "127.0.0.1"
    port: int = Field(default=3306, ge=1, le=65535)
    user: str = Field(description="the connector's admin account", pattern=r"^[A-Za-z0-9_.@-]+$")
    ssl: bool = Field(
        default=False,
        description="require TLS to the server, its certificate verified and its name checked",
    )
    ssl_ca: str | None = Field(
        default=None, description="CA bundle (PEM file) to verify it with; default: the system's"
    )
    connect_timeout: int = Field(default=5, ge=1, le=60)
    login_host: str | None = Field(default=None, description="host the grantee connects to")
    user_host: str = Field(
        default="%", pattern=HOST_PATTERN, description="host part of every account made"
    )
    user_prefix: str = Field(default="jit_", pattern=r"^[a-z][a-z0-9_]{0,11}$")
    ledger_database: str = Field(default="jitc_ledger", pattern=r"^[a-z][a-z0-9_]{0,47}$")
    connection_limit: int = Field(default=3, ge=1, le=100)
    expiry_event: Literal["required", "if-available", "off"] = Field(
        default="if-available",
        description="the server-side expiry event: 'required' refuses a grant while the "
        "server's event_scheduler is OFF; 'if-available' creates it anyway (it fires once the "
        "scheduler runs); 'off' leaves expiry to the connector's scheduler and sweep",
    )
    lock_wait_seconds: int = Field(default=10, ge=1, le=120)
    kill_wait_seconds: float = Field(default=5.0, ge=0, le=60)

    @field_validator("user_host")
    @classmethod
    def _lower_host(cls, host: str) -> str:
        # The server keeps an account's host in lower case: an account looked for as written
        # here would never be found.
        return host.lower()

    def warnings(self) -> list[str]:
        """Each relaxed setting, for `jitc catalog check`."""
        if self.expiry_event == "if-available":
            return [
                "expiry_event if-available: while the server's event_scheduler is OFF, grants "
                "are made and only the connector's revoke ends them (set 'required' to refuse)"
            ]
        if self.expiry_event == "off":
            return ["expiry_event off: only the connector's revoke ends a grant"]
        return []


class Permission(PermissionSettings):
    mode: Literal["ephemeral", "membership"] = Field(
        default="ephemeral",
        description="ephemeral: a new account per grant; membership: the identity's existing "
        "account gets the roles named in resources (MariaDB roles)",
    )
    template: Literal["read-only", "read-write"] | None = Field(
        default=None, description="built-in statements (ephemeral mode)"
    )
    statements: list[str] | None = Field(
        default=None,
        description="statement text with placeholders {user} {object} {database} {table}, "
        "run once per requested resource (ephemeral mode)",
    )
    terminate_sessions: bool = Field(
        default=True, description="membership mode: end the member's connections at revoke"
    )
    privileged: bool = Field(
        default=False,
        description="allow statements beyond `GRANT <object privileges> ON {object} TO {user}`: "
        "ALL, global, admin and PROXY privileges, roles, routines, events, triggers, and any "
        "other statement; a grant whose account then reaches account administration (CREATE "
        "USER, writes on the mysql grant tables, SUPER or SET USER, BINLOG REPLAY, REPLICATION "
        "SLAVE ADMIN, CONNECTION ADMIN, the grant option, a role's ADMIN OPTION) is still "
        "refused",
    )

    @field_validator("statements")
    @classmethod
    def _placeholders(cls, statements: list[str] | None) -> list[str] | None:
        for index, text in enumerate(check_placeholders(statements, PLACEHOLDERS, "user") or []):
            if "{database}.*" in text.replace("`", ""):
                # At database level `_` and `%` are wildcards: {object} escapes them.
                raise ValueError(f"statement {index}: write {{object}}, not {{database}}.*")
            if text.count("{database}") != text.count("{database}.{table}"):
                # Anything else after it (spaces, a comment, then `.*`) could make a
                # database-level grant of the unescaped name, whose `_` is a wildcard.
                raise ValueError(
                    f"statement {index}: {{database}} only as {{database}}.{{table}}; "
                    "write {object} for a database"
                )
        return statements

    @model_validator(mode="after")
    def _one_source(self) -> Permission:
        if self.mode == "membership":
            if self.template is not None or self.statements is not None:
                raise ValueError("membership mode grants the roles in resources; no statements")
            for index, role in enumerate(self.resources):
                check_role(role, f"resource {index}")
            return self
        if (self.template is None) == (self.statements is None):
            raise ValueError("needs exactly one of template or statements")
        if not self.privileged:
            for index, text in enumerate(self.statements or []):
                screen_statement(text, f"statement {index}")
        for index, resource in enumerate(self.resources):
            _, table = check_resource(resource, f"resource {index}")
            # `{database}.{table}` of a database would be `db`.*, whose `_` is a wildcard.
            if table is None and any("{table}" in text for text in self.statements or []):
                raise ValueError(f"resource {index}: {{table}} needs `database.table` resources")
        return self

    def statement_texts(self) -> tuple[str, ...]:
        if self.statements is not None:
            return tuple(self.statements)
        assert self.template is not None
        return BUILTIN_STATEMENTS[self.template]


def screen_statement(text: str, where: str) -> None:
    """Refuse a statement that is not one plain grant of object privileges on the resource; a
    grantee given more could pass it on, or keep it past the revoke."""
    match = _PLAIN_GRANT.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"{where}: only `GRANT <privileges> ON {{object}} TO {{user}}` (or "
            "{database}.{table}) without `privileged: true`"
        )
    privileges = _COLUMNS.sub("", match.group("privileges"))
    for privilege in privileges.split(","):
        words = " ".join(privilege.upper().split())
        if words not in PLAIN_PRIVILEGES:
            raise ValueError(f"{where}: privilege {words or '(empty)'!r} needs `privileged: true`")


def check_resource(resource: str, where: str) -> tuple[str, str | None]:
    """(database, table or None) of a resource `db` or `db.table`; raises ValueError."""
    match = RESOURCE_PATTERN.match(resource)
    if match is None:
        raise ValueError(f"{where}: {resource!r} is not `database` or `database.table`")
    database, table = match.group(1), match.group(2)
    if any(matches_pattern(database, system) for system in SYSTEM_DATABASES):
        raise ValueError(f"{where}: {database!r} is, or as a pattern matches, a system database")
    return database, table


def matches_pattern(database: str, name: str) -> bool:
    """Whether `database` names `name`, or would if its `_` were read as a wildcard: a grant's
    database is escaped, but a resource that could ever match a system or ledger database, by
    a statement or a server that reads it as a pattern, is refused outright."""
    pattern = "".join("." if c == "_" else re.escape(c) for c in database.lower())
    return re.fullmatch(pattern, name.lower()) is not None


def check_role(role: str, where: str) -> str:
    if not re.fullmatch(_NAME, role):
        raise ValueError(f"{where}: {role!r} is not a role name")
    return role


def ident(name: str) -> str:
    """A backtick-quoted identifier."""
    if not name or "\0" in name:
        raise ValueError("empty identifier")
    return "`" + name.replace("`", "``") + "`"


def literal(value: str) -> str:
    """A quoted string literal. The sessions pin sql_mode, so backslash escapes hold."""
    if "\0" in value:
        raise ValueError("NUL in literal")
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace('"', '\\"')
    return "'" + escaped + "'"


def db_pattern(database: str) -> str:
    """A database name for a database-level GRANT, where `_` and `%` would be wildcards."""
    return ident(database.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%"))


def _username_hint(spec: GrantSpec) -> str:
    source = spec.identity.username or spec.identity.email.split("@", 1)[0]
    return re.sub(r"[^a-z0-9_]", "_", source.lower())[:8]


def user_name(connection: Connection, spec: GrantSpec) -> str:
    """Deterministic per grant (at most 31 characters, MySQL's limit is 32), so a redelivered
    grant finds the account it made."""
    return f"{connection.user_prefix}{_username_hint(spec)}{grant_suffix(spec.grant_id)}"


def role_name(connection: Connection, grant_id: str) -> str:
    """The per-grant role of membership mode, between the member and the granted roles, so
    that overlapping grants of one role end separately."""
    return f"{connection.user_prefix}m_{grant_id[1:11]}"


def principal_name(connection: Connection, spec: GrantSpec) -> str:
    if spec.permission.mode == "membership":  # type: ignore[attr-defined]
        return role_name(connection, spec.grant_id)
    return user_name(connection, spec)


def member_name(spec: GrantSpec) -> str:
    if spec.identity.username is None:
        raise Refused("identity.username", "membership mode needs the identity's account name")
    return spec.identity.username


def is_our_name(name: str, grant_id: str) -> bool:
    """Whether an account or role name is one made for that grant id, under any prefix the
    integration has had: a revoke acts on the name its ledger row holds, which the row's MAC
    covers, not on what today's catalog would call it."""
    return name.endswith(grant_suffix(grant_id))


def grant_suffix(grant_id: str) -> str:
    """The end of every account and role name made for a grant."""
    return f"_{grant_id[1:11]}"


def at_host(connection: Connection, host: str) -> Connection:
    """The settings with the account host a grant was made with (its ledger row's)."""
    if host == connection.user_host:
        return connection
    return connection.model_copy(update={"user_host": host})


def account(connection: Connection, name: str) -> str:
    return f"{literal(name)}@{literal(connection.user_host)}"


def event_name(grant_id: str) -> str:
    return f"jitc_expire_{grant_id}"


class GrantParts(NamedTuple):
    """A grant's statements by what they do: a redelivery runs some of them again."""

    create: str
    grants: list[str]
    event: str | None

    def statements(self) -> list[str]:
        return [self.create, *self.grants, *([self.event] if self.event else [])]

    def digest(self) -> str:
        """What the grant's GRANTs were when it was made (its ledger row keeps this): a
        redelivery runs them again only while they are still the same, so a catalog changed
        since never widens a live grant."""
        return hashlib.sha256("\n".join(self.grants).encode()).hexdigest()[:32]


def grant_parts(
    connection: Connection,
    spec: GrantSpec,
    password_hash: str,
    name: str | None = None,
    expires_at: datetime | None = None,
) -> GrantParts:
    """A grant's CREATE USER, its GRANTs and its expiry event (both idempotent, so a redelivery
    completes a grant cut short by running them again). `name` and `expires_at`: the account
    and expiry a ledger row already holds (a redelivery), else the ones the settings and the
    request give."""
    permission = spec.permission
    assert isinstance(permission, Permission)
    name = user_name(connection, spec) if name is None else name
    who = account(connection, name)
    create = (
        f"CREATE USER {who} IDENTIFIED WITH mysql_native_password AS {password_hash} "
        f"WITH MAX_USER_CONNECTIONS {int(connection.connection_limit)}"
    )
    grants = []
    for resource in spec.resources:
        database, table = check_resource(resource, "resource")
        if table is None:
            target = f"{db_pattern(database)}.*"
        else:
            target = f"{ident(database)}.{ident(table)}"
        for text in permission.statement_texts():
            grants.append(
                text.format(
                    user=who,
                    object=target,
                    database=ident(database),
                    table=ident(table) if table else "*",
                )
            )
    event = None
    if connection.expiry_event != "off":
        event = expiry_event(connection, name, spec, expires_at)
    return GrantParts(create, grants, event)


def expiry_event(
    connection: Connection, name: str, spec: GrantSpec, expires_at: datetime | None = None
) -> str:
    """A one-shot event, run by the server at the expiry even when the connector is down: lock
    the account, then end its connections (a dropped or locked account's sessions live on).
    A cursor over the process list, not MariaDB's `KILL USER`, so MySQL runs it too."""
    lock = f"ALTER USER IF EXISTS {account(connection, name)} ACCOUNT LOCK; "
    body = _kill_loop(name, lock)
    return (
        f"CREATE EVENT IF NOT EXISTS {ident(connection.ledger_database)}."
        f"{ident(event_name(spec.grant_id))} ON SCHEDULE AT "
        f"{literal(_at(spec.expires_at if expires_at is None else expires_at))} "
        f"ON COMPLETION NOT PRESERVE DO BEGIN {body}END"
    )


def membership_statements(
    connection: Connection,
    spec: GrantSpec,
    name: str | None = None,
    expires_at: datetime | None = None,
    terminate: bool | None = None,
) -> list[str]:
    """A role per grant holding the requested roles, granted to the member's account. `name`,
    `expires_at`, `terminate` (and the member's host, `connection.user_host`): what a ledger
    row already holds (a redelivery), else what the settings and the request give."""
    name = role_name(connection, spec.grant_id) if name is None else name
    role = ident(name)
    statements = [f"CREATE ROLE {role}"]
    statements += [f"GRANT {ident(check_role(r, 'resource'))} TO {role}" for r in spec.resources]
    statements.append(f"GRANT {role} TO {account(connection, member_name(spec))}")
    if connection.expiry_event != "off":
        statements.append(membership_expiry_event(connection, spec, name, expires_at, terminate))
    return statements


def _kill_loop(name: str, before: str, host: str | None = None) -> str:
    """A compound-statement body that kills every connection of account `name`, runs `before`,
    then kills again (a login that started meanwhile). Kills first: `before` is account DDL,
    which may wait on a backup's lock (as long as the backup holds it), the kills on none. The
    process list names a connection by user name alone, compared here byte for byte
    (information_schema compares without case: `ALICE` is another account). With `host` (the
    account's): only when no account on another host has that name, since the list cannot tell
    their connections apart."""
    sessions = (
        "SELECT ID FROM information_schema.PROCESSLIST "  # noqa: S608
        f"WHERE CAST(USER AS BINARY) = CAST({literal(name)} AS BINARY) AND COMMAND <> 'Daemon'"
    )
    kill = (
        "SET done = 0; OPEN c; l: LOOP FETCH c INTO tid; IF done THEN LEAVE l; END IF; "
        "SET @jitc_kill = CONCAT('KILL CONNECTION ', tid); PREPARE s FROM @jitc_kill; "
        "EXECUTE s; DEALLOCATE PREPARE s; END LOOP; CLOSE c; "
    )
    if host is not None:
        others = (
            "SELECT COUNT(*) FROM mysql.global_priv "  # noqa: S608
            f"WHERE User = {literal(name)} AND Host <> '' AND Host <> {literal(host)}"
        )
        kill = f"IF ({others}) = 0 THEN {kill}END IF; "
    return (
        "DECLARE done INT DEFAULT 0; DECLARE tid BIGINT UNSIGNED; "
        f"DECLARE c CURSOR FOR {sessions}; "
        "DECLARE CONTINUE HANDLER FOR NOT FOUND SET done = 1; "
        f"{kill}{before}{kill}"
    )


def _at(expires_at: datetime) -> str:
    # Rounded up to the second (the schedule's precision), never down past the expiry.
    expires = expires_at.astimezone(UTC)
    if expires.microsecond:
        expires = expires.replace(microsecond=0) + timedelta(seconds=1)
    return expires.strftime("%Y-%m-%d %H:%M:%S")


def membership_expiry_event(
    connection: Connection,
    spec: GrantSpec,
    name: str,
    expires_at: datetime | None = None,
    terminate: bool | None = None,
) -> str:
    """At the expiry the server drops the grant's role `name` (which ends the membership) and,
    if the permission says so, the member's connections."""
    permission = spec.permission
    assert isinstance(permission, Permission)
    drop = f"DROP ROLE IF EXISTS {ident(name)}; "
    member = member_name(spec)
    if permission.terminate_sessions if terminate is None else terminate:
        body = _kill_loop(member, drop, host=connection.user_host)
    else:
        body = drop
    at = spec.expires_at if expires_at is None else expires_at
    return (
        f"CREATE EVENT IF NOT EXISTS {ident(connection.ledger_database)}."
        f"{ident(event_name(spec.grant_id))} ON SCHEDULE AT {literal(_at(at))} "
        f"ON COMPLETION NOT PRESERVE DO BEGIN {body}END"
    )


def plan_statements(connection: Connection, spec: GrantSpec) -> list[str]:
    if spec.permission.mode == "membership":  # type: ignore[attr-defined]
        return membership_statements(connection, spec)
    return grant_parts(connection, spec, MASK).statements()


class MySQLTemplate:
    kind: ClassVar[str] = "mysql"
    Connection: ClassVar[type[Settings]] = Connection
    Permission: ClassVar[type[PermissionSettings]] = Permission
    uses_label_key: ClassVar[bool] = True

    def needs_secret_delivery(self, permission: PermissionSettings) -> bool:
        assert isinstance(permission, Permission)
        return permission.mode == "ephemeral"

    def check(self, connection: Settings, permission: PermissionSettings, spec: GrantSpec) -> None:
        assert isinstance(connection, Connection)
        assert isinstance(permission, Permission)
        if permission.mode == "membership":
            member_name(spec)
            for index, role in enumerate(spec.resources):
                try:
                    check_role(role, f"resources[{index}]")
                except ValueError as exc:
                    raise Refused(f"resources[{index}]", str(exc)) from None
            return
        for index, resource in enumerate(spec.resources):
            try:
                database, _ = check_resource(resource, f"resources[{index}]")
            except ValueError as exc:
                raise Refused(f"resources[{index}]", str(exc)) from None
            if matches_pattern(database, connection.ledger_database):
                raise Refused(f"resources[{index}]", "the connector's ledger is never granted")

    def plan(self, connection: Settings, spec: GrantSpec) -> list[str]:
        assert isinstance(connection, Connection)
        return plan_statements(connection, spec)

    def open(
        self,
        integration: str,
        connection: Settings,
        secret: Secret | None,
        label_key: LabelKey | None = None,
    ) -> MySQLSession:
        from jitc.templates.mysql_session import MySQLSession

        assert isinstance(connection, Connection)
        return MySQLSession(integration, connection, secret, labels.required(label_key))
