"""The PostgreSQL template's connection-side half: the admin session.

Imported only when a plan is made or a connection opened, so that loading a catalog (as the
intake does) does not load the driver.

The admin session works inside a server where grantees and other users create objects, take
locks and write comments. So: its `search_path` is pinned at connect and every name it uses is
qualified (nothing a user creates can run as the admin); every wait is bounded by
`lock_timeout` and `statement_timeout`, and it takes no advisory lock at all (the server's unique
index on role names orders a grant and a revoke of one grant); and it acts only on roles whose
MACed label names them (jitc.labels).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import ssl
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import make_conninfo

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
from jitc.templates.kept import KeptSession, PoolKey, ended_by_peer
from jitc.templates.postgresql import (
    DENIED_GROUPS,
    MASK,
    Connection,
    Permission,
    PostgreSQLTemplate,
    bundle_name,
    member_name,
    role_name,
)
from jitc.templates.postgresql_bundles import (
    bundle_state_query,
    clean_bundles,
    drop_idle_bundles,
    join_lock,
    public_create_databases,
    remove_foreign_groups,
    remove_strangers,
    reset_passwords,
)
from jitc.templates.postgresql_pool import give_back
from jitc.templates.postgresql_scram import scram_verifier
from jitc.templates.postgresql_sql import Rendered, Renderer

T = TypeVar("T")
INVENTORY_FETCH = 2000  # rows per round trip of the inventory's server-side cursor
KIND = PostgreSQLTemplate.kind
REVOKE_CHUNK = 1000
GRANT_CHUNK = 50
_EQ = sql.SQL("OPERATOR(pg_catalog.=)")
# A statement made by a session's Renderer, or composed with psycopg.sql.
Stmt = Rendered | sql.Composable

_FINGERPRINT = (
    "SELECT (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class c "
    "   WHERE c.relnamespace OPERATOR(pg_catalog.=) n.oid), "
    " (SELECT pg_catalog.max(c.oid::pg_catalog.int8) FROM pg_catalog.pg_class c "
    "   WHERE c.relnamespace OPERATOR(pg_catalog.=) n.oid), "
    " (SELECT pg_catalog.count(*) FROM pg_catalog.pg_proc p "
    "   WHERE p.pronamespace OPERATOR(pg_catalog.=) n.oid), "
    " (SELECT pg_catalog.max(p.oid::pg_catalog.int8) FROM pg_catalog.pg_proc p "
    "   WHERE p.pronamespace OPERATOR(pg_catalog.=) n.oid) "
    "FROM pg_catalog.pg_namespace n WHERE n.nspname OPERATOR(pg_catalog.=) %s"
)
_ROLES = (
    "SELECT r.rolname::pg_catalog.text, r.oid::pg_catalog.int8, r.rolcanlogin, "
    "  r.rolsuper OR r.rolcreaterole OR r.rolreplication OR r.rolbypassrls, "
    "  pg_catalog.shobj_description(r.oid, 'pg_authid') "
    "FROM pg_catalog.pg_roles r "
)
# The roles a role is a direct member of, by name, sorted: what a bundle's label records.
_GROUPS_OF = (
    "ARRAY(SELECT g.rolname::pg_catalog.text FROM pg_catalog.pg_auth_members m "
    "  JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) m.roleid "
    "  WHERE m.member OPERATOR(pg_catalog.=) {} ORDER BY 1)"
)
_ROLES_AND_GROUPS = _ROLES.replace(
    " FROM pg_catalog.pg_roles r ",
    ", " + _GROUPS_OF.format("r.oid") + " FROM pg_catalog.pg_roles r ",
)
_NAMED = "WHERE r.rolname OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.text[])"
_ROLES_NAMED = _ROLES + _NAMED
_ROLES_AND_GROUPS_NAMED = _ROLES_AND_GROUPS + _NAMED
_UNSEEN: Any = object()
_SESSIONS_OF = (
    "SELECT a.usesysid::pg_catalog.int8, pg_catalog.count(*) "
    "FROM pg_catalog.pg_stat_activity a "
    "WHERE a.usesysid OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.oid[]) "
    "AND a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid() GROUP BY 1"
)
_TERMINATE_OIDS = (
    "SELECT pg_catalog.count(pg_catalog.pg_terminate_backend(a.pid)) "
    "FROM pg_catalog.pg_stat_activity a "
    "WHERE a.usesysid OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.oid[]) "
    "AND a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()"
)
_CONN_OK = pq.ConnStatus.OK
_IDLE = pq.TransactionStatus.IDLE


# Roles labelled before labels carried a MAC: their comment is `jitc:` and JSON.
# A range on the name, not starts_with(): the index on role names serves it, where a scan of a
# pg_authid bloated by role churn takes tens of milliseconds.
_PREFIXED = (
    "WHERE r.rolname OPERATOR(pg_catalog.>=) %s::pg_catalog.name "
    "AND r.rolname OPERATOR(pg_catalog.<) %s::pg_catalog.name "
)
# Roles whose names end with one of these grant-id tails (a grant's role under any prefix).
_ENDING = (
    _ROLES + "WHERE pg_catalog.right(r.rolname::pg_catalog.text, 24) "
    "OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.text[])"
)
# Roles with a current label (`jitc:<mac>.`), under any prefix.
_LABELLED = (
    _ROLES + "WHERE pg_catalog.starts_with(pg_catalog.shobj_description(r.oid, 'pg_authid'), "
    "'jitc:') AND NOT pg_catalog.starts_with("
    "pg_catalog.shobj_description(r.oid, 'pg_authid'), 'jitc:{')"
)
_LEGACY = (
    _ROLES + _PREFIXED + "AND pg_catalog.starts_with("
    "pg_catalog.shobj_description(r.oid, 'pg_authid'), 'jitc:{')"
)


# Schema fingerprints by (host, port, database, schema): (when read, value). Per process, so
# that batches on new connections share them too; see `_lookup`.
_FINGERPRINTS: dict[tuple[str, int, str, str], tuple[float, str]] = {}
_FINGERPRINTS_LOCK = threading.Lock()


class _Role(NamedTuple):
    # A tuple, not a frozen dataclass: several are made per grant and revoke, and a frozen
    # dataclass sets each field through object.__setattr__.
    name: str
    oid: int
    login: bool
    privileged: bool
    label: dict[str, Any] | None
    # The roles it is a direct member of; read only where a bundle is looked up.
    groups: tuple[str, ...] = ()


def plan_statements(connection: Connection, spec: GrantSpec) -> list[str]:
    """What a grant runs, password and label masked; a bundle's statements run on first use."""
    permission = spec.permission
    assert isinstance(permission, Permission)
    name = role_name(connection, spec.grant_id)
    r = Renderer(None)
    label = r("'jitc:…'")
    if permission.mode == "membership":
        statements = _membership_statements(r, name, member_name(spec), spec.resources, label, 15)
        return [r.text(s) for s in statements]
    bundles = [_bundle_of(connection, spec, resource) for resource in spec.resources]
    statements = _user_statements(r, connection, spec, name, bundles, r(MASK), label, 15)
    for bundle, resource in zip(bundles, spec.resources, strict=True):
        statements += _bundle_statements(connection, permission, bundle, resource)
    return [r.text(s) for s in statements]


def _bundle_of(connection: Connection, spec: GrantSpec, resource: str) -> str:
    permission = spec.permission
    assert isinstance(permission, Permission)
    return bundle_name(
        connection, spec.integration, spec.permission_name, resource, permission.statement_texts()
    )


def _ident(dotted: str) -> sql.Identifier:
    return sql.Identifier(*dotted.split("."))


# Any ACL entry of this database, or a shared one, that lets the role pass a privilege on.
_GRANTABLE = (
    "WITH b AS (SELECT r.oid FROM pg_catalog.pg_roles r "
    "  WHERE r.rolname OPERATOR(pg_catalog.=) %s), "
    "acls AS ("
    "  SELECT relacl AS acl FROM pg_catalog.pg_class"
    "  UNION ALL SELECT attacl FROM pg_catalog.pg_attribute WHERE attacl IS NOT NULL"
    "  UNION ALL SELECT nspacl FROM pg_catalog.pg_namespace"
    "  UNION ALL SELECT proacl FROM pg_catalog.pg_proc"
    "  UNION ALL SELECT typacl FROM pg_catalog.pg_type"
    "  UNION ALL SELECT lanacl FROM pg_catalog.pg_language"
    "  UNION ALL SELECT lomacl FROM pg_catalog.pg_largeobject_metadata"
    "  UNION ALL SELECT fdwacl FROM pg_catalog.pg_foreign_data_wrapper"
    "  UNION ALL SELECT srvacl FROM pg_catalog.pg_foreign_server"
    "  UNION ALL SELECT datacl FROM pg_catalog.pg_database"
    "  UNION ALL SELECT spcacl FROM pg_catalog.pg_tablespace) "
    "SELECT EXISTS (SELECT 1 FROM acls, pg_catalog.aclexplode(acls.acl) a, b "
    "  WHERE acls.acl IS NOT NULL AND a.grantee OPERATOR(pg_catalog.=) b.oid "
    "  AND a.is_grantable)"
)


# Triggers that run a function of these roles on a table that is not theirs.
_GRANTEE_TRIGGERS = (
    "SELECT t.tgname::pg_catalog.text, n.nspname::pg_catalog.text, c.relname::pg_catalog.text "
    "FROM pg_catalog.pg_trigger t "
    "JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) t.tgfoid "
    "JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.tgrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
    "WHERE NOT t.tgisinternal AND p.proowner OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.oid[]) "
    "AND c.relowner OPERATOR(pg_catalog.<>) ALL(%s::pg_catalog.oid[])"
)
# Ends the sessions that block a backend, but never a superuser's or the admin's; a zero pid
# stands for a prepared transaction, which only ROLLBACK PREPARED frees. The last parameter,
# when not null, narrows the sessions to those locking a relation these roles own.
_END_BLOCKERS = (
    "SELECT b.pid, CASE WHEN b.pid OPERATOR(pg_catalog.=) 0 THEN false "
    "  ELSE pg_catalog.pg_terminate_backend(b.pid) END "
    "FROM pg_catalog.unnest(pg_catalog.pg_blocking_pids(%s)) AS b(pid) "
    "LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) b.pid "
    "LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.usesysid "
    "WHERE b.pid OPERATOR(pg_catalog.=) 0 "
    "OR (NOT r.rolsuper AND r.rolname OPERATOR(pg_catalog.<>) ALL(%s::pg_catalog.text[]) "
    "  AND (%s::pg_catalog.oid[] IS NULL OR EXISTS (SELECT 1 FROM pg_catalog.pg_locks l "
    "    JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) l.relation "
    "    WHERE l.pid OPERATOR(pg_catalog.=) b.pid AND l.granted "
    "    AND l.database OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d "
    "      WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()) "
    "    AND c.relowner OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.oid[]))))"
)


# What the roles own in this database that someone else may use: relations with a grant to
# another role (on the relation or on one of its columns), routines (PUBLIC may EXECUTE one
# whose ACL is the default), large objects with a grant. Kind, schema, name, identity
# arguments (routines), the other roles in the ACL ('' for PUBLIC).
_REACH = (
    "SELECT CASE WHEN c.relkind OPERATOR(pg_catalog.=) 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, "
    "  n.nspname::pg_catalog.text, c.relname::pg_catalog.text, '', "
    "  pg_catalog.array_agg(DISTINCT COALESCE(g.rolname::pg_catalog.text, '')) "
    "FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
    # a column's grants are in pg_attribute only: a table whose ACL is the default may still
    # hand out a column (REVOKE ALL ON TABLE takes the column grants too)
    "CROSS JOIN LATERAL (SELECT x.grantee FROM pg_catalog.aclexplode(c.relacl) x "
    "  UNION ALL SELECT y.grantee FROM pg_catalog.pg_attribute t "
    "  CROSS JOIN pg_catalog.aclexplode(t.attacl) y "
    "  WHERE t.attrelid OPERATOR(pg_catalog.=) c.oid AND t.attacl IS NOT NULL) a "
    "LEFT JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) a.grantee "
    "WHERE c.relowner OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.oid[]) "
    "AND a.grantee OPERATOR(pg_catalog.<>) c.relowner "
    # another session's temporary objects cannot be named; they end with that session
    "AND NOT pg_catalog.starts_with(n.nspname::pg_catalog.text, 'pg_temp_') "
    "GROUP BY 1, 2, 3, 4 "
    "UNION ALL "
    "SELECT 'ROUTINE', n.nspname::pg_catalog.text, p.proname::pg_catalog.text, "
    "  pg_catalog.pg_get_function_identity_arguments(p.oid), "
    "  pg_catalog.array_agg(DISTINCT COALESCE(g.rolname::pg_catalog.text, '')) "
    "FROM pg_catalog.pg_proc p "
    "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace "
    "CROSS JOIN pg_catalog.aclexplode(COALESCE(p.proacl, "
    "  pg_catalog.acldefault('f', p.proowner))) a "
    "LEFT JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) a.grantee "
    "WHERE p.proowner OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.oid[]) "
    "AND a.grantee OPERATOR(pg_catalog.<>) p.proowner "
    "AND NOT pg_catalog.starts_with(n.nspname::pg_catalog.text, 'pg_temp_') "
    "GROUP BY 1, 2, 3, 4 "
    "UNION ALL "
    "SELECT 'LARGE OBJECT', '', l.oid::pg_catalog.text, '', "
    "  pg_catalog.array_agg(DISTINCT COALESCE(g.rolname::pg_catalog.text, '')) "
    "FROM pg_catalog.pg_largeobject_metadata l "
    "CROSS JOIN pg_catalog.aclexplode(l.lomacl) a "
    "LEFT JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) a.grantee "
    "WHERE l.lomowner OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.oid[]) "
    "AND a.grantee OPERATOR(pg_catalog.<>) l.lomowner GROUP BY 1, 2, 3, 4"
)


def _cut_reach(rows: Iterable[Sequence[Any]]) -> list[sql.Composed]:
    """REVOKE ... CASCADE of every grant on the roles' objects to anyone else: no one reaches
    the grantee's tables, its SECURITY DEFINER routines or its large objects through them while
    a drop waits or fails. Names are bound as identifiers; a routine's argument list is the
    server's own rendering (`pg_get_function_identity_arguments`, types quoted by the server),
    the only form that names one overload."""
    statements = []
    for kind, schema, name, arguments, grantees in rows:
        targets = sql.SQL(", ").join(
            sql.SQL("PUBLIC") if not grantee else sql.Identifier(grantee) for grantee in grantees
        )
        if kind == "LARGE OBJECT":
            target: sql.Composable = sql.SQL("LARGE OBJECT {}").format(sql.Literal(int(name)))
        elif kind == "ROUTINE":
            target = sql.SQL("ROUTINE {}({})").format(
                sql.Identifier(schema, name), sql.SQL(str(arguments))
            )
        else:
            target = sql.SQL("{} {}").format(sql.SQL(kind), sql.Identifier(schema, name))
        statements.append(sql.SQL("REVOKE ALL ON {} FROM {} CASCADE").format(target, targets))
    return statements


def _cut(
    conn: psycopg.Connection[Any],
    rows: Sequence[Sequence[Any]],
    retrying: Callable[[Callable[[], None]], None],
) -> None:
    """Run `_cut_reach` each in a savepoint of one transaction: an object that went meanwhile
    or that a REVOKE cannot name must not undo the rest, nor fail the revoke (whatever stays
    is dropped later, or keeps the revoke failed: the final check counts it)."""
    if not rows:
        return

    def run() -> None:
        with conn.transaction():
            for statement in _cut_reach(rows):
                with contextlib.suppress(psycopg.Error), conn.transaction():
                    conn.execute(statement)

    retrying(run)


def _names(names: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(name) for name in names)


def _bundle_statements(
    connection: Connection, permission: Permission, bundle: str, resource: str
) -> list[sql.Composed]:
    role = sql.Identifier(bundle)
    statements = [
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(connection.dbname), role
        )
    ]
    for text in permission.statement_texts():
        statements.append(_format(text, connection, role, resource))
    return statements


def _format(text: str, connection: Connection, role: sql.Identifier, resource: str) -> sql.Composed:
    return sql.SQL(text).format(
        role=role,
        database=sql.Identifier(connection.dbname),
        schema=_ident(resource),
        resource=_ident(resource),
    )


def _user_statements(
    r: Renderer,
    connection: Connection,
    spec: GrantSpec,
    name: str,
    bundles: list[str],
    verifier: Rendered,
    label: Rendered,
    server_version: int,
) -> list[Stmt]:
    permission = spec.permission
    assert isinstance(permission, Permission)
    role = r.ident(name)
    create = r(
        "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION "
        "NOBYPASSRLS CONNECTION LIMIT {} PASSWORD {} VALID UNTIL {}",
        role,
        r.literal(connection.connection_limit),
        verifier,
        r.literal(spec.expires_at.isoformat()),
    )
    statements: list[Stmt] = []
    if server_version >= 16:
        # A member that may not SET ROLE the bundle cannot create objects it would own.
        statements += [
            create,
            r("GRANT {} TO {} WITH INHERIT TRUE, SET FALSE", r.idents(bundles), role),
        ]
    else:
        statements.append(r("{} IN ROLE {}", create, r.idents(bundles)))
    statements.append(r("COMMENT ON ROLE {} IS {}", role, label))
    for guc, value in connection.session_settings().items():
        statements.append(r("ALTER ROLE {} SET {} = {}", role, r.ident(guc), r.literal(value)))
    for resource in spec.resources:
        for text in permission.user_statement_texts():
            statements.append(_format(text, connection, sql.Identifier(name), resource))
    return statements


def _membership_statements(
    r: Renderer,
    name: str,
    member: str,
    groups: Sequence[str],
    label: Rendered,
    server_version: int,
) -> list[Stmt]:
    role = r.ident(name)
    # On 16 and later the member inherits the group's privileges but may not SET ROLE to our
    # intermediate role: it can then neither lock that role's row nor own objects as it.
    edge = " WITH INHERIT TRUE, SET FALSE" if server_version >= 16 else ""
    return [
        r("CREATE ROLE {} NOLOGIN INHERIT", role),
        r("COMMENT ON ROLE {} IS {}", role, label),
        r("GRANT {} TO {}", r.idents(groups), role),
        r("GRANT {} TO {}" + edge, role, r.ident(member)),
    ]


def _transient(exc: psycopg.Error) -> bool:
    """Worth running again: a grant and a revoke of one grant racing for its role name (the one
    that loses finds the other's role when it looks again), a bundle made or dropped by another
    worker, or a concurrent change to the same catalog row."""
    if isinstance(
        exc,
        psycopg.errors.SerializationFailure
        | psycopg.errors.DeadlockDetected
        | psycopg.errors.UniqueViolation
        | psycopg.errors.DuplicateObject
        | psycopg.errors.UndefinedObject,
    ):
        return True
    return isinstance(exc, psycopg.errors.InternalError_) and "concurrently" in str(
        exc.diag.message_primary
    )


# Settings a database's owner could end the admin's session with that only newer servers know:
# idle_session_timeout (14) between two round trips, transaction_timeout (17) in a transaction.
# A server refuses a connection whose options name a setting it does not know, so each goes
# only to a server not known to be older (by host and port, as last seen): the first connection
# to an older one is refused naming the setting, and is made again without it.
_NEWER_SETTINGS = ((140000, "idle_session_timeout"), (170000, "transaction_timeout"))
_SERVER_VERSIONS: dict[tuple[str, int], int] = {}


# libpq reads a CA only from a file: a catalog's sslrootcert_pem is written under a name that is
# its sha256 (a changed CA gets a file of its own), to a directory of this user's alone in the
# temp dir (a Cloud Run, Lambda or Azure Functions instance's only writable place).
_CA_LOCK = threading.Lock()
_CA_DIRECTORY: list[str] = []  # the directory chosen, once per process


def _private(found: os.stat_result, mode: int) -> bool:
    return found.st_uid == os.geteuid() and stat.S_IMODE(found.st_mode) == mode


def ca_directory() -> str:
    """This user's private directory for CA files, checked again at every use: `jitc-ca-<uid>`
    in the temp dir, made 0700; or, when anyone else made or can change that name (a link,
    another owner, other users' access: a local user can plant it before the first connect),
    a fresh one of `mkdtemp`'s for the rest of the process, so the plant neither blocks the
    connector nor is trusted."""
    if _CA_DIRECTORY:
        path = _CA_DIRECTORY[0]
    else:
        path = os.path.join(tempfile.gettempdir(), f"jitc-ca-{os.geteuid()}")
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        found = os.lstat(path)
        if not (stat.S_ISDIR(found.st_mode) and _private(found, 0o700)):
            path = tempfile.mkdtemp(prefix="jitc-ca-")
        _CA_DIRECTORY.append(path)
    found = os.lstat(path)
    if not (stat.S_ISDIR(found.st_mode) and _private(found, 0o700)):
        # Removed (a temp cleaner) and made again by someone else since: never used.
        raise OSError(f"{path} is not a directory of this user's alone (0700) any more")
    return path


def ca_file(pem: str) -> str:
    """The path of a file holding exactly `pem`, for libpq's sslrootcert: checked at every
    connect (its directory ours and 0700, the file ours, 0600, one link, this content), written
    anew otherwise."""
    digest = hashlib.sha256(pem.encode()).hexdigest()
    with _CA_LOCK:
        folder = ca_directory()
        path = os.path.join(folder, f"{digest}.pem")
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as held:
                found = os.fstat(held.fileno())
                if (
                    stat.S_ISREG(found.st_mode)
                    and _private(found, 0o600)
                    and found.st_nlink == 1
                    and held.read(len(pem) + 1) == pem.encode()
                ):
                    return path
        # A fresh name nobody can have planted anything at (O_EXCL, O_NOFOLLOW), renamed over
        # the final one: a link found there is replaced, never followed.
        temporary = os.path.join(folder, f".{digest}.{secrets.token_hex(8)}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(pem)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return path


def system_ca_file() -> str:
    """The host's trust store, as `sslrootcert: system` means it. libpq's own `system` asks
    the OpenSSL it is linked with, and psycopg's binary wheel carries an OpenSSL whose store is
    a folder of its build (/usr/lib/psycopg-openssl) that no host has: on Lambda, Cloud Run and
    Azure Functions it would trust nothing. The interpreter's OpenSSL knows the host's
    (`SSL_CERT_FILE` first, as OpenSSL reads it)."""
    found = ssl.get_default_verify_paths().cafile
    if not found:
        raise OSError("no CA bundle of the system found (set SSL_CERT_FILE)")
    return found


def admin_connect(s: Connection, dbname: str, secret: Secret | None) -> psycopg.Connection[Any]:
    """The admin connection, as every session and the credential rotation open it."""
    where = f"PostgreSQL {s.host}:{s.port}/{dbname} as {s.user}"
    sslrootcert = s.sslrootcert
    try:
        if s.sslrootcert_pem is not None:
            sslrootcert = ca_file(s.sslrootcert_pem)
        elif sslrootcert == "system":
            # verify-full, which the catalog requires with `system`, checks the name.
            sslrootcert = system_ca_file()
    except OSError as exc:
        raise TargetError(f"cannot connect to {where}: {exc}") from None
    # Pinned at connect, before any statement: no schema a user can create in is searched,
    # and no lock a user holds can stall us for longer than these bounds. A database's owner
    # (any CREATEDB user, for a database PUBLIC may connect to) may set defaults for every
    # connection there: `role` would make the admin act as that owner, read-only transactions
    # would keep what a grantee made there from going, exit_on_error would end the connection
    # at a lock timeout we recover from, client_encoding SQL_ASCII would have the driver hand
    # back every name and label as bytes (each revoke there failing), and any other encoding
    # would be the one statements are rendered in (jitc.templates.postgresql_sql); a timeout
    # of 1 ms (_NEWER_SETTINGS) would end every session there. Ours win.
    # application_name goes with these rather than as libpq's own parameter: libpq makes the
    # whole connection again without it whenever the server refuses the start with SQLSTATE
    # 42704 (its guess at a pre-9.0 server), which is also what a server older than
    # _NEWER_SETTINGS answers. A first connection to PostgreSQL 14-16 (every cold start) would
    # take three attempts, and three backends, instead of two.
    options = (
        "-c application_name=jit-connector "
        "-c role=none -c default_transaction_read_only=off -c exit_on_error=off "
        "-c client_encoding=UTF8 "
        "-c search_path=pg_catalog,pg_temp "
        f"-c lock_timeout={s.admin_lock_timeout} "
        f"-c statement_timeout={s.admin_statement_timeout} "
        "-c idle_in_transaction_session_timeout=60s"
    )
    params: dict[str, Any] = {
        "host": s.host,
        "port": s.port,
        "dbname": dbname,
        "user": s.user,
        "sslmode": s.effective_sslmode,
        "connect_timeout": s.connect_timeout,
        # A connection kept across batches may have been cut without a word (a NAT's idle
        # timeout, a frozen function): data the server never acknowledges fails the statement
        # within this bound instead of hanging until the function's timeout.
        "tcp_user_timeout": s.connect_timeout * 1000,
        "sslrootcert": sslrootcert,
        "require_auth": s.effective_require_auth,
        "channel_binding": s.effective_channel_binding,
    }
    if secret is not None:
        params["password"] = secret.reveal()
    server = (s.host, s.port)
    known = _SERVER_VERSIONS.get(server)
    newer = [name for since, name in _NEWER_SETTINGS if known is None or known >= since]
    dropped: set[str] = set()
    try:
        while True:
            params["options"] = options + "".join(f" -c {name}=0" for name in newer)
            try:
                conn = psycopg.connect(
                    make_conninfo(**{k: v for k, v in params.items() if v is not None}),
                    autocommit=True,
                )
                break
            except psycopg.OperationalError as exc:
                # Named in the message, translated or not; anything else is raised.
                text = _without_names(exc, s.host, dbname, s.user)
                unknown = [name for name in newer if name in text]
                if not unknown:
                    raise
                dropped.update(unknown)
                newer = [name for name in newer if name not in unknown]
    except psycopg.Error as exc:
        text = _without_names(exc, s.host, dbname, s.user)
        if refused_credential(exc, text):
            raise AuthenticationFailed(f"{where}: the admin credential was refused") from None
        raise TargetError(f"cannot connect to {where}: {connect_failure(text)}") from None
    version = conn.info.server_version
    _SERVER_VERSIONS[server] = version
    missing = {name for since, name in _NEWER_SETTINGS if since <= version} - set(newer)
    if missing:
        conn.close()
        if missing & dropped:
            # Left out after an error that named it, on a server that knows it (a database
            # named after it, say): that error was another one.
            raise TargetError(f"cannot connect to {where}: {', '.join(sorted(missing))} refused")
        return admin_connect(s, dbname, secret)  # upgraded since last seen: now it is known
    # Never prepared: psycopg forgets every prepared statement of a connection (and sends
    # DEALLOCATE ALL) after any statement that DROPs, ALTERs or rolls back, as every revoke
    # does. A query would be prepared (an extra round trip outside a pipeline) for one use or
    # two, and every execute would count its uses.
    conn.prepare_threshold = None
    return conn


# Why a connection failed, from libpq's or the server's message (untranslated, as a function's
# locale leaves them; libpq gives a failed connection no SQLSTATE): the operator learns which
# setting to look at, and the message itself, which names hosts, users and databases, never
# reaches an outcome or a log. The patterns are compiled once a connection fails, not at every
# cold start.
_CONNECT_FAILURES = (
    (r"invalid dsn|connection info string", "not a valid connection string"),
    (r"password authentication failed", "the server refused the user or the password"),
    (r"could not translate host name|failed to resolve host", "the host name does not resolve"),
    (r"Connection refused", "connection refused: nothing listens at the host and port"),
    (r"timeout expired", "no answer within connect_timeout"),
    (r"root certificate file .* does not exist", "no CA to check the server's certificate against"),
    (r"certificate verify failed", "the server's certificate is not signed by a trusted CA"),
    (r"does not match host name", "the server's certificate does not name the host"),
    (r"server does not support SSL", "the server offers no TLS"),
    (r"no pg_hba\.conf entry", "the server's pg_hba.conf has no entry for this connection"),
    (r"channel binding", "channel binding was required and not done"),
    (
        r"authentication method requirement",
        "the server asked for an authentication method require_auth refuses",
    ),
    (r'FATAL: +database "[^\n]*" does not exist', "the database does not exist"),
    (r'FATAL: +role "[^\n]*" does not exist', "the role does not exist"),
    (r"permission denied for database", "the admin may not connect to the database (CONNECT)"),
    (
        r"is not currently accepting connections",
        "the database accepts no connections (ALLOW_CONNECTIONS false)",
    ),
    (
        r"too many (clients|connections)|remaining connection slots are reserved",
        "the server has no connection slot left",
    ),
    (
        r"the database system is (starting up|shutting down|in recovery mode|not yet accepting)",
        "the server is not accepting connections",
    ),
)


def _without_names(exc: psycopg.Error, *names: str) -> str:
    """The error's text with each name we connected with, quoted as the server and libpq quote
    it, taken out. A database's name is anyone's to choose who may create one (the bundle check
    connects to every database listed), and its words are not the server's: a database named
    `password authentication failed` would otherwise pass for a refused admin password, which
    the engine answers by reading the secret again and running the grant again."""
    text = str(exc)
    for name in sorted({n for n in names if n}, key=len, reverse=True):
        text = text.replace(f'"{name}"', '""')
    return text


def connect_failure(text: str) -> str:
    """What went wrong connecting, in words of our own, from the error's text without the names
    connected with (`_without_names`); "OperationalError" when it is none of those known."""
    for pattern, reason in _CONNECT_FAILURES:
        if re.search(pattern, text):
            return reason
    return "OperationalError"


def refused_credential(exc: psycopg.Error, text: str) -> bool:
    """The server refused the password (28P01) or the role (28000), as opposed to being down:
    libpq gives no SQLSTATE for a failed connection attempt, only the server's message.
    `text`: the error's text without the names connected with (`_without_names`)."""
    if exc.sqlstate in ("28P01", "28000"):
        return True
    return "password authentication failed" in text or "authentication failed for user" in text


class PostgreSQLSession(KeptSession):
    """One admin connection, used for a batch. Each step is its own transaction."""

    def __init__(
        self, integration: str, connection: Connection, secret: Secret | None, key: LabelKey
    ) -> None:
        self.integration = integration
        self.settings = connection
        self._key: LabelKey | None = key
        self._secret = secret
        self._verified: dict[tuple[str, str | None], dict[str, Any] | None] = {}
        self.conn = self._connect(connection.dbname)
        self.sql = Renderer(self.conn)
        self._cursors: dict[str | None, psycopg.Cursor[Any]] = {}
        self.server_version = self.conn.info.server_version // 10000
        # Reported by the server at connect: no round trip. At connect current_user is the same.
        admin = self.conn.info.parameter_status("session_authorization")
        self._admins = {admin or connection.user}
        self._authid_readable: bool | None = None
        self.pool_key: PoolKey | None = None
        # Set when the server refused this session's credential for a new connection: a kept
        # connection logged in earlier proves nothing about it, so none under it is reused.
        self.refused = False

    def _connect(self, dbname: str) -> psycopg.Connection[Any]:
        try:
            return admin_connect(self.settings, dbname, self._secret)
        except AuthenticationFailed:
            self.refused = True
            raise

    def close(self) -> None:
        """Kept for the next batch (postgresql_pool) when idle and healthy, else closed."""
        if len(self._verified) > 100_000:  # labels seen, kept across batches: bounded
            self._verified.clear()
        give_back(self)

    # -- kept across batches (jitc.templates.kept) -----------------------------------------

    def reusable(self) -> bool:
        """Without a round trip: an idle connection the server has ended (terminated backend,
        restart, idle timeout) has something to read, its last message or the end of the
        stream; a healthy one has nothing to say. Anything to read counts as ended: a new
        connection is cheaper than a batch that fails on its first statement."""
        conn = self.conn
        pgconn = conn.pgconn  # what conn.closed and conn.info read, without their wrappers
        if pgconn.status != _CONN_OK or pgconn.transaction_status != _IDLE:
            return False
        try:
            return not ended_by_peer([conn.fileno()])
        except (OSError, ValueError, psycopg.Error):
            return False

    def hand_over(self, secret: Secret | None, key: LabelKey) -> None:
        self._secret = secret
        self._key = key

    def drop_secret(self) -> None:
        self._secret = None
        self._key = None

    def discard(self) -> None:
        self.conn.close()

    # -- reading the ledger ----------------------------------------------------------------

    def _roles(self, names: Sequence[str]) -> dict[str, _Role]:
        rows = self._exec(_ROLES_NAMED, (list(names),)).fetchall()
        return {row[0]: self._role(row) for row in rows}

    def _role(self, row: Sequence[Any]) -> _Role:
        name, oid, login, privileged, comment, *groups = row
        name = str(name)
        key = (name, comment)
        label = self._verified.get(key, _UNSEEN)
        if label is _UNSEEN:  # the sweep lists, then revokes: verify each label once
            label = self._verified[key] = verify_label(self.key, KIND, name, comment)
        held = tuple(map(str, groups[0])) if groups else ()
        return _Role(name, int(oid), bool(login), bool(privileged), label, held)

    def _prefixed(self, query: str) -> list[tuple[Any, ...]]:
        """Rows of a query over the roles named with this integration's prefix."""
        prefix = self.settings.role_prefix
        after = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return self.conn.execute(query, (prefix, after)).fetchall()

    def _ours(self, role: _Role, kind: str = "grant") -> dict[str, Any] | None:
        label = role.label
        if label is None or label.get("kind") != kind:
            return None
        if label.get("integration") != self.integration:
            return None
        return label

    def _exec(self, query: str | bytes, params: Sequence[Any] | None = None) -> psycopg.Cursor[Any]:
        """`conn.execute` on a cursor kept for this query, a module constant (the hot path's
        queries only: one cursor each), or on one kept for all rendered statements. Making a
        cursor costs more client work than many a query's own; one that runs the same query
        again keeps its adaptation. Its rows are read before it runs again."""
        key = query if type(query) is str else None
        cursor = self._cursors.get(key)
        if cursor is None:
            cursor = self._cursors[key] = self.conn.cursor()
        return cursor.execute(query, params)

    def _label(self, name: str, label: dict[str, Any]) -> Rendered:
        return self.sql.literal(sign_label(self.key, KIND, name, label))

    def _run(self, statements: Sequence[Stmt]) -> None:
        """One round trip for many statements: all values are already bound client-side."""
        if statements:
            self._exec(self.sql.join(statements))

    def _atomic(self, statements: Sequence[Stmt]) -> None:
        """One transaction in one round trip. On an error the server skips the rest, COMMIT
        included, and leaves the transaction failed: it is rolled back before raising."""
        if not statements:
            return
        try:
            self._exec(self.sql.join([self.sql("BEGIN"), *statements, self.sql("COMMIT")]))
        except psycopg.Error:
            if self.conn.info.transaction_status != pq.TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):
                    self.conn.execute("ROLLBACK")
            raise

    def _retrying(self, step: Callable[[], T]) -> T:
        """Run a step again when the server reports a transient conflict: a company's own GRANT
        touching the same object, or a grant and a revoke of one grant racing for its name."""
        for attempt in range(4):
            try:
                return step()
            except psycopg.Error as exc:
                if attempt == 3 or not _transient(exc):
                    raise
                time.sleep(0.02 * 2**attempt)
        raise AssertionError("unreachable")

    # -- grant -----------------------------------------------------------------------------

    def grant(self, spec: GrantSpec) -> GrantResult:
        return self._retrying(lambda: self._grant_once(spec))

    def _grant_once(self, spec: GrantSpec) -> GrantResult:
        permission = spec.permission
        assert isinstance(permission, Permission)
        name = role_name(self.settings, spec.grant_id)
        resources = spec.resources if permission.mode == "ephemeral" else ()
        wanted = [_bundle_of(self.settings, spec, resource) for resource in resources]
        # A grant lost to a server crash fails closed (the role is simply not there), so its
        # commit need not wait for the disk; revokes always do.
        statements: list[Stmt] = [self.sql("SET LOCAL synchronous_commit = off")]
        early: list[GrantResult] = []

        def render() -> None:
            # An ephemeral grant's own statements need nothing the lookup answers (its
            # bundles are named by the catalog): they are rendered, and its credentials
            # sealed, while the server looks.
            if permission.mode == "ephemeral":
                result = self._create(spec, name, wanted, statements)
                if result.credentials is not None:
                    spec.seal_ahead(result.credentials)
                early.append(result)

        known = self._lookup([name, *wanted], resources, render)
        existing = known[0].get(name)
        if existing is not None:
            return self._regrant(spec, existing)
        bundles = self._bundles(spec, {}, known)
        if early:
            self._atomic(statements)
            return early[0]
        result = self._create(spec, name, bundles, statements)
        self._atomic(statements)
        return result

    def grant_many(self, specs: Sequence[GrantSpec]) -> list[GrantResult | Exception]:
        """A queue batch's grants in one transaction, each in its own savepoint so that one
        failure fails only itself; each bundle is made or refreshed once, beforehand. Results
        are in order: a GrantResult, or the exception that grant met (Refused: final)."""
        names = [role_name(self.settings, spec.grant_id) for spec in specs]
        existing = self._roles(names)
        results: list[GrantResult | Exception] = []
        fresh: dict[int, list[str]] = {}
        made: dict[str, str] = {}
        for index, spec in enumerate(specs):
            role = existing.get(names[index])
            try:
                if role is not None:
                    results.append(self._regrant(spec, role))
                    continue
                fresh[index] = self._bundles(spec, made)
            except (Refused, TargetError, psycopg.Error) as exc:
                results.append(exc)
                continue
            results.append(TargetError("not run"))
        order = list(fresh)
        with self.conn.transaction():
            self.conn.execute("SET LOCAL synchronous_commit = off")
            for start in range(0, len(order), GRANT_CHUNK):
                chunk = order[start : start + GRANT_CHUNK]
                try:
                    # The common case: a chunk of grants in one round trip, under one savepoint.
                    with self.conn.transaction():
                        made_here = self._create_many(specs, names, fresh, chunk)
                    for index, result in made_here.items():
                        results[index] = result
                    continue
                except (Refused, TargetError, psycopg.Error):
                    pass  # which grant failed is not known: do the chunk one by one
                for index in chunk:
                    try:
                        with self.conn.transaction():
                            results[index] = self._create(specs[index], names[index], fresh[index])
                    except (Refused, TargetError, psycopg.Error) as exc:
                        results[index] = exc
        return results

    def _bundles(
        self,
        spec: GrantSpec,
        made: dict[str, str],
        known: tuple[dict[str, _Role], dict[str, str]] | None = None,
    ) -> list[str]:
        """The grant's bundle roles, made or brought up to date; `made` remembers a batch's."""
        permission = spec.permission
        assert isinstance(permission, Permission)
        if permission.mode == "membership":
            return []
        self._refuse_public_create()
        wanted = [_bundle_of(self.settings, spec, resource) for resource in spec.resources]
        missing = [name for name in wanted if name not in made]
        if missing and known is None:
            known = self._lookup(missing, spec.resources)
        for name, resource in zip(wanted, spec.resources, strict=True):
            if name not in made:
                assert known is not None
                made[name] = self._bundle(spec, resource, known)
        return wanted

    def _refuse_public_create(self) -> None:
        """Before 16 a member may SET ROLE its bundle: where PUBLIC may CREATE, in any database
        a member can connect to, it would make objects the bundle owns, shared with every later
        member. Checked once per session, in every such database."""
        if self.server_version >= 16 or self.settings.allow_public_create:
            return
        found = public_create_databases(self)
        if found:
            raise Refused(
                "permission",
                "PUBLIC may CREATE in "
                + ", ".join(found)
                + ", which a grantee can reach; on PostgreSQL before 16 it could make objects "
                "as its shared bundle role there. Revoke that CREATE, or set allow_public_create "
                "in the catalog",
            )

    def _create_many(
        self,
        specs: Sequence[GrantSpec],
        names: list[str],
        bundles: dict[int, list[str]],
        chunk: list[int],
    ) -> dict[int, GrantResult]:
        joined = [name for index in chunk for name in bundles[index]]
        statements: list[Stmt] = list(join_lock(self.sql, self.key, joined))
        results = {}
        for index in chunk:
            results[index] = self._create(
                specs[index], names[index], bundles[index], statements, lock=False
            )
        self._run(statements)
        return results

    def _create(
        self,
        spec: GrantSpec,
        name: str,
        bundles: list[str],
        into: list[Stmt] | None = None,
        lock: bool = True,
    ) -> GrantResult:
        """The grant's own statements, inside the caller's transaction; with `into`, they are
        added there for the caller to send, not sent. The bundles' shared locks come first
        (unless the caller took them), so the sweep cannot drop a bundle this grant joins."""
        permission = spec.permission
        assert isinstance(permission, Permission)
        label: dict[str, Any] = {
            "kind": "grant",
            "grant_id": spec.grant_id,
            "integration": self.integration,
            "permission": spec.permission_name,
            "mode": permission.mode,
            "expires_at": spec.expires_at.isoformat(),
            "state": "active",
            "digest": spec.request_digest,
            "identity": self.key.keyed_hash("identity", spec.identity.email),
        }
        password = None
        if permission.mode == "membership":
            self._check_membership(spec)
            member = member_name(spec)
            label.update(member=member, terminate_sessions=permission.terminate_sessions)
            statements = _membership_statements(
                self.sql,
                name,
                member,
                spec.resources,
                self._label(name, label),
                self.server_version,
            )
        else:
            # The bundles it may be a member of (remove_strangers): these, not another
            # permission's, resource's, or version's.
            label["bundles"] = sorted(set(bundles))
            password = self._password(spec)
            statements = list(join_lock(self.sql, self.key, bundles)) if lock else []
            statements += _user_statements(
                self.sql,
                self.settings,
                spec,
                name,
                bundles,
                self.sql.literal(scram_verifier(password)),
                self._label(name, label),
                self.server_version,
            )
        if into is None:
            self._run(statements)
        else:
            into.extend(statements)
        return GrantResult(principal=name, credentials=self._credentials(name, password, spec))

    def _password(self, spec: GrantSpec) -> str:
        return self.key.password(self.integration, spec.grant_id, spec.request_digest)

    def _regrant(self, spec: GrantSpec, role: _Role) -> GrantResult:
        label = self._ours(role)
        if label is None or label.get("grant_id") != spec.grant_id:
            raise Refused(
                "identity.username",
                f"role {role.name!r} already exists and was not created by this connector",
            )
        if label.get("state") == "tombstone":
            raise Refused("request_id", "this grant was already revoked; it will not be made again")
        if label.get("state") != "active":
            raise Refused("request_id", "this grant is being revoked")
        if label.get("digest") != spec.request_digest:
            raise Refused(
                "request_id",
                "this request id was already used for a different request; refused, not merged",
            )
        password = None
        if label.get("mode") == "ephemeral":
            password = self._password(spec)  # the same credentials again: a replay changes nothing
        expires = datetime.fromisoformat(label["expires_at"])
        credentials = self._credentials(role.name, password, spec)
        if credentials is not None:
            credentials["expires_at"] = expires.isoformat()
        return GrantResult(principal=role.name, credentials=credentials, reissued=True)

    def _credentials(
        self, name: str, password: str | None, spec: GrantSpec
    ) -> dict[str, str] | None:
        if password is None:
            return None
        return {
            "username": name,
            "password": password,
            "host": self.settings.login_host or self.settings.host,
            "port": str(self.settings.port),
            "dbname": self.settings.dbname,
            "expires_at": spec.expires_at.isoformat(),
        }

    # -- bundles ---------------------------------------------------------------------------

    def _lookup(
        self,
        names: Sequence[str],
        resources: Iterable[str],
        meanwhile: Callable[[], None] | None = None,
    ) -> tuple[dict[str, _Role], dict[str, str]]:
        """Roles by name, and the fingerprint of each resource's schema, in one round trip;
        `meanwhile` runs once the queries are sent, before their answers are read.

        A fingerprint changes whenever a relation or function appears in or leaves the schema,
        so a bundle is brought up to date for tables created after it (GRANT ... ON ALL TABLES
        covers only those that exist when it runs). A fingerprint read less than
        `schema_check_seconds` ago, by any session of this process, is reused: a stale one can
        only miss tables created since (fewer privileges, never more), which the next grant
        after that picks up."""
        schemas = sorted({resource.split(".", 1)[0] for resource in resources})
        now = time.monotonic()
        ttl = self.settings.schema_check_seconds
        where = (self.settings.host, self.settings.port, self.settings.dbname)
        with _FINGERPRINTS_LOCK:
            fresh = {
                schema: known[1]
                for schema in schemas
                if (known := _FINGERPRINTS.get((*where, schema))) and now - known[0] < ttl
            }
        stale = [schema for schema in schemas if schema not in fresh]
        # A pipeline only when there is more than the one query to send, or work to do while
        # the server answers: otherwise it is the same round trip with its bookkeeping added.
        prints = []
        if stale or meanwhile is not None:
            with self.conn.pipeline():
                roles = self._exec(_ROLES_AND_GROUPS_NAMED, (list(names),))
                prints = [(schema, self.conn.execute(_FINGERPRINT, (schema,))) for schema in stale]
                if meanwhile is not None:
                    meanwhile()
            # Read once the pipeline has ended: read inside it, the rows would cost a flush
            # request and its end a second round trip.
        else:
            roles = self._exec(_ROLES_AND_GROUPS_NAMED, (list(names),))
        found = {row[0]: self._role(row) for row in roles.fetchall()}
        fingerprints = dict(fresh)
        for schema, cursor in prints:
            row = cursor.fetchone()
            fingerprints[schema] = ":".join(str(value) for value in row) if row else "-"
            with _FINGERPRINTS_LOCK:
                _FINGERPRINTS[(*where, schema)] = (now, fingerprints[schema])
        return found, fingerprints

    def _bundle(
        self, spec: GrantSpec, resource: str, known: tuple[dict[str, _Role], dict[str, str]]
    ) -> str:
        permission = spec.permission
        assert isinstance(permission, Permission)
        name = _bundle_of(self.settings, spec, resource)
        roles, fingerprints = known
        fingerprint = fingerprints[resource.split(".", 1)[0]]
        role = roles.get(name)
        if role is not None:
            label = self._ours(role, "bundle")
            if label is None or role.login or role.privileged:
                raise TargetError(f"role {name} has a bundle's name but is not this connector's")
            # Its groups are what its statements gave it, as its label records: a role manager's
            # `GRANT company TO bundle` would widen every grant of the permission, so a bundle
            # whose groups differ is made again below, which takes them away.
            if label.get("fingerprint") == fingerprint and list(role.groups) == label.get("groups"):
                return name
        label = {
            "kind": "bundle",
            "integration": self.integration,
            "permission": spec.permission_name,
            "resource": resource,
            "fingerprint": fingerprint,
            "database": self.settings.dbname,
            "made_at": utcnow().isoformat(),
        }
        bundle = sql.Identifier(name)
        groups = sql.SQL(_GROUPS_OF).format(
            sql.SQL("{}::pg_catalog.regrole::pg_catalog.oid").format(sql.Literal(name))
        )
        with self.conn.transaction():
            if role is None:
                self.conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN NOINHERIT").format(bundle))
            else:
                # Row lock on the bundle: concurrent refreshes of one bundle queue here.
                self.conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(bundle))
                # Out of every group, read under that lock; the statements put back the ones
                # the permission gives.
                held = self.conn.execute(sql.SQL("SELECT ") + groups).fetchone()
                if held and held[0]:
                    self.conn.execute(
                        sql.SQL("REVOKE {} FROM {} CASCADE").format(
                            sql.SQL(", ").join(map(sql.Identifier, held[0])), bundle
                        )
                    )
                    # From 16 a REVOKE of a membership someone else granted only warns.
                    kept = self.conn.execute(sql.SQL("SELECT ") + groups).fetchone()
                    if kept and kept[0]:
                        raise TargetError(
                            f"bundle {name} is a member of {', '.join(kept[0])}, which the "
                            "admin cannot revoke: no grant joins it until that is removed"
                        )
            self._run(_bundle_statements(self.settings, permission, name, resource))
            given = self.conn.execute(sql.SQL("SELECT ") + groups).fetchone()
            label["groups"] = list(given[0]) if given else []
            self._run(
                [
                    self.sql(
                        "COMMENT ON ROLE {} IS {}", self.sql.ident(name), self._label(name, label)
                    )
                ]
            )
            self._refuse_create(name)
            self._refuse_elsewhere(name)
            self._refuse_power(name)
        return name

    def _refuse_power(self, bundle: str) -> None:
        """A catalog's statements may not give the bundle a role that reaches power, nor a
        privilege it may pass on: a member could use the first beyond its grant, and what it
        passed on with the bundle as grantor would outlive every revoke of ours."""
        denied = DENIED_GROUPS | set(self.settings.denied_groups)
        for name, privileged, ours in self._reach(bundle):
            if name == bundle:
                continue
            if privileged or ours or name in self._admins or name in denied:
                raise Refused(
                    "permission",
                    f"the permission's statements make its bundle reach {name!r}, which is a "
                    "superuser, a role manager, holds ADMIN OPTION, is the admin, one of this "
                    "connector's roles or a denied role",
                )
        row = self.conn.execute(_GRANTABLE, (bundle,)).fetchone()
        if row and row[0]:
            raise Refused(
                "permission",
                "the permission's statements grant a privilege WITH GRANT OPTION; a member could "
                "pass it on beyond the grant",
            )

    def _refuse_elsewhere(self, bundle: str) -> None:
        """A bundle may connect to the connection's database only: in another, no check of
        ours looked for PUBLIC CREATE, and before 16 a member could make objects there as the
        bundle."""
        row = self.conn.execute(
            "SELECT pg_catalog.string_agg(d.datname::pg_catalog.text, ', ') "
            "FROM pg_catalog.pg_database d, pg_catalog.aclexplode(d.datacl) a, "
            "pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) %s "
            "AND a.grantee OPERATOR(pg_catalog.=) r.oid "
            "AND a.privilege_type OPERATOR(pg_catalog.=) ANY('{CONNECT,TEMPORARY}') "
            "AND d.datname OPERATOR(pg_catalog.<>) pg_catalog.current_database()",
            (bundle,),
        ).fetchone()
        if row and row[0]:
            raise Refused(
                "permission",
                f"the permission's statements let its bundle connect to database(s) {row[0]}; "
                "a permission covers the connection's database only",
            )

    def _refuse_create(self, bundle: str) -> None:
        """A bundle must not hold CREATE anywhere: a member could make objects it owns, which
        would outlive every grant."""
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n, "
            "  pg_catalog.aclexplode(n.nspacl) a, pg_catalog.pg_roles r "
            "  WHERE r.rolname OPERATOR(pg_catalog.=) %s "
            "  AND a.grantee OPERATOR(pg_catalog.=) r.oid "
            "  AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE') "
            "OR EXISTS (SELECT 1 FROM pg_catalog.pg_database d, "
            "  pg_catalog.aclexplode(d.datacl) a, pg_catalog.pg_roles r "
            "  WHERE r.rolname OPERATOR(pg_catalog.=) %s "
            "  AND a.grantee OPERATOR(pg_catalog.=) r.oid "
            "  AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE')",
            (bundle, bundle),
        ).fetchone()
        if row and row[0]:
            raise Refused(
                "permission",
                "the permission's statements grant CREATE; objects made with it would outlive "
                "the grant (use the built-in owner template)",
            )

    # -- membership ------------------------------------------------------------------------

    def _reach(self, name: str) -> list[tuple[str, bool, bool]]:
        """Every role `name` is a member of, directly or through groups, itself included:
        (name, privileged, one of this connector's roles). A role that holds ADMIN OPTION on
        any membership counts as privileged: a member could grant that role to itself or to
        anyone, and such a grant outlives ours."""
        rows = self.conn.execute(
            "WITH RECURSIVE up(oid) AS ("
            "  SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) %s"
            "  UNION"
            "  SELECT m.roleid FROM pg_catalog.pg_auth_members m"
            "  JOIN up ON m.member OPERATOR(pg_catalog.=) up.oid) "
            "SELECT r.rolname::pg_catalog.text, r.rolsuper OR r.rolcreaterole OR r.rolreplication "
            "  OR r.rolbypassrls OR r.rolcreatedb OR EXISTS (SELECT 1 FROM "
            "  pg_catalog.pg_auth_members a WHERE a.member OPERATOR(pg_catalog.=) r.oid "
            "  AND a.admin_option), "
            "  pg_catalog.shobj_description(r.oid, 'pg_authid') "
            "FROM up JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) up.oid",
            (name,),
        ).fetchall()
        return [
            (str(role), bool(privileged), verify_label(self.key, KIND, str(role), text) is not None)
            for role, privileged, text in rows
        ]

    def _check_membership(self, spec: GrantSpec) -> None:
        member = member_name(spec)
        role = self._roles([member]).get(member)
        if role is None or not role.login:
            raise Refused("identity.username", f"no login role {member!r} exists")
        if member in self._admins or role.privileged or role.label is not None:
            raise Refused(
                "identity.username",
                f"role {member!r} is the admin, a superuser or a role manager: never a grantee",
            )
        denied = DENIED_GROUPS | set(self.settings.denied_groups)
        for index, group in enumerate(spec.resources):
            reached = self._reach(group)
            if not reached:
                raise Refused(f"resources[{index}]", f"group role {group!r} does not exist")
            for name, privileged, ours in reached:
                if privileged or ours or name in self._admins or name in denied:
                    raise Refused(
                        f"resources[{index}]",
                        f"group role {group!r} reaches {name!r}, which is a superuser, a role "
                        "manager, holds ADMIN OPTION, is the admin, one of this connector's "
                        "roles or a denied role",
                    )

    # -- revoke ----------------------------------------------------------------------------

    def revoke(self, grant_id: str, tombstone_until: datetime) -> RevokeResult:
        return self._revoke([grant_id], tombstone_until)[grant_id]

    def revoke_many(
        self, grant_ids: Sequence[str], tombstone_until: datetime
    ) -> dict[str, RevokeResult]:
        """The sweep's path: the same steps as `revoke`, for a chunk of grants at a time."""
        results: dict[str, RevokeResult] = {}
        for start in range(0, len(grant_ids), REVOKE_CHUNK):
            results.update(self._revoke(grant_ids[start : start + REVOKE_CHUNK], tombstone_until))
        return results

    def _classify(
        self, grant_ids: Sequence[str], until: datetime, results: dict[str, RevokeResult]
    ) -> list[tuple[_Role, dict[str, Any]]]:
        """Which grants have a live role; a grant with none gets a tombstone, so that a grant
        delivered after its revoke is refused."""
        names = {g: role_name(self.settings, g) for g in grant_ids}
        roles = self._roles(list(names.values()))
        missing = {g for g in grant_ids if names[g] not in roles}
        # A grant made before labels carried a MAC has another name: looked for only when the
        # grant has no role under its current name.
        live = self._legacy(self._prefixed(_LEGACY), missing) if missing else []
        # No live role under today's name (none, or a tombstone): a revoke before its grant, a
        # repeated one, or a grant made (or made again) before `role_prefix` changed, whose role
        # has the old prefix.
        stoned = {
            g
            for g in grant_ids
            if names[g] in roles and (self._ours(roles[names[g]]) or {}).get("state") == "tombstone"
        }
        unnamed = (missing | stoned) - {str(label.get("grant_id")) for _, label in live}
        elsewhere = self._renamed_roles(unnamed) if unnamed else {}
        stones: list[Stmt] = []
        for grant_id in grant_ids:
            role = roles.get(names[grant_id])
            if role is None:
                stones += self._tombstone(names[grant_id], grant_id, until)
                if grant_id in elsewhere:
                    live.append(elsewhere[grant_id])
                else:
                    results[grant_id] = RevokeResult(found=False)
                continue
            label = self._ours(role)
            if label is None or label.get("grant_id") != grant_id or role.privileged:
                # Someone else's role under our name, or ours with its label changed: acting on
                # it could harm what we did not make, and leaving it silently could leave access.
                results[grant_id] = RevokeResult(
                    found=True,
                    principal=role.name,
                    residual=[f"role {role.name} does not carry this grant's label; left alone"],
                    verified=False,
                )
            elif label.get("state") == "tombstone":
                if grant_id in elsewhere:
                    live.append(elsewhere[grant_id])
                else:
                    results[grant_id] = RevokeResult(found=False)
            else:
                live.append((role, label))
        if stones:
            with self.conn.transaction():
                self._run(stones)
        return live

    def _renamed_roles(self, grant_ids: set[str]) -> dict[str, tuple[_Role, dict[str, Any]]]:
        """Live roles of these grants under another name than today's `role_prefix` gives
        them: what a revoke removes was fixed when the grant was made. A role counts only if
        its label verifies for its own name, names the grant, and is not privileged."""
        rows = self._exec(_ENDING, ([g[1:] for g in grant_ids],)).fetchall()
        found: dict[str, tuple[_Role, dict[str, Any]]] = {}
        for row in rows:
            role = self._role(row)
            label = self._ours(role)
            if label is None or role.privileged or label.get("state") == "tombstone":
                continue
            grant_id = str(label.get("grant_id"))
            if grant_id in grant_ids and role.name.endswith(grant_id[1:]):
                found[grant_id] = (role, label)
        return found

    def _legacy(
        self, rows: Sequence[Sequence[Any]], grant_ids: set[str] | None
    ) -> list[tuple[_Role, dict[str, Any]]]:
        """Live roles of these grants made before labels carried a MAC (`jitc:{...}`), so that
        revoking a grant made before an upgrade still ends it. Only a role whose name is the
        one that version derived from the grant id (`{prefix}{user}_{id[1:11]}`,
        `{prefix}m_{id[1:13]}`) and that is neither privileged nor a tombstone is acted on; it
        gets no tombstone of its own (the grant's current name takes one). With no grant ids
        given, every such role of this integration."""
        prefix = self.settings.role_prefix
        found = []
        for name, oid, login, privileged, comment in rows:
            try:
                label = json.loads(str(comment)[len("jitc:") :])
            except ValueError:
                continue
            if not isinstance(label, dict) or label.get("v") != 1 or privileged:
                continue
            grant_id = str(label.get("grant_id", ""))
            mode = label.get("mode", "ephemeral")
            expected = (
                name == f"{prefix}m_{grant_id[1:13]}"
                if mode == "membership"
                else str(name).endswith(f"_{grant_id[1:11]}")
            )
            if (
                (grant_ids is not None and grant_id not in grant_ids)
                or label.get("integration") != self.integration
                or label.get("state") not in ("active", "revoking")
                or not expected
                or "expires_at" not in label
            ):
                continue
            current = {
                "kind": "grant",
                "grant_id": grant_id,
                "integration": self.integration,
                "permission": label.get("permission", ""),
                "mode": mode,
                "expires_at": label["expires_at"],
                "state": "revoking",
                "legacy": True,
            }
            if mode == "membership":
                current.update(
                    member=label.get("member", ""),
                    terminate_sessions=bool(label.get("terminate_sessions")),
                )
            found.append((_Role(str(name), int(oid), bool(login), False, None), current))
        return found

    def _revoke(
        self, grant_ids: Sequence[str], tombstone_until: datetime
    ) -> dict[str, RevokeResult]:
        """The common case first: drop an ephemeral grant's role with what it owns and holds
        here, in one transaction, then end its sessions. When that cannot commit (something of
        the role's elsewhere, a lock), nothing changed, and the revoke goes step by step:
        disable (committed on its own, so access ends whatever follows), end sessions, clean
        every database, verify, drop. The role is dropped only once nothing of it is left."""
        results: dict[str, RevokeResult] = {}
        live = self._retrying(lambda: self._classify(grant_ids, tombstone_until, results))
        if not live:
            # A retry, or a revoke of a grant already gone: what members left on the bundles
            # may still be there (an earlier attempt could not remove it), and while it is,
            # no revoke says revoked.
            leftovers = self._bundle_leftovers(None)
            for result in results.values():
                if leftovers and result.verified:
                    result.residual = [*result.residual, *leftovers]
                    result.verified = False
                    result.found = True
            return results
        roles = [role for role, _ in live]
        labels = {role.name: label for role, label in live}
        residual: dict[str, list[str]] = {role.name: [] for role in roles}
        left: dict[str, list[str]] = {role.name: [] for role in roles}
        prefetched: list[Any] = []
        dropped = self._drop_at_once(
            [r for r in roles if not labels[r.name].get("member")], labels, tombstone_until
        )
        if dropped:
            # A dropped role's open sessions live on until ended; no new one can start.
            remaining = self._end_sessions(
                [r.oid for r in roles if r.name in dropped],
                prefetched if self.server_version < 16 else None,
            )
            for role in roles:
                if remaining.get(role.oid):
                    left[role.name].append(f"{remaining[role.oid]} session(s) of {role.name} open")
        rest = [(r, labels[r.name]) for r in roles if r.name not in dropped]
        if rest:
            disabled_at = self._disable(rest)
            self._cut_elsewhere([role for role, _ in rest])
            holders = self._holders(rest)
            self._terminate_all(sorted({h for h in holders.values() if h}))
            others = [role for role, _ in rest]
            self._clean(others, residual)
            left.update(self._left(others, labels, disabled_at))
            dropped |= self._drop(
                [r for r in others if not left[r.name]], labels, tombstone_until, residual
            )
        bundle_left = self._bundle_leftovers(live, prefetched or None)
        for role, label in live:
            if not label.get("member"):
                left[role.name] += bundle_left
        merged: set[str] = set()
        for role, label in live:
            residual[role.name] += left[role.name]
            gone = not left[role.name]
            grant_id = label["grant_id"]
            result = RevokeResult(
                found=True,
                principal=str(label.get("member") or role.name),
                expires_at=datetime.fromisoformat(label["expires_at"]),
                residual=residual[role.name],
                verified=gone,
            )
            if grant_id in merged:  # a grant's current role and one from before an upgrade
                earlier = results[grant_id]
                result.residual = earlier.residual + result.residual
                result.verified = earlier.verified and result.verified
            results[grant_id] = result
            merged.add(grant_id)
        for grant_id, result in results.items():  # grants of this call already gone
            if grant_id not in merged and bundle_left and result.verified:
                result.residual = [*result.residual, *bundle_left]
                result.verified = False
                result.found = True
        return results

    def _bundle_leftovers(
        self, live: list[tuple[_Role, dict[str, Any]]] | None, rows: list[Any] | None = None
    ) -> list[str]:
        """Before 16, what members left on any of this integration's bundles is taken away
        (postgresql_bundles); what could not be is returned. Membership grants have no bundle."""
        if self.server_version >= 16:
            return []
        if live is not None and all(label.get("member") for _, label in live):
            return []
        return clean_bundles(self, rows)

    def tidy(self, now: datetime | None = None) -> list[str]:
        """The sweep's housekeeping: bundles no grant uses are dropped; before 16, what members
        left on the others is taken away. Returns what could not be done."""
        left = remove_strangers(self)
        left += remove_foreign_groups(self)
        left += drop_idle_bundles(self, now)
        if self.server_version < 16:
            left += clean_bundles(self)
            left += reset_passwords(self)
        return sorted(set(left))

    def _disable(self, live: list[tuple[_Role, dict[str, Any]]]) -> dict[str, str]:
        """No login, no password, no membership either way, label says revoking: one commit.
        A grantee holding a lock on its own role (an open `ALTER ROLE self`) is ended first."""
        disabled_at: dict[str, str] = {}

        def step() -> None:
            disabled_at.clear()
            oids = [role.oid for role, _ in live]
            with self.conn.pipeline():
                clock = self.conn.execute("SELECT pg_catalog.now()::pg_catalog.text")
                creates = self.conn.execute(
                    "SELECT n.nspname::pg_catalog.text, r.rolname::pg_catalog.text "
                    "FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a, "
                    "pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) a.grantee "
                    "AND a.grantee OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.oid[]) "
                    "AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'",
                    (oids,),
                )
                found = self.conn.execute(
                    "SELECT g.rolname::pg_catalog.text, u.rolname::pg_catalog.text "
                    "FROM pg_catalog.pg_auth_members m "
                    "JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) m.roleid "
                    "JOIN pg_catalog.pg_roles u ON u.oid OPERATOR(pg_catalog.=) m.member "
                    "WHERE m.member OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.oid[]) "
                    "OR m.roleid OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.oid[])",
                    (oids, oids),
                )
                reach = self.conn.execute(_REACH, (oids, oids, oids))
            now, edges, schemas = clock.fetchone(), found.fetchall(), creates.fetchall()
            # An edge made after this read is still caught: by DROP ROLE, or by the check
            # that a role has no membership left before it counts as revoked.
            # Not waiting for the disk here is safe: the revoke reports success only after a
            # later commit that does wait, and that flushes this one with it.
            r = self.sql
            statements: list[Stmt] = [r("SET LOCAL synchronous_commit = off")]
            moment = utcnow()
            for role, label in live:
                ident = r.ident(role.name)
                statements.append(r("ALTER ROLE {} NOLOGIN PASSWORD NULL", ident))
                since = str(label.get("disabled_at") or (now[0] if now else ""))
                disabled_at[role.name] = since
                expired = datetime.fromisoformat(label["expires_at"]) <= moment
                if expired and label.get("mode") != "membership":
                    # "revoking" keeps a redelivered grant from being reissued mid-revoke;
                    # an expired grant is refused anyway, and a sweep saves a write per role.
                    continue
                statements.append(
                    r(
                        "COMMENT ON ROLE {} IS {}",
                        ident,
                        self._label(
                            role.name, {**label, "state": "revoking", "disabled_at": since}
                        ),
                    )
                )
            members: dict[str, list[str]] = {}
            for group, member in edges:  # one REVOKE per group: a sweep's roles share bundles
                members.setdefault(group, []).append(member)
            revokes: list[Stmt] = [r("SET LOCAL synchronous_commit = off")]
            revokes += [
                r("REVOKE {} FROM {}", r.ident(group), r.idents(names))
                for group, names in members.items()
            ]
            # Nor may anything the grantee left (a SECURITY DEFINER function) make objects in
            # a schema while a lock delays the drop of what it owns.
            revokes += [
                sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(
                    sql.Identifier(schema), sql.Identifier(grantee)
                )
                for schema, grantee in schemas
            ]
            reached = reach.fetchall()
            # The memberships go in a commit of their own, first: a REVOKE needs no lock on
            # the role's row, so a grantee holding that row (an open `ALTER ROLE` of the role)
            # loses the access even while the ALTER ROLE below waits for it.
            if len(revokes) > 1:
                self._atomic(revokes)
            self._atomic(statements)
            # What the grantee made and handed to others stops serving them now, before its
            # sessions end and whether or not its objects can be dropped later.
            _cut(self.conn, reached, self._retrying)

        owners = [role.name for role, _ in live]
        owners += [str(label["member"]) for _, label in live if label.get("member")]
        for attempt in range(3):
            try:
                if attempt == 0:
                    self._retrying(step)
                else:
                    self._ending_blockers(owners, lambda: self._retrying(step))
                break
            except psycopg.errors.LockNotAvailable:
                if attempt == 2:
                    raise
                self._terminate_all([role.name for role, _ in live])
        return disabled_at

    def _ending_blockers(
        self,
        owners: list[str],
        step: Callable[[], T],
        conn: psycopg.Connection[Any] | None = None,
        dbname: str | None = None,
        relations_of: list[int] | None = None,
    ) -> T:
        """Run `step` on `conn` while a second session ends whatever blocks it: any session
        that is not a superuser's or the admin's (with `relations_of`, only those holding a lock
        on a relation these roles own), and prepared transactions of `owners` (the grant's
        roles and its member), which no session ending frees."""
        pid = (conn or self.conn).info.backend_pid
        done = threading.Event()
        watcher = self._connect(dbname or self.settings.dbname)

        def watch() -> None:
            with contextlib.suppress(psycopg.Error):
                while not done.wait(0.05):
                    args = (pid, sorted(self._admins), relations_of, relations_of)
                    blockers = watcher.execute(_END_BLOCKERS, args)
                    if not any(row[0] == 0 for row in blockers.fetchall()):
                        continue
                    gids = watcher.execute(
                        "SELECT p.gid FROM pg_catalog.pg_prepared_xacts p "
                        "WHERE p.owner OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.text[]) "
                        "AND p.database OPERATOR(pg_catalog.=) pg_catalog.current_database()",
                        (owners,),
                    ).fetchall()
                    for (gid,) in gids:
                        with contextlib.suppress(psycopg.Error):
                            watcher.execute(
                                sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid))
                            )

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        try:
            return step()
        finally:
            done.set()
            thread.join()
            watcher.close()

    def _holders(self, live: list[tuple[_Role, dict[str, Any]]]) -> dict[str, str | None]:
        """Whose sessions a revoke ends: the ephemeral role's own, or the member's if the
        catalog said so, never the admin's, a superuser's or a role manager's."""
        holders: dict[str, str | None] = {}
        members = [str(label.get("member")) for _, label in live if label.get("member")]
        known = self._roles(members) if members else {}
        for role, label in live:
            if label.get("mode") != "membership":
                holders[role.name] = role.name
                continue
            member = str(label.get("member", ""))
            info = known.get(member)
            safe = info is not None and not info.privileged and member not in self._admins
            holders[role.name] = member if label.get("terminate_sessions") and safe else None
        return holders

    def _elsewhere(self, oids: list[int]) -> list[str]:
        """The other databases where `pg_shdepend` says these roles own or hold something."""
        rows = self.conn.execute(
            "SELECT DISTINCT d.datname::pg_catalog.text FROM pg_catalog.pg_shdepend s "
            "JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) s.dbid "
            "WHERE s.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_authid'::pg_catalog.regclass "
            "AND s.refobjid OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.oid[]) "
            "AND d.datname OPERATOR(pg_catalog.<>) pg_catalog.current_database()",
            (oids,),
        ).fetchall()
        return [str(row[0]) for row in rows]

    def _cut_elsewhere(self, roles: list[_Role]) -> None:
        """`_cut_reach` in every other database the roles have objects in, before their
        sessions end (the disable step did this database). What cannot be reached now is
        dropped, or reported, by `_clean`."""
        oids = [role.oid for role in roles]
        for dbname in self._elsewhere(oids):
            try:
                conn = self._connect(dbname)
            except TargetError:
                continue
            try:
                with contextlib.suppress(psycopg.Error):
                    rows = conn.execute(_REACH, (oids, oids, oids)).fetchall()
                    _cut(conn, rows, self._retrying)
            finally:
                conn.close()

    def _clean(self, roles: list[_Role], residual: dict[str, list[str]]) -> None:
        """DROP OWNED (no CASCADE) in every database `pg_shdepend` names: what the grantee
        owns (tables, functions, large objects, triggers on them) and every privilege it holds
        there goes, wherever it was made."""
        databases = [None, *self._elsewhere([role.oid for role in roles])]
        for dbname in databases:
            conn = self.conn
            try:
                if dbname is not None:
                    conn = self._connect(dbname)
            except AuthenticationFailed:
                raise  # the admin password changed under us: the engine logs in afresh and reruns
            except TargetError as exc:
                for role in roles:
                    residual[role.name].append(f"database {dbname}: {exc}")
                continue
            try:
                self._drop_owned(conn, roles, residual, dbname or self.settings.dbname)
            finally:
                if conn is not self.conn:
                    conn.close()

    def _drop_owned(
        self,
        conn: psycopg.Connection[Any],
        roles: list[_Role],
        residual: dict[str, list[str]],
        dbname: str,
    ) -> None:
        def drop(chunk: list[_Role]) -> None:
            with conn.transaction():
                # A trigger the grantee put on someone else's table runs its function as
                # whoever writes there: it is the grantee's, whatever table holds it, and goes.
                triggers = conn.execute(
                    _GRANTEE_TRIGGERS, ([r.oid for r in chunk], [r.oid for r in chunk])
                ).fetchall()
                for trigger, schema, table in triggers:
                    conn.execute(
                        sql.SQL("DROP TRIGGER {} ON {}.{}").format(
                            sql.Identifier(trigger), sql.Identifier(schema), sql.Identifier(table)
                        )
                    )
                # Never CASCADE: it would also drop the company's objects that depend on the
                # grantee's (a column of its type, a view on its table), and say nothing.
                conn.execute(sql.SQL("DROP OWNED BY {}").format(_names(r.name for r in chunk)))

        try:
            self._retrying(lambda: drop(roles))
        except psycopg.Error:
            for role in roles:  # one at a time, so one blocked role does not hold up the rest
                try:
                    try:
                        self._retrying(lambda role=role: drop([role]))  # type: ignore[misc]
                    except psycopg.errors.LockNotAvailable:
                        # Someone holds a lock on a relation of the grantee's: while it lasts,
                        # what the grantee left (a SECURITY DEFINER function) stays usable.
                        self._ending_blockers(
                            [role.name],
                            lambda role=role: self._retrying(  # type: ignore[misc]
                                lambda: drop([role])
                            ),
                            conn=conn,
                            dbname=dbname,
                            relations_of=[role.oid],
                        )
                except psycopg.Error as exc:
                    # The detail names what depends on the grantee's objects: someone must
                    # decide about those, and the revoke stays failed (and retried) until then.
                    detail = f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""
                    residual[role.name].append(
                        f"database {dbname}: objects or privileges of {role.name} not removed: "
                        f"{exc.diag.message_primary}{detail}"
                    )

    def _left(
        self,
        roles: list[_Role],
        labels: dict[str, dict[str, Any]],
        disabled_at: dict[str, str],
    ) -> dict[str, list[str]]:
        """What still gives access, from the shared catalogs: login, membership either way,
        any dependency (owned object or privilege, in any database), a session; in membership
        mode, a session of the member that began before the disable (it may hold the group
        through SET ROLE), whether or not the catalog let us end it."""
        rows = self.conn.execute(
            "SELECT r.rolname::pg_catalog.text, r.rolcanlogin, "
            "  EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m "
            "    WHERE m.member OPERATOR(pg_catalog.=) r.oid "
            "    OR m.roleid OPERATOR(pg_catalog.=) r.oid), "
            "  (SELECT pg_catalog.count(*) FROM pg_catalog.pg_shdepend d "
            "    WHERE d.refclassid OPERATOR(pg_catalog.=) "
            "    'pg_catalog.pg_authid'::pg_catalog.regclass "
            "    AND d.refobjid OPERATOR(pg_catalog.=) r.oid), "
            "  (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity a "
            "    WHERE a.usesysid OPERATOR(pg_catalog.=) r.oid) "
            "FROM pg_catalog.pg_roles r "
            "WHERE r.oid OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.oid[])",
            ([role.oid for role in roles],),
        ).fetchall()
        left: dict[str, list[str]] = {role.name: [] for role in roles}
        for name, login, member, depends, sessions in rows:
            if login:
                left[name].append(f"role {name} can still log in")
            if member:
                left[name].append(f"role {name} still has a membership")
            if depends:
                left[name].append(f"role {name} still owns or holds {depends} object(s)")
            if sessions:
                left[name].append(f"{sessions} session(s) of {name} still open")
        for role in roles:
            holder = labels[role.name].get("member")
            if not holder:
                continue
            row = self.conn.execute(
                "SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity a "
                "WHERE a.usename OPERATOR(pg_catalog.=) %s "
                "AND a.backend_start OPERATOR(pg_catalog.<=) %s::pg_catalog.timestamptz",
                (holder, disabled_at.get(role.name) or "infinity"),
            ).fetchone()
            if row and row[0]:
                left[role.name].append(f"{row[0]} session(s) of {holder} still open")
        return left

    def _drop_at_once(
        self, roles: list[_Role], labels: dict[str, dict[str, Any]], until: datetime
    ) -> set[str]:
        """The common case in one transaction: what the roles own and hold here, the roles,
        their tombstones. DROP ROLE refuses while any dependency is left (in any database),
        so success means nothing is; on failure the caller goes step by step."""
        if not roles:
            return set()
        names = self.sql.idents([role.name for role in roles])
        statements: list[Stmt] = [
            self.sql("DROP OWNED BY {}", names),
            self.sql("DROP ROLE {}", names),
        ]
        for role in roles:
            label = labels[role.name]
            if label.get("legacy"):
                continue
            expires = datetime.fromisoformat(label["expires_at"])
            statements += self._tombstone(role.name, label["grant_id"], max(until, expires))
        try:
            self._atomic(statements)
        except psycopg.Error:
            return set()
        return {role.name for role in roles}

    def _drop(
        self,
        roles: list[_Role],
        labels: dict[str, dict[str, Any]],
        until: datetime,
        residual: dict[str, list[str]],
    ) -> set[str]:
        """DROP ROLE a, b, ... and their tombstones, in one transaction; one by one on error."""

        def drop(chunk: list[_Role]) -> None:
            with self.conn.transaction():
                statements: list[Stmt] = [
                    self.sql("DROP ROLE IF EXISTS {}", self.sql.idents(r.name for r in chunk))
                ]
                for role in chunk:
                    label = labels[role.name]
                    if label.get("legacy"):
                        continue
                    # Not only until the grant's own expiry, even once it has passed (the
                    # sweep): a copy of the request signed later (a retried publish) asks for
                    # a later one, and once the tombstone is gone it would make the grant
                    # again. `until` outlasts every copy signed before now.
                    expires = datetime.fromisoformat(label["expires_at"])
                    statements += self._tombstone(role.name, label["grant_id"], max(until, expires))
                self._run(statements)

        if not roles:
            return set()
        try:
            self._retrying(lambda: drop(roles))
            return {role.name for role in roles}
        except psycopg.Error:
            dropped = set()
            for role in roles:
                try:
                    self._retrying(lambda role=role: drop([role]))  # type: ignore[misc]
                    dropped.add(role.name)
                except psycopg.Error as exc:
                    residual[role.name].append(
                        f"role {role.name} not dropped: {exc.diag.message_primary}"
                    )
            return dropped

    def _end_sessions(self, oids: list[int], bundles: list[Any] | None = None) -> dict[int, int]:
        """End every session of these (dropped) roles, by their former oid; wait, bounded.
        With `bundles` (a list to fill), the bundles' state is read in the same round trip
        when there was no session to end: nobody could have been acting as a bundle for them
        after the terminate."""
        if not oids:
            return {}
        if bundles is not None:
            with self.conn.pipeline():
                ended = self._exec(_TERMINATE_OIDS, (oids,))
                state = bundle_state_query(self)
            row = ended.fetchone()
            if not (row and row[0]):
                bundles[:] = state.fetchall()
        else:
            row = self._exec(_TERMINATE_OIDS, (oids,)).fetchone()
        deadline = time.monotonic() + self.settings.terminate_wait_seconds
        while row and row[0]:
            counts = {int(k): int(v) for k, v in self._exec(_SESSIONS_OF, (oids,)).fetchall()}
            if not counts or time.monotonic() >= deadline:
                return counts
            time.sleep(0.02)
        return {}

    def _terminate_all(self, names: list[str]) -> dict[str, int]:
        """End every session of these roles; wait (bounded) until the server reports them gone."""
        names = [n for n in names if n not in self._admins]
        if not names:
            return {}
        row = self.conn.execute(
            "SELECT pg_catalog.count(pg_catalog.pg_terminate_backend(a.pid)) "
            "FROM pg_catalog.pg_stat_activity a "
            "JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.usesysid "
            "WHERE r.rolname OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.text[]) "
            "AND NOT r.rolsuper AND a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()",
            (names,),
        ).fetchone()
        deadline = time.monotonic() + self.settings.terminate_wait_seconds
        while row and row[0]:
            counts: dict[str, int] = dict(
                self.conn.execute(
                    "SELECT a.usename::pg_catalog.text, pg_catalog.count(*) "
                    "FROM pg_catalog.pg_stat_activity a "
                    "WHERE a.usename OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.text[]) GROUP BY 1",
                    (names,),
                ).fetchall()
            )
            if not counts or time.monotonic() >= deadline:
                return {str(k): int(v) for k, v in counts.items()}
            time.sleep(0.02)
        return {}

    def _tombstone(self, name: str, grant_id: str, until: datetime) -> list[Stmt]:
        """Statements that remember a revoke under the grant's own name until `until`, so a
        late or repeated grant is refused until then. Past that moment a grant that late has
        expired and is refused anyway."""
        if until <= utcnow():
            return []
        label = {
            "kind": "grant",
            "grant_id": grant_id,
            "integration": self.integration,
            "expires_at": until.isoformat(),
            "state": "tombstone",
        }
        ident = self.sql.ident(name)
        return [
            self.sql("CREATE ROLE {} NOLOGIN", ident),
            self.sql("COMMENT ON ROLE {} IS {}", ident, self._label(name, label)),
        ]

    def forget(self, grant_id: str, principal: str | None = None) -> None:
        """Drop a grant's tombstone once no delivery of that grant can still succeed."""
        name = principal or role_name(self.settings, grant_id)
        role = self._roles([name]).get(name)
        label = None if role is None else self._ours(role)
        if (
            label is not None
            and label.get("state") == "tombstone"
            and label.get("grant_id") == grant_id
        ):
            with self.conn.transaction():
                self.conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))

    # -- sweep and inventory ---------------------------------------------------------------

    def active_grants(self) -> list[Grant]:
        """Every role with this integration's valid label, named for its grant under any
        prefix (one made before `role_prefix` changed still ends on time); nothing else."""
        grants = []
        for old_role, old_label in self._legacy(self._prefixed(_LEGACY), None):
            made = grant_from_label(KIND, old_role.name, {**old_label, "state": "active"})
            if made is not None:
                grants.append(made)
        for row in self.conn.execute(_LABELLED).fetchall():
            role = self._role(row)
            label = self._ours(role)
            grant_id = str(label.get("grant_id")) if label is not None else ""
            if label is None or not role.name.endswith(grant_id[1:]) or not grant_id:
                continue
            shown = {k: v for k, v in label.items() if k not in ("kind", "digest", "disabled_at")}
            grant = grant_from_label(KIND, role.name, shown)
            if grant is not None:
                grants.append(grant)
        return grants

    def inventory(self) -> dict[str, list[str]]:
        def column(query: str) -> list[str]:
            return [str(row[0]) for row in self.conn.execute(query).fetchall()]

        return {
            "roles": column(
                "SELECT rolname FROM pg_catalog.pg_roles "
                "WHERE NOT pg_catalog.starts_with(rolname::pg_catalog.text, 'pg_') ORDER BY 1"
            ),
            "databases": column(
                "SELECT datname FROM pg_catalog.pg_database WHERE NOT datistemplate ORDER BY 1"
            ),
            "schemas": column(
                "SELECT nspname FROM pg_catalog.pg_namespace "
                "WHERE NOT pg_catalog.starts_with(nspname::pg_catalog.text, 'pg_') "
                "AND nspname OPERATOR(pg_catalog.<>) 'information_schema' ORDER BY 1"
            ),
        }

    def inventory_records(self) -> Iterator[InventoryRecord]:
        """Names only, streamed through a server-side cursor: memory stays bounded whatever the
        count of tables. Databases and roles are the cluster's; schemas and tables are those of
        the database this integration connects to. Ordered by byte value (COLLATE "C"), so the
        same catalog always gives the same sequence, whatever the server's locale."""
        queries: tuple[tuple[str, str], ...] = (
            (
                "database",
                "SELECT NULL, datname::pg_catalog.text FROM pg_catalog.pg_database "
                'WHERE NOT datistemplate ORDER BY datname COLLATE "C"',
            ),
            (
                "schema",
                "SELECT NULL, nspname::pg_catalog.text FROM pg_catalog.pg_namespace n "
                "WHERE NOT pg_catalog.starts_with(n.nspname::pg_catalog.text, 'pg_') "
                "AND n.nspname OPERATOR(pg_catalog.<>) 'information_schema' "
                'ORDER BY nspname COLLATE "C"',
            ),
            (
                "",
                "SELECT n.nspname::pg_catalog.text, c.relname::pg_catalog.text, "
                "CASE WHEN c.relkind::pg_catalog.text "
                "OPERATOR(pg_catalog.=) ANY ('{v,m}'::pg_catalog.text[]) "
                "THEN 'view' ELSE 'table' END "
                "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                "ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
                "WHERE c.relkind::pg_catalog.text "
                "OPERATOR(pg_catalog.=) ANY ('{r,p,f,v,m}'::pg_catalog.text[]) "
                "AND NOT pg_catalog.starts_with(n.nspname::pg_catalog.text, 'pg_') "
                "AND n.nspname OPERATOR(pg_catalog.<>) 'information_schema' "
                'ORDER BY n.nspname COLLATE "C", c.relname COLLATE "C"',
            ),
            (
                "",
                "SELECT NULL, rolname::pg_catalog.text, "
                "CASE WHEN rolcanlogin THEN 'login_role' ELSE 'group' END "
                "FROM pg_catalog.pg_roles WHERE NOT "
                "pg_catalog.starts_with(rolname::pg_catalog.text, 'pg_') "
                'ORDER BY rolname COLLATE "C"',
            ),
        )
        for kind, query in queries:
            with self.conn.transaction(), self.conn.cursor(name="jitc_inventory") as cursor:
                cursor.itersize = INVENTORY_FETCH
                cursor.execute(query)
                for row in cursor:
                    yield InventoryRecord(kind or row[2], row[1], row[0])
