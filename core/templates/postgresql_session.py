"""The PostgreSQL template's connection-side half: statement composition and the session.

Imported only when a plan is made or a connection opened, so that loading a catalog (as the
intake does) does not load the driver.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from jitc.errors import Refused, TargetError
from jitc.models import Grant, utcnow
from jitc.secrets import Secret
from jitc.templates.base import (
    GrantResult,
    GrantSpec,
    RevokeResult,
    decode_label,
    encode_label,
    grant_from_label,
    tombstone_label,
)
from jitc.templates.postgresql import (
    ACL_LOCK_KEY,
    MASK,
    Connection,
    Permission,
    PostgreSQLTemplate,
    label_extra,
    member_name,
    role_name,
    tombstone_name,
)

T = TypeVar("T")
REVOKE_CHUNK = 200
_REVOCABLE = {kind: sql.SQL(kind) for kind in ("DATABASE", "SCHEMA", "TABLE", "SEQUENCE")}


def plan_statements(connection: Connection, spec: GrantSpec) -> list[str]:
    return [s.as_string(None) for s in _grant_statements(connection, spec, sql.SQL(MASK))]


def _transient(exc: psycopg.Error) -> bool:
    if isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected):
        return True
    return isinstance(exc, psycopg.errors.InternalError_) and "concurrently" in str(
        exc.diag.message_primary
    )


def _holder(name: str, label: dict[str, Any]) -> str | None:
    """Whose sessions a revoke ends: the ephemeral role's own, or the member's if configured."""
    if label.get("mode") != "membership":
        return name
    return str(label.get("member", "")) if label.get("terminate_sessions") else None


def _ident(dotted: str) -> sql.Identifier:
    return sql.Identifier(*dotted.split("."))


def _grant_statements(
    connection: Connection, spec: GrantSpec, password: sql.Composable
) -> list[sql.Composed]:
    permission = spec.permission
    assert isinstance(permission, Permission)
    role = sql.Identifier(role_name(connection, spec))
    label = sql.Literal(encode_label(spec.label(mode=permission.mode, **label_extra(spec))))
    if permission.mode == "membership":
        member = sql.Identifier(member_name(spec))
        statements: list[sql.Composed] = [
            sql.SQL("CREATE ROLE {} NOLOGIN INHERIT").format(role),
            sql.SQL("COMMENT ON ROLE {} IS {}").format(role, label),
        ]
        statements += [
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), role)
            for group in spec.resources
        ]
        statements.append(sql.SQL("GRANT {} TO {}").format(role, member))
        return statements
    statements = [
        sql.SQL(
            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION "
            "NOBYPASSRLS CONNECTION LIMIT {} PASSWORD {} VALID UNTIL {}"
        ).format(
            role,
            sql.Literal(connection.connection_limit),
            password,
            sql.Literal(spec.expires_at.isoformat()),
        ),
        sql.SQL("COMMENT ON ROLE {} IS {}").format(role, label),
    ]
    for guc in ("statement_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout"):
        statements.append(
            sql.SQL("ALTER ROLE {} SET {} = {}").format(
                role, sql.Identifier(guc), sql.Literal(getattr(connection, guc))
            )
        )
    statements.append(
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(connection.dbname), role
        )
    )
    for resource in spec.resources:
        for text in permission.statement_texts():
            statements.append(
                sql.SQL(text).format(
                    role=role,
                    database=sql.Identifier(connection.dbname),
                    schema=_ident(resource),
                    resource=_ident(resource),
                )
            )
    return statements


class PostgreSQLSession:
    """One admin connection, used for a batch. Each operation is its own transaction."""

    def __init__(self, integration: str, connection: Connection, secret: Secret | None) -> None:
        self.integration = integration
        self.settings = connection
        self._names: dict[str, str] = {}
        try:
            self.conn = psycopg.connect(
                host=connection.host,
                port=connection.port,
                dbname=connection.dbname,
                user=connection.user,
                password=secret.reveal() if secret is not None else None,
                sslmode=connection.sslmode,
                connect_timeout=connection.connect_timeout,
                application_name="jit-connector",
                autocommit=True,
            )
        except psycopg.Error as exc:
            raise TargetError(
                f"cannot connect to PostgreSQL {connection.host}:{connection.port}/"
                f"{connection.dbname} as {connection.user}: {type(exc).__name__}"
            ) from None

    def close(self) -> None:
        self.conn.close()

    # -- queries ---------------------------------------------------------------------------

    def _labelled(
        self, grant_id: str | None = None, names: list[str] | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """Our labelled roles: by name when the names are known (an index lookup), else all."""
        if names is not None:
            rows = self.conn.execute(
                "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles "
                "WHERE rolname = ANY(%s)",
                (names,),
            ).fetchall()
        else:
            pattern = "jitc:%" if grant_id is None else f'jitc:%"grant_id":"{grant_id}"%'
            rows = self.conn.execute(
                "SELECT r.rolname, d.description FROM pg_roles r JOIN pg_shdescription d "
                "ON d.objoid = r.oid AND d.classoid = 'pg_authid'::regclass "
                "WHERE d.description LIKE %s",
                (pattern,),
            ).fetchall()
        found = []
        for name, description in rows:
            label = decode_label(description)
            if label is None or label.get("integration") != self.integration:
                continue
            if grant_id is not None and label["grant_id"] != grant_id:
                continue
            found.append((name, label))
        return found

    def _find(self, grant_id: str, name: str | None = None) -> tuple[str, dict[str, Any]] | None:
        """The role of a grant. Its name, when known (from the request or the sweep's listing),
        makes this an index lookup; otherwise every role comment is scanned."""
        name = name or self._names.get(grant_id)
        candidates = [tombstone_name(self.settings, grant_id)] + ([name] if name else [])
        found = self._labelled(grant_id, candidates)
        if not found and name is None:
            found = self._labelled(grant_id)
        # A live grant wins over a tombstone should both exist (they never should).
        found.sort(key=lambda item: item[1].get("state") == "tombstone")
        return found[0] if found else None

    def _lock(self, grant_id: str, acl: bool = False) -> None:
        """Serialise work on one grant; with `acl`, also every privilege change of ours."""
        if acl:
            self.conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0)), pg_advisory_xact_lock(%s)",
                (grant_id, ACL_LOCK_KEY),
            )
        else:
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (grant_id,))

    def _run(self, statements: Sequence[sql.Composable]) -> None:
        """One round trip for many statements: all values are already bound client-side."""
        if statements:
            self.conn.execute(sql.SQL(";\n").join(statements))

    def _role(self, name: str) -> tuple[bool, bool, bool] | None:
        """(can login, superuser, createrole) of an existing role."""
        row = self.conn.execute(
            "SELECT rolcanlogin, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = %s", (name,)
        ).fetchone()
        return None if row is None else (bool(row[0]), bool(row[1]), bool(row[2]))

    def _retrying(self, step: Callable[[], T]) -> T:
        """Run a transaction again when the server reports a transient conflict, such as a
        company's own GRANT touching the same object at the same moment."""
        for attempt in range(4):
            try:
                return step()
            except psycopg.Error as exc:
                if attempt == 3 or not _transient(exc):
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    # -- grant -----------------------------------------------------------------------------

    def grant(self, spec: GrantSpec) -> GrantResult:
        return self._retrying(lambda: self._grant_once(spec))

    def _grant_once(self, spec: GrantSpec) -> GrantResult:
        permission = spec.permission
        assert isinstance(permission, Permission)
        name = role_name(self.settings, spec)
        password = secrets.token_urlsafe(24) if permission.mode == "ephemeral" else None
        with self.conn.transaction():
            self._lock(spec.grant_id, acl=True)
            existing = self._find(spec.grant_id, name)
            if existing is not None:
                return self._regrant(spec, existing, password)
            if self._role(name) is not None:
                raise Refused(
                    "identity.username",
                    f"role {name!r} already exists and was not created by this connector",
                )
            if permission.mode == "membership":
                self._check_membership(spec)
            # A grant lost to a server crash fails closed (the role is simply not there), so
            # its commit need not wait for the disk; revokes always do.
            statements: list[sql.Composable] = [sql.SQL("SET LOCAL synchronous_commit = off")]
            statements += _grant_statements(self.settings, spec, self._verifier(name, password))
            self._run(statements)
        self._names[spec.grant_id] = name
        return GrantResult(principal=name, credentials=self._credentials(name, password, spec))

    def _regrant(
        self, spec: GrantSpec, existing: tuple[str, dict[str, Any]], password: str | None
    ) -> GrantResult:
        name, label = existing
        if label.get("state") == "tombstone":
            raise Refused("request_id", "this grant was already revoked; it will not be made again")
        if label.get("state") != "active":
            raise Refused("request_id", "this grant is being revoked")
        if password is not None:
            # A redelivered grant may be the only one whose outcome reaches the requester,
            # so it carries fresh credentials; the role and its expiry stay as they were.
            self.conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(name), self._verifier(name, password)
                )
            )
        return GrantResult(
            principal=name, credentials=self._credentials(name, password, spec), reissued=True
        )

    def _verifier(self, name: str, password: str | None) -> sql.Composable:
        """SCRAM verifier computed here, so the clear password never reaches the server's logs."""
        if password is None:
            return sql.SQL("NULL")
        digest = self.conn.pgconn.encrypt_password(
            password.encode(), name.encode(), b"scram-sha-256"
        )
        return sql.Literal(digest.decode())

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

    def _check_membership(self, spec: GrantSpec) -> None:
        member = member_name(spec)
        admin_row = self.conn.execute("SELECT current_user, session_user").fetchone()
        admins = set(admin_row or ())
        ours = {name for name, _ in self._labelled()}
        attrs = self._role(member)
        if attrs is None or not attrs[0]:
            raise Refused("identity.username", f"no login role {member!r} exists")
        if member in admins or attrs[1] or attrs[2] or member in ours:
            raise Refused(
                "identity.username",
                f"role {member!r} is the admin, a superuser or a role manager: never a grantee",
            )
        for index, group in enumerate(spec.resources):
            group_attrs = self._role(group)
            if group_attrs is None:
                raise Refused(f"resources[{index}]", f"group role {group!r} does not exist")
            if group_attrs[1] or group_attrs[2] or group in admins or group in ours:
                raise Refused(
                    f"resources[{index}]",
                    f"group role {group!r} is a superuser, a role manager or the admin",
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

    def _lock_many(self, grant_ids: Sequence[str], acl: bool = False) -> None:
        # Always in sorted order, and the ACL lock last, so concurrent workers cannot deadlock.
        self.conn.execute(
            "SELECT count(pg_advisory_xact_lock(hashtextextended(g, 0))) "
            "FROM (SELECT g FROM unnest(%s::text[]) AS g ORDER BY g) AS s",
            (sorted(set(grant_ids)),),
        )
        if acl:
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (ACL_LOCK_KEY,))

    def _revoke(
        self, grant_ids: Sequence[str], tombstone_until: datetime
    ) -> dict[str, RevokeResult]:
        """Three steps, each committed: disable (no login, no password, no membership, label
        says revoking), end sessions, drop. Access has ended after the first, whatever follows."""
        results: dict[str, RevokeResult] = {}

        def disable() -> list[tuple[str, dict[str, Any]]]:
            results.clear()
            with self.conn.transaction():
                self._lock_many(grant_ids)
                names = [tombstone_name(self.settings, g) for g in grant_ids]
                names += [self._names[g] for g in grant_ids if g in self._names]
                found: dict[str, tuple[str, dict[str, Any]]] = {}
                for name, label in self._labelled(names=names):
                    if label.get("state") != "tombstone" or label["grant_id"] not in found:
                        found[label["grant_id"]] = (name, label)
                for grant_id in grant_ids:
                    if grant_id not in found and grant_id not in self._names:
                        item = self._find(grant_id)
                        if item is not None:
                            found[grant_id] = item
                statements: list[sql.Composable] = []
                live = []
                for grant_id in grant_ids:
                    item = found.get(grant_id)
                    if item is None:
                        # Revoke before grant: a tombstone makes the late grant a refusal.
                        statements += self._tombstone(grant_id, {}, tombstone_until)
                        results[grant_id] = RevokeResult(found=False)
                    elif item[1].get("state") == "tombstone":
                        results[grant_id] = RevokeResult(found=False)
                    else:
                        live.append(item)
                memberships = self.conn.execute(
                    "SELECT u.rolname, g.rolname FROM pg_auth_members m "
                    "JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member "
                    "WHERE u.rolname = ANY(%s)",
                    ([name for name, _ in live],),
                ).fetchall()
                for name, label in live:
                    role = sql.Identifier(name)
                    statements.append(sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(role))
                    statements += [
                        sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(group), role)
                        for member, group in memberships
                        if member == name
                    ]
                    statements.append(
                        sql.SQL("COMMENT ON ROLE {} IS {}").format(
                            role, sql.Literal(encode_label({**label, "state": "revoking"}))
                        )
                    )
                self._run(statements)
                return live

        live = self._retrying(disable)
        if not live:
            return results
        # A dropped role's open session would otherwise live on; in membership mode the
        # member's sessions may hold the group's privileges through SET ROLE.
        holders = {name: _holder(name, label) for name, label in live}
        left = self._terminate_all([h for h in holders.values() if h])
        residual: dict[str, list[str]] = {name: [] for name, _ in live}
        try:
            self._retrying(lambda: self._drop(live))
        except psycopg.Error:
            for item in live:  # one at a time, so one blocked drop does not hold up the rest
                try:
                    self._retrying(lambda item=item: self._drop([item]))  # type: ignore[misc]
                except psycopg.Error as exc:
                    detail = exc.diag.message_detail or ""
                    residual[item[0]].append(
                        f"role {item[0]} not dropped: {exc.diag.message_primary}. {detail}".strip()
                    )
        gone = self._gone([name for name, _ in live])
        for name, label in live:
            holder = holders[name] or ""
            if left.get(holder):
                residual[name].append(f"{left[holder]} session(s) of {holder} still open")
            else:
                self._names.pop(label["grant_id"], None)
            results[label["grant_id"]] = RevokeResult(
                found=True,
                principal=str(label.get("member") or name),
                expires_at=datetime.fromisoformat(label["expires_at"]),
                residual=residual[name],
                verified=gone[name] and not left.get(holder),
            )
        return results

    def _drop(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        with self.conn.transaction():
            self._lock_many([label["grant_id"] for _, label in items], acl=True)
            owners = [sql.Identifier(n) for n, label in items if label.get("mode") != "membership"]
            statements: list[sql.Composable] = []
            if owners:
                statements += self._revoke_privileges([n for n, _ in items])
                statements.append(sql.SQL("DROP OWNED BY {}").format(sql.SQL(", ").join(owners)))
            statements.append(
                sql.SQL("DROP ROLE {}").format(
                    sql.SQL(", ").join(sql.Identifier(name) for name, _ in items)
                )
            )
            for _, label in items:
                until = datetime.fromisoformat(label["expires_at"])
                statements += self._tombstone(label["grant_id"], label, until)
            self._run(statements)

    def _revoke_privileges(self, names: list[str]) -> list[sql.Composed]:
        """One REVOKE per object for all the chunk's roles. DROP OWNED would rewrite a shared
        object's ACL once per role, which grows with the square of the grants on it."""
        rows = self.conn.execute(
            "SELECT CASE d.classid WHEN 'pg_database'::regclass THEN 'DATABASE' "
            "  WHEN 'pg_namespace'::regclass THEN 'SCHEMA' "
            "  WHEN 'pg_class'::regclass THEN CASE WHEN c.relkind = 'S' THEN 'SEQUENCE' "
            "    WHEN c.relkind IN ('r', 'v', 'm', 'f', 'p') THEN 'TABLE' END END AS kind, "
            "  coalesce(db.datname, ns.nspname, cn.nspname), c.relname, "
            "  array_agg(DISTINCT r.rolname) "
            "FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid "
            "LEFT JOIN pg_database db "
            "  ON d.classid = 'pg_database'::regclass AND db.oid = d.objid "
            "LEFT JOIN pg_namespace ns "
            "  ON d.classid = 'pg_namespace'::regclass AND ns.oid = d.objid "
            "LEFT JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid "
            "LEFT JOIN pg_namespace cn ON cn.oid = c.relnamespace "
            "WHERE d.refclassid = 'pg_authid'::regclass AND d.deptype = 'a' "
            "  AND r.rolname = ANY(%s) AND d.dbid IN (0, (SELECT oid FROM pg_database "
            "  WHERE datname = current_database())) "
            "GROUP BY 1, 2, 3",
            (names,),
        ).fetchall()
        statements = []
        for kind, parent, relname, roles in rows:
            if kind not in _REVOCABLE or parent is None:
                continue  # DROP OWNED removes what is not listed here
            target = sql.Identifier(parent) if relname is None else sql.Identifier(parent, relname)
            statements.append(
                sql.SQL("REVOKE ALL ON {} {} FROM {}").format(
                    _REVOCABLE[kind], target, sql.SQL(", ").join(map(sql.Identifier, roles))
                )
            )
        return statements

    def _terminate_all(self, names: list[str]) -> dict[str, int]:
        """End every session of these roles; wait (bounded) until the server reports them gone."""
        if not names:
            return {}
        row = self.conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE usename = ANY(%s) AND pid <> pg_backend_pid()",
            (names,),
        ).fetchone()
        deadline = time.monotonic() + self.settings.terminate_wait_seconds
        while row and row[0]:
            counts: dict[str, int] = dict(
                self.conn.execute(
                    "SELECT usename::text, count(*) FROM pg_stat_activity "
                    "WHERE usename = ANY(%s) GROUP BY 1",
                    (names,),
                ).fetchall()
            )
            if not counts or time.monotonic() >= deadline:
                return {str(k): int(v) for k, v in counts.items()}
            time.sleep(0.02)
        return {}

    def _gone(self, names: list[str]) -> dict[str, bool]:
        """Gone: the role is gone, or cannot log in, belongs to nothing and has no session."""
        rows = self.conn.execute(
            "SELECT n, r.oid IS NULL OR (NOT r.rolcanlogin "
            "AND NOT EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid) "
            "AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.usename = n)) "
            "FROM unnest(%s::text[]) AS n LEFT JOIN pg_roles r ON r.rolname = n",
            (names,),
        ).fetchall()
        return {str(name): bool(gone) for name, gone in rows}

    def _tombstone(
        self, grant_id: str, label: dict[str, Any], until: datetime
    ) -> list[sql.Composed]:
        """Statements that remember a revoke until `until`, so a late or repeated grant is
        refused until then. Past that moment a grant that late has expired and is refused anyway.
        """
        if until <= utcnow():
            return []
        name = sql.Identifier(tombstone_name(self.settings, grant_id))
        stone = tombstone_label(grant_id, self.integration, label, until)
        return [
            sql.SQL("CREATE ROLE {} NOLOGIN").format(name),
            sql.SQL("COMMENT ON ROLE {} IS {}").format(name, sql.Literal(encode_label(stone))),
        ]

    def forget(self, grant_id: str) -> None:
        """Drop a grant's tombstone once no delivery of that grant can still succeed."""
        with self.conn.transaction():
            self._lock(grant_id)
            for name, label in self._labelled(grant_id, [tombstone_name(self.settings, grant_id)]):
                if label.get("state") == "tombstone":
                    self.conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))

    # -- sweep and inventory ---------------------------------------------------------------

    def active_grants(self) -> list[Grant]:
        labelled = self._labelled()
        # Remembered so that the sweep's revokes find each role by name, not by a scan.
        self._names.update((label["grant_id"], name) for name, label in labelled)
        grants = (
            grant_from_label(PostgreSQLTemplate.kind, name, label) for name, label in labelled
        )
        return [grant for grant in grants if grant is not None]

    def inventory(self) -> dict[str, list[str]]:
        def column(query: str) -> list[str]:
            return [str(row[0]) for row in self.conn.execute(query).fetchall()]

        return {
            "roles": column("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1"),
            "databases": column(
                "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1"
            ),
            "schemas": column(
                "SELECT nspname FROM pg_namespace "
                "WHERE nspname !~ '^pg_' AND nspname <> 'information_schema' ORDER BY 1"
            ),
        }
