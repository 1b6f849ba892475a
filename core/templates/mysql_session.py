"""The MySQL/MariaDB template's connection-side half, imported only when a connection is opened.

Account DDL in MySQL and MariaDB commits on its own, so a grant cannot be one transaction:
every step is idempotent instead, and the ledger row is written before the account, so a crash
between the two leaves a row that a redelivery completes or a sweep revokes, never an account
nobody knows of.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pymysql

from jitc.errors import AuthenticationFailed, Refused, TargetError
from jitc.labels import LabelKey, sign_label, verify_label
from jitc.models import Grant, utcnow
from jitc.secrets import Secret
from jitc.templates.base import (
    GrantResult,
    GrantSpec,
    InventoryRecord,
    RevokeResult,
    grant_from_label,
)
from jitc.templates.mysql import (
    SYSTEM_DATABASES,
    Connection,
    MySQLTemplate,
    Permission,
    account,
    at_host,
    event_name,
    grant_parts,
    grant_suffix,
    ident,
    is_our_name,
    literal,
    member_name,
    membership_statements,
    role_name,
    user_name,
)

log = logging.getLogger(__name__)

# Fixed for every admin session: no ANSI_QUOTES or NO_BACKSLASH_ESCAPES, which would change how
# our quoting reads, whatever the server's global default says.
SQL_MODE = "STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION"
# Without it, on MariaDB and MySQL before 8.0, a GRANT to an account that does not exist creates
# it with no password. (MySQL 8.0 dropped the mode, and its GRANT never creates an account.)
GUARDED_SQL_MODE = SQL_MODE + ",NO_AUTO_CREATE_USER"
_NO_SUCH_THREAD = 1094
_NO_SUCH_TABLE = (1049, 1146)


def native_password_hash(password: str) -> str:
    """mysql_native_password's stored form, computed here so the clear password never reaches
    the server (its general log or binary log would keep it)."""
    inner = hashlib.sha1(password.encode(), usedforsecurity=False).digest()
    return "*" + hashlib.sha1(inner, usedforsecurity=False).hexdigest().upper()


class Busy(TargetError):
    """Another session holds a grant's lock past the bounded wait."""


def _tls(connection: Connection) -> ssl.SSLContext | None:
    """A verifying TLS context. PyMySQL's own, built from a dict without a CA, neither checks
    the certificate nor the host name, which would hand the admin password to anyone on path."""
    if not connection.ssl:
        return None
    context = ssl.create_default_context(cafile=connection.ssl_ca)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


# ER_ACCESS_DENIED_ERROR: a wrong password (or account); the engine then reads the secret again.
ACCESS_DENIED = 1045


def admin_connect(connection: Connection, secret: Secret | None) -> pymysql.Connection[Any]:
    """The admin connection, as every session and the credential rotation open it."""
    try:
        return pymysql.connect(
            host=connection.host,
            port=connection.port,
            user=connection.user,
            password=secret.reveal() if secret is not None else "",
            connect_timeout=connection.connect_timeout,
            ssl=_tls(connection),
            autocommit=True,
            charset="utf8mb4",
            program_name="jit-connector",
        )
    except pymysql.Error as exc:
        code = exc.args[0] if exc.args else ""
        where = f"MySQL {connection.host}:{connection.port} as {connection.user}"
        if code == ACCESS_DENIED:
            raise AuthenticationFailed(f"{where}: the admin credential was refused") from None
        raise TargetError(f"cannot connect to {where}: {type(exc).__name__} {code}") from None


class MySQLSession:
    """One admin connection, used for a batch."""

    def __init__(
        self,
        integration: str,
        connection: Connection,
        secret: Secret | None,
        label_key: LabelKey,
    ) -> None:
        self.integration = integration
        self.settings = connection
        self.key = label_key
        self.ledger = f"{ident(connection.ledger_database)}.{ident('grants')}"
        self.conn = admin_connect(connection, secret)
        wait = int(connection.lock_wait_seconds)
        scheduler, version, server_now = self._rows(
            "SELECT @@GLOBAL.event_scheduler, VERSION(), UTC_TIMESTAMP(6)"
        )[0]
        self.scheduler_on = str(scheduler).upper() == "ON"
        # How far the server's clock, by which expiry events fire, runs ahead of ours.
        self.skew = server_now.replace(tzinfo=UTC) - utcnow()
        # MariaDB's mysql.user is a view that parses every account's JSON: its table is faster.
        self.mariadb = "mariadb" in str(version).lower()
        self.accounts = "mysql.global_priv" if self.mariadb else "mysql.user"
        major = str(version).split(".", 1)[0]
        mode = (
            GUARDED_SQL_MODE if self.mariadb or (major.isdigit() and int(major) < 8) else SQL_MODE
        )
        # No default database: every name we use is qualified, so nothing a neighbour creates
        # in some database can stand in for ours. Lock waits are bounded, so a neighbour's lock
        # delays a revoke at most this long.
        self._run(
            f"SET SESSION sql_mode = {literal(mode)}, time_zone = '+00:00', "
            f"innodb_lock_wait_timeout = {wait}, lock_wait_timeout = {wait}"
        )
        self._lock_key = self._ensure_ledger()

    def close(self) -> None:
        self.conn.close()

    # -- plumbing --------------------------------------------------------------------------

    def _run(self, statement: str, args: tuple[Any, ...] | None = None) -> int:
        with self.conn.cursor() as cursor:
            return int(cursor.execute(statement, args))

    def _rows(self, query: str, args: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cursor:
            cursor.execute(query, args)
            return list(cursor.fetchall())

    def _bounded(self, statement: str) -> None:
        """Account, role and event DDL and GRANTs, which MariaDB keeps waiting without a bound
        (not `lock_wait_timeout`) while a backup holds `FLUSH TABLES WITH READ LOCK` or locks
        the `mysql` tables: cut off after `lock_wait_seconds`, as an error the grant or revoke
        is retried on. MySQL has no such bound for DDL (`max_execution_time` is for SELECT),
        and waits for account statements as long as a backup's lock lasts."""
        if self.mariadb:
            wait = int(self.settings.lock_wait_seconds)
            statement = f"SET STATEMENT max_statement_time = {wait} FOR {statement}"
        self._run(statement)

    def _one(self, query: str, args: tuple[Any, ...] | None = None) -> Any:
        rows = self._rows(query, args)
        return rows[0][0] if rows else None

    def _ensure_ledger(self) -> str:
        """The ledger's lock key, creating the ledger on first use. The key is random and only
        readable by the admin, so no neighbour can compute the names of our locks."""
        keys = f"{ident(self.settings.ledger_database)}.{ident('keys')}"
        try:
            key = self._one(f"SELECT value FROM {keys} WHERE name = 'lock'")  # noqa: S608
        except pymysql.err.ProgrammingError as exc:
            if exc.args[0] not in _NO_SUCH_TABLE:
                raise
            key = None
        if key is not None:
            return str(key)
        self._run(f"CREATE DATABASE IF NOT EXISTS {ident(self.settings.ledger_database)}")
        self._run(
            f"CREATE TABLE IF NOT EXISTS {self.ledger} ("
            "integration VARCHAR(64) NOT NULL, grant_id CHAR(25) NOT NULL, "
            "name VARCHAR(80) NOT NULL, state VARCHAR(16) NOT NULL, "
            "expires_at DATETIME(6) NOT NULL, label TEXT NOT NULL, "
            "PRIMARY KEY (integration, grant_id)) ENGINE=InnoDB"
        )
        self._run(
            f"CREATE TABLE IF NOT EXISTS {keys} (name VARCHAR(32) PRIMARY KEY, "
            "value CHAR(64) NOT NULL) ENGINE=InnoDB"
        )
        self._run(
            f"INSERT IGNORE INTO {keys} (name, value) VALUES ('lock', %s)",  # noqa: S608
            (secrets.token_hex(32),),
        )
        return str(self._one(f"SELECT value FROM {keys} WHERE name = 'lock'"))  # noqa: S608

    @contextmanager
    def _locked(self, grant_id: str) -> Iterator[None]:
        """Serialise work on one grant across workers, with a bounded wait."""
        name = "jitc-" + hashlib.sha256(f"{self._lock_key}:{grant_id}".encode()).hexdigest()[:56]
        got = self._one("SELECT GET_LOCK(%s, %s)", (name, self.settings.lock_wait_seconds))
        if got != 1:
            raise Busy(f"grant {grant_id} is busy (lock not granted in time)")
        try:
            yield
        finally:
            self._run("DO RELEASE_LOCK(%s)", (name,))

    def _label(self, name: str, text: str | None, grant_id: str) -> dict[str, Any] | None:
        """A ledger row's label, when its MAC holds for this account name and it is this
        integration's; a row naming an account it was not written for is not ours."""
        label = verify_label(self.key, MySQLTemplate.kind, name, text)
        if label is None or label.get("grant_id") != grant_id:
            return None
        if label.get("integration") != self.integration:
            return None
        if label.get("state") != "tombstone" and not is_our_name(name, grant_id):
            return None
        return label

    def _host(self, label: dict[str, Any]) -> str:
        """The account host a grant was made with: its row's, not today's settings."""
        return str(label.get("host", self.settings.user_host)).lower()

    def _row(self, grant_id: str) -> tuple[str, dict[str, Any]] | None:
        found = self._row_text(grant_id)
        return None if found is None else (found[0], found[1])

    def _row_text(self, grant_id: str) -> tuple[str, dict[str, Any], str] | None:
        """The grant's row, if ours: its account name, its label, and the label as stored."""
        rows = self._rows(
            f"SELECT name, label FROM {self.ledger} "  # noqa: S608
            "WHERE integration = %s AND grant_id = %s",
            (self.integration, grant_id),
        )
        for name, text in rows:
            label = self._label(str(name), text, grant_id)
            return None if label is None else (str(name), label, str(text))
        return None

    def _server_now(self) -> datetime:
        """The server's time, by which its expiry events fire (ours, where none is made)."""
        now = utcnow()
        return now if self.settings.expiry_event == "off" else max(now, now + self.skew)

    def _write(self, name: str, label: dict[str, Any]) -> None:
        self._run(
            f"REPLACE INTO {self.ledger} "  # noqa: S608
            "(integration, grant_id, name, state, expires_at, label) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (
                self.integration,
                label["grant_id"],
                name,
                label["state"],
                datetime.fromisoformat(label["expires_at"]).astimezone(UTC).replace(tzinfo=None),
                sign_label(self.key, MySQLTemplate.kind, name, label),
            ),
        )

    def _delete(self, grant_id: str) -> None:
        self._run(
            f"DELETE FROM {self.ledger} WHERE integration = %s AND grant_id = %s",  # noqa: S608
            (self.integration, grant_id),
        )

    def _user_exists(self, name: str, host: str | None = None) -> bool:
        return bool(
            self._one(
                f"SELECT COUNT(*) FROM {self.accounts} WHERE User = %s AND Host = %s",  # noqa: S608
                (name, self.settings.user_host if host is None else host),
            )
        )

    # -- grant -----------------------------------------------------------------------------

    def _check_existing(self, label: dict[str, Any], spec: GrantSpec) -> None:
        """A grant whose row exists: a redelivery of it may go on, nothing else."""
        if label.get("state") == "tombstone":
            raise Refused("request_id", "this grant was already revoked; it will not be made again")
        if label.get("state") != "active":
            raise Refused("request_id", "this grant is being revoked")
        if label.get("digest") != spec.request_digest:
            raise Refused(
                "request_id", "this request id was already used for a different request; refused"
            )
        if datetime.fromisoformat(label["expires_at"]) <= self._server_now():
            # A copy signed later asks for a later expiry; the grant's own is the row's. Past
            # it, by our clock or by the server's (its event's), the event may already have
            # ended the grant: never made again.
            raise Refused("request_id", "this grant has expired; it will not be made again")

    def _check_clock(self, spec: GrantSpec) -> None:
        """An event scheduled at a time the server has passed is dropped as it is made: the
        grant would have no expiry in the server."""
        if spec.expires_at <= self._server_now():
            raise Refused(
                "integration",
                f"the server's clock is {self.skew.total_seconds():.0f} s ahead of the "
                "connector's, past this grant's expiry: its expiry event would never fire",
            )

    def _check_scheduler(self) -> None:
        if self.settings.expiry_event == "if-available" and not self.scheduler_on:
            # The grant is made, but only the connector's own revoke ends it on time.
            log.warning(
                "integration %s: the server's event_scheduler is OFF; the expiry event of a "
                "new grant will not fire until it is ON",
                self.integration,
            )
        if self.settings.expiry_event == "required" and not self.scheduler_on:
            raise Refused(
                "integration",
                "the server's event_scheduler is OFF, and this integration requires "
                "target-enforced expiry",
            )

    def grant(self, spec: GrantSpec) -> GrantResult:
        permission = spec.permission
        assert isinstance(permission, Permission)
        if permission.mode == "membership":
            return self._grant_membership(spec, permission)
        name = user_name(self.settings, spec)
        host = self.settings.user_host
        # With a label key every delivery of a grant computes the same password, so a
        # redelivery hands out the same credentials and changes nothing in the server.
        derived = self.key.password(self.integration, spec.grant_id, spec.request_digest)
        password = derived or secrets.token_urlsafe(24)
        stored = native_password_hash(password)
        hashed = literal(stored)
        auth = self._auth_mark(stored)
        with self._locked(spec.grant_id):
            found = self._row(spec.grant_id)
            if found is None:
                if self._user_exists(name):
                    raise Refused(
                        "identity.username",
                        f"account {name!r} already exists and was not created by this connector",
                    )
                self._check_scheduler()
                self._check_clock(spec)
                parts = grant_parts(self.settings, spec, hashed)
                statements = parts.statements()
                label = self._grant_label(spec, name)
                self._write(name, {**label, "auth": auth, "plan": parts.digest()})
                reissued = False
            else:
                label = found[1]
                self._check_existing(label, spec)
                reissued = True
                # The account the row holds, at its host, with the expiry it holds, whatever
                # the settings say now and whenever this copy of the request was signed.
                name, host = found[0], self._host(label)
                settings = at_host(self.settings, host)
                expires = datetime.fromisoformat(label["expires_at"])
                parts = grant_parts(settings, spec, hashed, name, expires)
                changes: dict[str, Any] = {"auth": auth}
                if self._user_exists(name, host):
                    # The GRANTs and the expiry event again (idempotent): the first delivery
                    # may have stopped after CREATE USER, before them. The GRANTs only while
                    # they are what the grant was made with: a catalog changed since never
                    # widens it. The event always: it ends the grant at the row's expiry.
                    grants = parts.grants if label.get("plan") == parts.digest() else []
                    statements = [*grants, *([parts.event] if parts.event else [])]
                    if derived is None:
                        # Without a label key the first password cannot be computed again, and
                        # a redelivery may be the only outcome that reaches the requester.
                        statements.insert(
                            0,
                            f"ALTER USER {account(settings, name)} "
                            f"IDENTIFIED WITH mysql_native_password AS {hashed}",
                        )
                else:
                    # Its account never made, or renamed by someone with CREATE USER: then
                    # another account holds its password, and the revoke drops that one.
                    holders = self._holding(str(label.get("auth") or ""))
                    if holders:
                        raise Refused(
                            "request_id",
                            f"the grant's account {name} is gone and account(s) "
                            f"{', '.join(f'{u}@{h}' for u, h in holders)} hold its password: "
                            "not made again; its revoke drops them",
                        )
                    # Never made: the grant is made now, with today's GRANTs.
                    statements = parts.statements()
                    changes["plan"] = parts.digest()
                if any(label.get(k) != v for k, v in changes.items()):
                    # Before the password changes: a revoke must know the account by it.
                    self._write(name, {**label, **changes})
            for statement in statements:
                self._bounded(statement)
            if permission.privileged and self._administers_accounts(name, host):
                self._undo(spec.grant_id, name, host)
                raise Refused(
                    "permission",
                    "these statements let the account create, rename or re-password accounts, "
                    "end the connector's connections, or pass its privileges on: it could "
                    "outlive its revoke, so the grant is refused even for a privileged "
                    "permission",
                )
        return GrantResult(
            principal=name,
            credentials={
                "username": name,
                "password": password,
                "host": self.settings.login_host or self.settings.host,
                "port": str(self.settings.port),
                "expires_at": spec.expires_at.isoformat(),
            },
            reissued=reissued,
        )

    def _grant_membership(self, spec: GrantSpec, permission: Permission) -> GrantResult:
        name = role_name(self.settings, spec.grant_id)
        with self._locked(spec.grant_id):
            found = self._row(spec.grant_id)
            if found is None:
                statements = membership_statements(self.settings, spec)
                if not self.mariadb:
                    raise Refused("permission", "membership mode uses MariaDB roles")
                if self._user_exists(name, ""):
                    raise Refused(
                        "identity.username",
                        f"role {name!r} already exists and was not created by this connector",
                    )
                self._check_membership(spec)
                self._check_scheduler()
                self._check_clock(spec)
                label = self._grant_label(spec, name)
                label.update(
                    mode="membership",
                    member=member_name(spec),
                    roles=list(spec.resources),
                    terminate_sessions=permission.terminate_sessions,
                )
                self._write(name, label)
                reissued = False
            else:
                label = found[1]
                self._check_existing(label, spec)
                reissued = True
                # The role, member host, expiry and session ending the row holds, whatever the
                # settings say now and whenever this copy of the request was signed; the member
                # checked again (it may have gone, or gained privileges, since).
                name, host = found[0], self._host(label)
                self._check_membership(spec, host)
                statements = membership_statements(
                    at_host(self.settings, host),
                    spec,
                    name,
                    datetime.fromisoformat(label["expires_at"]),
                    bool(label.get("terminate_sessions")),
                )
                if self._user_exists(name, ""):
                    # Completing a grant cut short: every later statement is idempotent.
                    statements = statements[1:]
            try:
                for statement in statements:
                    self._bounded(statement)
            except pymysql.Error as exc:
                # The row stays: a redelivery completes the grant, or the sweep revokes it.
                raise TargetError(
                    f"membership grant {spec.grant_id} stopped: MySQL error "
                    f"{exc.args[0] if exc.args else '?'}"
                ) from None
        return GrantResult(principal=name, credentials=None, reissued=reissued)

    def _check_membership(self, spec: GrantSpec, host: str | None = None) -> None:
        """Never hand a role to the admin, a privileged account or one of ours, and never hand
        out a role that reaches a privilege, the grant option, or the system and ledger
        databases, directly or through the roles it holds. `host`: the member's (today's
        `user_host` unless a ledger row holds another)."""
        member = member_name(spec)
        host = self.settings.user_host if host is None else host
        admin, _, admin_host = str(self._one("SELECT CURRENT_USER()") or "").rpartition("@")
        prefix = self.settings.user_prefix
        row = self._rows(
            "SELECT JSON_VALUE(Priv, '$.access'), JSON_VALUE(Priv, '$.is_role') "
            "FROM mysql.global_priv WHERE User = %s AND Host = %s",
            (member, host),
        )
        if not row or row[0][1] in ("1", "true"):
            raise Refused("identity.username", f"no account {member!r}@{host!r} exists")
        if (
            member in (admin, self.settings.user)
            or member.startswith(prefix)
            or self._privileged({member}, host)
        ):
            raise Refused(
                "identity.username",
                f"account {member!r} is the admin, one of the connector's own, or holds a global "
                "privilege, a grant option or a system database: never a member",
            )
        permission = spec.permission
        assert isinstance(permission, Permission)
        others = self._namesakes(member, host)
        if permission.terminate_sessions and others:
            raise Refused(
                "identity.username",
                f"{others} account(s) on other hosts share the name {member!r}: the process list "
                "names connections by user alone, so the revoke could not end this member's "
                "sessions without ending theirs",
            )
        for index, role in enumerate(spec.resources):
            where = f"resources[{index}]"
            is_role = self._one(
                "SELECT JSON_VALUE(Priv, '$.is_role') FROM mysql.global_priv "
                "WHERE User = %s AND Host = ''",
                (role,),
            )
            if is_role not in ("1", "true"):
                raise Refused(where, f"role {role!r} does not exist")
            # Even SUPER cannot grant a role without its ADMIN OPTION: found out here, before
            # the ledger row and the grant's role are made, not as a server error after.
            if not self._one(
                "SELECT COUNT(*) FROM mysql.roles_mapping WHERE User = %s AND Host = %s "
                "AND Role = %s AND Admin_option = 'Y'",
                (admin, admin_host, role),
            ):
                raise Refused(
                    where,
                    f"the connector's admin may not hand out role {role!r}: it needs the role "
                    "WITH ADMIN OPTION",
                )
            reached = self._roles_reached(role)
            if any(r.startswith(prefix) for r in reached):
                raise Refused(where, f"role {role!r} is, or holds, one of the connector's own")
            if self._privileged(reached):
                raise Refused(
                    where,
                    f"role {role!r} reaches a global privilege, the grant option or a system "
                    "database: never handed out",
                )

    def _roles_reached(self, role: str) -> set[str]:
        """The role and every role it holds, transitively."""
        reached, frontier = {role}, [role]
        while frontier:
            marks = ", ".join(["%s"] * len(frontier))
            rows = self._rows(
                f"SELECT Role FROM mysql.roles_mapping WHERE Host = '' AND User IN ({marks})",  # noqa: S608
                tuple(frontier),
            )
            frontier = [str(r[0]) for r in rows if str(r[0]) not in reached]
            reached.update(frontier)
        return reached

    def _privileged(self, roles: set[str], host: str = "") -> bool:
        """Whether any of these accounts or roles holds a global privilege, the grant option
        anywhere, the ADMIN OPTION of a role, or any privilege on a database whose name (a
        pattern at database level: `%`, `m_sql`) matches a system database or the ledger."""
        names = tuple(sorted(roles))
        marks = ", ".join(["%s"] * len(names))
        guarded = (*sorted(SYSTEM_DATABASES), self.settings.ledger_database)
        reach = " OR ".join(["%s LIKE Db"] * len(guarded))
        exact = ", ".join(["%s"] * len(guarded))
        query = (
            "SELECT (SELECT COUNT(*) FROM mysql.global_priv WHERE Host = %s "  # noqa: S608
            f"AND User IN ({marks}) AND JSON_VALUE(Priv, '$.access') <> '0') + "
            "(SELECT COUNT(*) FROM mysql.roles_mapping WHERE Host = %s "
            f"AND User IN ({marks}) AND Admin_option = 'Y') + "
            "(SELECT COUNT(*) FROM mysql.db WHERE Host = %s "
            f"AND User IN ({marks}) AND (Grant_priv = 'Y' OR {reach})) + "
            "(SELECT COUNT(*) FROM mysql.tables_priv WHERE Host = %s "
            f"AND User IN ({marks}) AND (FIND_IN_SET('Grant', Table_priv) OR Db IN ({exact}))) + "
            "(SELECT COUNT(*) FROM mysql.columns_priv WHERE Host = %s "
            f"AND User IN ({marks}) AND Db IN ({exact})) + "
            "(SELECT COUNT(*) FROM mysql.procs_priv WHERE Host = %s "
            f"AND User IN ({marks}) AND (FIND_IN_SET('Grant', Proc_priv) OR Db IN ({exact})))"
        )
        each = (host, *names)
        args = each + each + each + guarded + each + guarded + each + guarded + each + guarded
        return bool(self._one(query, args))

    def _administers_accounts(self, name: str, host: str) -> bool:
        """Whether the account, itself or through any role it holds, may create, rename or
        re-password accounts (CREATE USER, or a write on the grant tables in `mysql`: global
        INSERT, UPDATE or DELETE, or those on the `mysql` database or its tables; or run code
        as another account: SUPER, SET USER; or replay rows: BINLOG REPLAY, REPLICATION SLAVE
        ADMIN), end others' connections (CONNECTION ADMIN), or pass a privilege on (the grant
        option anywhere, a role's ADMIN OPTION). Such an account could rename itself and change
        its password, make another, or stop its revoke, and keep its access."""
        roles = {
            str(r[0])
            for r in self._rows(
                "SELECT Role FROM mysql.roles_mapping WHERE User = %s AND Host = %s", (name, host)
            )
        }
        reached: set[str] = set()
        for role in roles:
            reached |= self._roles_reached(role)
        admin_bits = 2 | 4 | 8 | 1024 | 33554432  # INSERT UPDATE DELETE GRANT CREATE-USER
        # RELOAD: FLUSH TABLES WITH READ LOCK (or BACKUP STAGE) holds every write, the grant
        # tables' and the ledger's, and the event scheduler with them, for as long as the
        # account keeps its connection: its revoke and its expiry event would wait on it.
        admin_bits |= 64
        # SUPER and SET USER let the account name any definer: a routine, event, trigger or
        # view it defines as the connector's admin runs as the admin (CREATE USER included).
        # BINLOG REPLAY and REPLICATION SLAVE ADMIN write rows, the grant tables' included,
        # from binary log events it supplies or from a primary it chooses.
        admin_bits |= 32768 | (1 << 30) | (1 << 37) | (1 << 34)
        # CONNECTION ADMIN ends any connection: the account could end the connector's admin
        # connections (and the expiry event, which runs as the admin) before each revoke locks it.
        admin_bits |= 1 << 32
        checks = [(name, host)] + [(role, "") for role in sorted(reached)]
        for user, user_host in checks:
            if self._one(
                "SELECT (SELECT COUNT(*) FROM mysql.global_priv WHERE User = %s AND Host = %s "
                "AND CAST(JSON_VALUE(Priv, '$.access') AS UNSIGNED) & %s <> 0) + "
                "(SELECT COUNT(*) FROM mysql.roles_mapping WHERE User = %s AND Host = %s "
                "AND Admin_option = 'Y') + "
                "(SELECT COUNT(*) FROM mysql.db WHERE User = %s AND Host = %s AND "
                "(Grant_priv = 'Y' OR ('mysql' LIKE Db AND "
                "'Y' IN (Insert_priv, Update_priv, Delete_priv)))) + "
                "(SELECT COUNT(*) FROM mysql.tables_priv WHERE User = %s AND Host = %s AND "
                "(FIND_IN_SET('Grant', Table_priv) OR (Db = 'mysql' AND "
                "(FIND_IN_SET('Insert', Table_priv) OR FIND_IN_SET('Update', Table_priv) "
                "OR FIND_IN_SET('Delete', Table_priv))))) + "
                "(SELECT COUNT(*) FROM mysql.procs_priv WHERE User = %s AND Host = %s "
                "AND FIND_IN_SET('Grant', Proc_priv))",
                (user, user_host, admin_bits, *((user, user_host) * 4)),
            ):
                return True
        return False

    def _undo(self, grant_id: str, name: str, host: str) -> None:
        """Take back a grant refused after its statements ran; no credentials went out."""
        self._end_account(grant_id, name, host)
        self._delete(grant_id)

    def _end_account(self, grant_id: str, name: str, host: str) -> None:
        """End the account's connections first (`KILL` waits on no lock, so a backup's lock
        that holds the DDL below never keeps them alive), lock the account, end any connection
        that started meanwhile, then drop the account and its expiry event."""
        who = account(at_host(self.settings, host), name)
        self._kill(name)
        self._bounded(f"ALTER USER IF EXISTS {who} ACCOUNT LOCK")
        self._kill(name)
        self._bounded(f"DROP USER IF EXISTS {who}")
        self._drop_event(grant_id)

    def _drop_event(self, grant_id: str) -> None:
        self._bounded(
            f"DROP EVENT IF EXISTS {ident(self.settings.ledger_database)}."
            f"{ident(event_name(grant_id))}"
        )

    def _grant_label(self, spec: GrantSpec, name: str) -> dict[str, Any]:
        return {
            "kind": "grant",
            "grant_id": spec.grant_id,
            "integration": self.integration,
            "permission": spec.permission_name,
            "expires_at": spec.expires_at.isoformat(),
            "state": "active",
            "digest": spec.request_digest,
            "identity": self.key.keyed_hash("identity", spec.identity.email),
            "user": name,
            "host": self.settings.user_host,
        }

    # -- revoke ----------------------------------------------------------------------------

    def revoke(self, grant_id: str, tombstone_until: datetime) -> RevokeResult:
        try:
            return self._revoke(grant_id, tombstone_until)
        except Busy:
            # Whoever holds the lock, access ends now; the rest is retried with the message.
            self._contain(grant_id)
            raise
        except pymysql.Error:
            # A write of the revoke failed, as every write does while an account with RELOAD
            # holds FLUSH TABLES WITH READ LOCK (a backup): its sessions end all the same, since
            # KILL waits on no lock. (ALTER USER would wait on that lock without a bound.)
            try:
                self._contain(grant_id, lock=False)
            except pymysql.Error:
                log.warning("grant %s: its sessions could not be ended either", grant_id)
            raise

    def _contain(self, grant_id: str, lock: bool = True) -> None:
        """Without the grant's lock: only what takes access away, and is safe to repeat."""
        found = self._row_text(grant_id)
        if found is None or found[1].get("state") == "tombstone":
            return
        name, label, text = found
        membership = label.get("mode") == "membership"
        member = str(label.get("member", ""))

        def end_sessions() -> None:
            if not membership:
                self._kill(name)
            elif label.get("terminate_sessions") and member:
                self._end_member(member, self._host(label))

        # Sessions first: `KILL` waits on no lock, the DDL below may (a backup's), bounded.
        end_sessions()
        if not lock:
            return
        if membership:
            self._bounded(f"DROP ROLE IF EXISTS {ident(name)}")
        else:
            who = account(at_host(self.settings, self._host(label)), name)
            self._bounded(f"ALTER USER IF EXISTS {who} ACCOUNT LOCK")
        end_sessions()
        if label.get("state") == "active":
            self._mark_revoking(grant_id, name, label, text)

    def _mark_revoking(self, grant_id: str, name: str, label: dict[str, Any], text: str) -> None:
        """So that a later redelivery, finding the role or account gone, refuses instead of
        making it again. Without the grant's lock: only the row as read is changed, never a
        write made meanwhile; and a failure here (the ledger locked by a backup, say) changes
        nothing of what containment did."""
        try:
            self._run(
                f"UPDATE {self.ledger} SET state = 'revoking', label = %s "  # noqa: S608
                "WHERE integration = %s AND grant_id = %s AND label = %s",
                (
                    sign_label(self.key, MySQLTemplate.kind, name, {**label, "state": "revoking"}),
                    self.integration,
                    grant_id,
                    text,
                ),
            )
        except pymysql.Error as exc:
            log.warning("grant %s: not marked revoking (MySQL error %s)", grant_id, exc.args[:1])

    def _revoke(self, grant_id: str, tombstone_until: datetime) -> RevokeResult:
        with self._locked(grant_id):
            found = self._row(grant_id)
            if found is None:
                strays = self._strays(grant_id)
                if strays:
                    # Not ours by any row this ledger holds, so nothing is changed; never
                    # reported revoked either, since it may be a grant of ours all the same.
                    return RevokeResult(found=True, residual=strays, verified=False)
                # Revoke before grant: the tombstone makes the late grant a refusal.
                self._tombstone(grant_id, {}, tombstone_until)
                return RevokeResult(found=False)
            name, label = found
            if label.get("state") == "tombstone":
                return RevokeResult(found=False)
            if label.get("state") != "revoking":
                self._write(name, {**label, "state": "revoking"})
            if label.get("mode") == "membership":
                return self._revoke_membership(grant_id, name, label, tombstone_until)
            host = self._host(label)
            existed = self._user_exists(name, host)
            self._end_account(grant_id, name, host)
            # Once more after the drop: a login that passed its password check just before the
            # lock shows up in the process list only after it.
            left = self._kill(name)
            residual = self._residual(name, host)
            if not existed:
                residual += self._missing_account(name, label)
            if left:
                residual.append(f"{left} connection(s) of {name} still open")
            if not residual:
                self._tombstone(grant_id, label, tombstone_until)
            return RevokeResult(
                found=True,
                principal=name,
                expires_at=datetime.fromisoformat(label["expires_at"]),
                residual=residual,
                verified=not residual,
            )

    def _strays(self, grant_id: str) -> list[str]:
        """Accounts and roles whose names end as this grant's would, with no row for it in this
        ledger: the grant's own, if the catalog's `ledger_database` changed after it was made
        (its row is in the old one). Names end in ten characters of the grant id, which no one
        else chooses by chance."""
        suffix = grant_suffix(grant_id)
        rows = self._rows(
            f"SELECT User, Host FROM {self.accounts} WHERE User LIKE %s",  # noqa: S608
            ("%" + suffix.replace("_", "\\_"),),
        )
        return [
            f"account {user}@{host} is named for this grant, but {self.settings.ledger_database} "
            "holds no row for it (was ledger_database changed?): left alone, not revoked"
            for user, host in sorted((_text(u), _text(h)) for u, h in rows)
            if str(user).endswith(suffix)
        ]

    def _auth_mark(self, stored: str) -> str:
        """A keyed fingerprint of the account's stored password hash: the ledger can recognise
        the account under another name without holding what would log in as it."""
        return self.key.keyed_hash("mysql-account-auth", stored)

    def _missing_account(self, name: str, label: dict[str, Any]) -> list[str]:
        """The grant's account was not there. Someone with CREATE USER may have renamed it,
        privileges and password intact: every account with the grant's password is locked,
        its sessions ended and dropped, and an account missing while its grant was still
        active is reported, so the revoke is not verified until a retry finds nothing."""
        residual = []
        if label.get("state") == "active":
            residual.append(f"account {name} was missing while its grant was active")
        for user, host in self._holding(str(label.get("auth") or "")):
            who = f"{literal(user)}@{literal(host)}"
            self._kill(user)
            self._bounded(f"ALTER USER IF EXISTS {who} ACCOUNT LOCK")
            self._kill(user)
            self._bounded(f"DROP USER IF EXISTS {who}")
            residual.append(f"account {user}@{host} held the grant's password: dropped")
        return residual

    def _holding(self, mark: str) -> list[tuple[str, str]]:
        """The accounts whose stored password hash has this keyed fingerprint (`_auth_mark`)."""
        if not mark:
            return []
        if self.mariadb:
            query = (
                "SELECT User, Host, JSON_VALUE(Priv, '$.authentication_string') "
                "FROM mysql.global_priv"
            )
        else:
            query = "SELECT User, Host, authentication_string FROM mysql.user"
        return [
            (str(user), str(host))
            for user, host, stored in self._rows(query)
            if stored and self._auth_mark(str(stored)) == mark
        ]

    def _revoke_membership(
        self, grant_id: str, name: str, label: dict[str, Any], tombstone_until: datetime
    ) -> RevokeResult:
        """Drop the grant's own role, which ends the membership; the member's account and the
        granted roles are the company's and stay as they were."""
        self._bounded(f"DROP ROLE IF EXISTS {ident(name)}")
        self._drop_event(grant_id)
        member = str(label.get("member", ""))
        host = self._host(label)
        left = self._end_member(member, host) if label.get("terminate_sessions") and member else []
        residual = self._residual(name, "")
        mapped = self._one("SELECT COUNT(*) FROM mysql.roles_mapping WHERE Role = %s", (name,))
        if mapped:
            residual.append(f"{mapped} membership(s) of role {name} left")
        residual += left
        if not residual:
            self._tombstone(grant_id, label, tombstone_until)
        return RevokeResult(
            found=True,
            principal=member or name,
            expires_at=datetime.fromisoformat(label["expires_at"]),
            residual=residual,
            verified=not residual,
        )

    def _namesakes(self, member: str, host: str) -> int:
        """Accounts on hosts other than the member's with its user name. The process list names
        a connection by user name alone: theirs cannot be told from the member's."""
        count = self._one(
            "SELECT COUNT(*) FROM mysql.global_priv WHERE User = %s AND Host <> '' AND Host <> %s",
            (member, host),
        )
        return int(str(count or 0))

    def _end_member(self, member: str, host: str) -> list[str]:
        """End the member's sessions (one that ran SET ROLE may keep the role's privileges
        until it ends), never another account's; what is left, as residual."""
        others = self._namesakes(member, host)
        if others:
            return [
                f"connections of {member} not ended: {others} account(s) on other hosts share "
                "the name, and the process list does not tell their connections apart"
            ]
        left = self._kill(member)
        return [f"{left} connection(s) of {member} still open"] if left else []

    def _sessions(self, name: str) -> list[int]:
        # Byte for byte: information_schema compares without case, and `ALICE` is another
        # account than `alice`. Never a server thread (the event scheduler's is listed under
        # the user name `event_scheduler`, and refuses to be killed).
        rows = self._rows(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE CAST(USER AS BINARY) = "
            "CAST(%s AS BINARY) AND COMMAND <> 'Daemon' AND ID <> CONNECTION_ID()",
            (name,),
        )
        return [int(row[0]) for row in rows]

    def _kill(self, name: str) -> int:
        """End every connection of the account (DROP USER leaves them running); wait, bounded,
        until the server no longer lists them. Returns how many are left."""
        deadline = time.monotonic() + self.settings.kill_wait_seconds
        while True:
            ids = self._sessions(name)
            if not ids:
                return 0
            if time.monotonic() >= deadline:
                return len(ids)
            for thread in ids:
                try:
                    self._run(f"KILL CONNECTION {int(thread)}")
                except pymysql.err.InternalError as exc:
                    if exc.args[0] != _NO_SUCH_THREAD:
                        raise
                except pymysql.err.OperationalError as exc:
                    if exc.args[0] != _NO_SUCH_THREAD:
                        raise
            time.sleep(0.01)

    def _residual(self, name: str, host: str | None = None) -> list[str]:
        """What still exists of the account, read from the server's own tables."""
        host = self.settings.user_host if host is None else host
        tables = [self.accounts, "mysql.db", "mysql.tables_priv", "mysql.columns_priv"]
        tables.append("mysql.procs_priv")
        counts = ", ".join(
            f"(SELECT COUNT(*) FROM {table} WHERE User = %s AND Host = %s)"  # noqa: S608
            for table in tables
        )
        row = self._rows(f"SELECT {counts}", (name, host) * len(tables))[0]
        return [
            f"{count} row(s) for {name} in {table}"
            for table, count in zip(tables, row, strict=True)
            if count
        ]

    def _tombstone(self, grant_id: str, label: dict[str, Any], until: datetime) -> None:
        """Remember a revoke until `until`; a grant delivered after that has expired anyway."""
        if until <= utcnow():
            self._delete(grant_id)
            return
        stone = {
            "kind": "tombstone",
            "grant_id": grant_id,
            "integration": self.integration,
            "permission": label.get("permission", ""),
            "expires_at": until.isoformat(),
            "state": "tombstone",
        }
        self._write(str(label.get("user", "")), stone)

    def forget(self, grant_id: str, principal: str | None = None) -> None:
        with self._locked(grant_id):
            found = self._row(grant_id)
            if found is not None and found[1].get("state") == "tombstone":
                self._delete(grant_id)

    # -- sweep and inventory ---------------------------------------------------------------

    def tidy(self, now: datetime | None = None) -> list[str]:
        """The sweep's backstop for sessions that outlive their revoke. While a session runs
        another account's DEFINER trigger or stored function, MariaDB lists it under that
        account's name: a revoke at that moment cannot see it, and once it returns it keeps
        the database privileges it cached with USE, for as long as it lives. Every session
        still open under a name of the connector's namespace that no account has (a dropped
        grant account's, however long ago, its tombstone forgotten or not) is ended here, and
        reported: that revoke's verification missed it. One whose name an account has again
        cannot be told from that account's sessions: reported, never ended."""
        prefix = self.settings.user_prefix
        listed = self._rows(
            "SELECT DISTINCT USER FROM information_schema.PROCESSLIST "
            "WHERE COMMAND <> 'Daemon' AND ID <> CONNECTION_ID()"
        )
        # Compared here, byte for byte: information_schema compares without case.
        ours = sorted({str(user) for (user,) in listed if str(user).startswith(prefix)})
        lines = []
        for name in ours:
            hosts = {
                str(host)
                for (host,) in self._rows(
                    f"SELECT Host FROM {self.accounts} WHERE User = %s",  # noqa: S608
                    (name,),
                )
            }
            if self.settings.user_host in hosts:
                continue  # a live grant's account (or a revoke's, under way)
            if hosts:
                lines.append(
                    f"session(s) of {name} outlived its account, and an account on another host "
                    "has the name again: not ended (the process list does not tell them apart)"
                )
                continue
            left = self._kill(name)
            lines.append(
                f"session(s) of {name} outlived its revoke (one running another account's "
                "DEFINER trigger or function is listed under that account): "
                + (f"{left} still open" if left else "ended")
            )
        return lines

    def active_grants(self) -> list[Grant]:
        rows = self._rows(
            f"SELECT grant_id, name, label FROM {self.ledger} WHERE integration = %s",  # noqa: S608
            (self.integration,),
        )
        grants = []
        for grant_id, name, text in rows:
            label = self._label(str(name), text, str(grant_id))
            if label is None:
                continue
            grant = grant_from_label(MySQLTemplate.kind, str(name), label)
            if grant is not None:
                grants.append(grant)
        return grants

    def inventory_records(self) -> Iterator[InventoryRecord]:
        """Databases, tables per database and accounts (user, with its host as parent), names
        only, streamed with an unbuffered cursor so memory stays bounded; ordered by byte value."""
        queries = (
            "SELECT 'database', NULL, schema_name FROM information_schema.schemata "
            "ORDER BY CAST(schema_name AS BINARY)",
            "SELECT IF(table_type = 'VIEW', 'view', 'table'), table_schema, table_name "
            "FROM information_schema.tables WHERE table_schema NOT IN "
            "('mysql', 'information_schema', 'performance_schema', 'sys') "
            "ORDER BY CAST(table_schema AS BINARY), CAST(table_name AS BINARY)",
            "SELECT 'user', Host, User FROM mysql.user "
            "ORDER BY CAST(User AS BINARY), CAST(Host AS BINARY)",
        )
        for query in queries:
            with self.conn.cursor(pymysql.cursors.SSCursor) as cursor:
                cursor.execute(query)
                for kind, parent, name in cursor:
                    yield InventoryRecord(_text(kind), _text(name), _text(parent))

    def inventory(self) -> dict[str, list[str]]:
        users = self._rows("SELECT User, Host FROM mysql.user ORDER BY User, Host")
        return {
            "users": [f"{user}@{host}" for user, host in users],
            "databases": [str(row[0]) for row in self._rows("SHOW DATABASES")],
            "event_scheduler": ["ON" if self.scheduler_on else "OFF"],
        }


def _text(value: Any) -> Any:
    """A name as text: information_schema may answer in bytes (binary collations)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    return value
