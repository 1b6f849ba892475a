"""Bundle roles' hygiene: what members leave on a shared bundle, and bundles nobody uses.

Before PostgreSQL 16 a member may `SET ROLE` its bundle. With no CREATE anywhere (refused for
bundles, and refused while PUBLIC may CREATE in any database a member can reach) it can still
make large objects, default privileges, role settings and a password for the bundle; where the
catalog allows PUBLIC to CREATE, anything. None of that may outlive a revoke: at every revoke
(and every retried one) the connector finds what any bundle of the integration owns or has set,
and takes it away, without touching the privileges that serve the bundle's other members:

- owned objects are handed to a throwaway role (`REASSIGN OWNED`, which moves ownership only)
  and dropped with it, in each database `pg_shdepend` names, never with CASCADE: when a company
  object depends on one, the transaction rolls back and the revoke stays failed (and retried)
  until someone decides;
- default privileges are reset to the built-in defaults with `ALTER DEFAULT PRIVILEGES`;
- role settings are reset (`RESET ALL`, for each database too), the password is removed.

The sweep drops bundles that no grant is a member of. A grant joins a bundle holding a shared
advisory lock on it for its transaction, keyed with the connector's secret; the sweep drops a
bundle only when it gets that lock exclusively and, holding it, still sees no member. Without
this, `DROP ROLE` of a bundle that a concurrent grant is joining leaves that grant's membership
pointing at a role that no longer exists.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from jitc.errors import AuthenticationFailed, TargetError
from jitc.labels import LabelKey
from jitc.models import utcnow
from jitc.templates.postgresql import role_name
from jitc.templates.postgresql_sql import Rendered, Renderer

log = logging.getLogger("jitc.postgresql")

if TYPE_CHECKING:
    from jitc.templates.postgresql_session import PostgreSQLSession

_OBJECT_TYPES = {"r": "TABLES", "S": "SEQUENCES", "f": "FUNCTIONS", "T": "TYPES", "n": "SCHEMAS"}
# What PUBLIC holds by default on objects of these kinds (the rest: nothing).
_PUBLIC_DEFAULT = {"f": "EXECUTE", "T": "USAGE"}

# Bundles of a prefix: name, oid, label, databases where they own something, databases of
# their settings ('' for all), whether a password is set (NULL: the admin cannot read it),
# whether it has members, whether it owns something elsewhere, whether it may log in.
_STATE = (
    "SELECT r.rolname::pg_catalog.text, r.oid::pg_catalog.int8, "
    "  pg_catalog.shobj_description(r.oid, 'pg_authid'), "
    "  ARRAY(SELECT DISTINCT d.datname::pg_catalog.text FROM pg_catalog.pg_shdepend s "
    "    JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) s.dbid "
    "    WHERE s.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_authid'::pg_catalog.regclass "
    "    AND s.refobjid OPERATOR(pg_catalog.=) r.oid AND s.deptype OPERATOR(pg_catalog.=) 'o'), "
    "  ARRAY(SELECT COALESCE(d.datname::pg_catalog.text, '') "
    "    FROM pg_catalog.pg_db_role_setting s LEFT JOIN pg_catalog.pg_database d "
    "    ON d.oid OPERATOR(pg_catalog.=) s.setdatabase "
    "    WHERE s.setrole OPERATOR(pg_catalog.=) r.oid), "
    "  {password}, "
    "  EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m "
    "    WHERE m.roleid OPERATOR(pg_catalog.=) r.oid), "
    "  EXISTS (SELECT 1 FROM pg_catalog.pg_shdepend s "
    "    WHERE s.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_authid'::pg_catalog.regclass "
    "    AND s.refobjid OPERATOR(pg_catalog.=) r.oid AND s.dbid OPERATOR(pg_catalog.<>) 0 "
    "    AND s.dbid OPERATOR(pg_catalog.<>) (SELECT d.oid FROM pg_catalog.pg_database d "
    "      WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())), "
    "  r.rolcanlogin "
    "FROM pg_catalog.pg_roles r "
    "WHERE r.rolname OPERATOR(pg_catalog.>=) %s::pg_catalog.name "
    "AND r.rolname OPERATOR(pg_catalog.<) %s::pg_catalog.name"
)
_HAS_VERIFIER = (
    "(SELECT a.rolpassword IS NOT NULL FROM pg_catalog.pg_authid a "
    " WHERE a.oid OPERATOR(pg_catalog.=) r.oid)"
)
# By whether the admin may read pg_authid.
_STATES = {
    True: _STATE.replace("{password}", _HAS_VERIFIER),
    False: _STATE.replace("{password}", "NULL::pg_catalog.bool"),
}
_DEFAULT_ACLS = (
    "SELECT d.defaclnamespace OPERATOR(pg_catalog.<>) 0, n.nspname::pg_catalog.text, "
    "  d.defaclobjtype::pg_catalog.text, "
    "  pg_catalog.array_agg(DISTINCT COALESCE(g.rolname::pg_catalog.text, '')) "
    "FROM pg_catalog.pg_default_acl d "
    "LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) d.defaclnamespace "
    "CROSS JOIN pg_catalog.aclexplode(d.defaclacl) a "
    "LEFT JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) a.grantee "
    "WHERE d.defaclrole OPERATOR(pg_catalog.=) %s::pg_catalog.oid GROUP BY 1, 2, 3"
)
# Databases a member can reach: the connection's, and those PUBLIC may connect to (no ACL
# means it may). A bundle itself may connect to no other (refused when it is made).
_REACHABLE = (
    "SELECT d.datname::pg_catalog.text, "
    "  EXISTS (SELECT 1 FROM pg_catalog.aclexplode(d.datacl) a "
    "    WHERE a.grantee OPERATOR(pg_catalog.=) 0 "
    "    AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE') "
    "FROM pg_catalog.pg_database d WHERE d.datallowconn AND ("
    "  d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database() OR d.datacl IS NULL "
    "  OR EXISTS (SELECT 1 FROM pg_catalog.aclexplode(d.datacl) a "
    "    WHERE a.grantee OPERATOR(pg_catalog.=) 0 "
    "    AND a.privilege_type OPERATOR(pg_catalog.=) 'CONNECT')) ORDER BY 1"
)
_PUBLIC_CREATE_SCHEMAS = (
    "SELECT pg_catalog.array_agg(n.nspname::pg_catalog.text ORDER BY n.nspname) "
    "FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a "
    "WHERE a.grantee OPERATOR(pg_catalog.=) 0 "
    "AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'"
)


@dataclass
class BundleState:
    name: str
    oid: int
    owns_in: list[str]
    settings_in: list[str]
    password: bool | None
    has_members: bool
    elsewhere: bool
    label: dict[str, Any] = field(default_factory=dict)
    # Made NOLOGIN; a role manager's `ALTER ROLE bundle LOGIN` needs no password where the
    # server trusts the client (trust, cert, peer), and would hold the bundle's access.
    login: bool = False

    @property
    def dirty(self) -> bool:
        return bool(self.owns_in or self.settings_in or self.password or self.login)


def lock_key(key: LabelKey, bundle: str) -> int:
    """The bundle's advisory lock key: from the connector's secret, so no other user can tell
    which lock to take beforehand (it can still see one taken, in pg_locks). Not memoised
    across batches: a memo keyed by the label key would hold the key between them."""
    digest = key.keyed_hash("bundle lock", bundle)
    raw = base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4))[:8]
    return int.from_bytes(raw, "big", signed=True)


def join_lock(render: Renderer, key: LabelKey, bundles: list[str]) -> list[Rendered]:
    """Statements a grant runs in its transaction before joining these bundles."""
    return [
        render(
            "SELECT pg_catalog.pg_advisory_xact_lock_shared({}::pg_catalog.int8)",
            render.literal(lock_key(key, name)),
        )
        for name in sorted(set(bundles))
    ]


def bundle_state_query(session: PostgreSQLSession) -> psycopg.Cursor[Any]:
    """Run the query of every bundle's state (in the caller's pipeline, if any)."""
    if session._authid_readable is None:
        # Only a superuser reads pg_authid; the server reports is_superuser at connect.
        superuser = session.conn.info.parameter_status("is_superuser")
        session._authid_readable = superuser == "on"
    prefix = session.settings.role_prefix + "b_"
    after = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return session._exec(_STATES[session._authid_readable], (prefix, after))


def bundle_states(session: PostgreSQLSession, rows: list[Any] | None = None) -> list[BundleState]:
    """Every bundle of this integration, with what members may have left on it (from `rows`
    of `bundle_state_query` when the caller read them already)."""
    if rows is None:
        rows = bundle_state_query(session).fetchall()
    found = []
    for name, oid, comment, owns_in, settings_in, has_password, members, elsewhere, login in rows:
        role = session._role((name, oid, False, False, comment))
        label = session._ours(role, "bundle")
        if label is None:
            continue  # not ours: never touched
        found.append(
            BundleState(
                str(name),
                int(oid),
                [str(d) for d in owns_in],
                [str(d) for d in settings_in],
                None if has_password is None else bool(has_password),
                bool(members),
                bool(elsewhere),
                label,
                bool(login),
            )
        )
    return found


def clean_bundles(session: PostgreSQLSession, rows: list[Any] | None = None) -> list[str]:
    """Take away what members left on this integration's bundles; what is still there after
    (a company object depends on it, a database cannot be reached) is returned, one line each."""
    dirty = [state for state in bundle_states(session, rows) if state.dirty]
    if not dirty:
        return []
    left: list[str] = []
    for state in dirty:
        left += _clean_one(session, state)
    # Read again: a member may have made more meanwhile, or a step may have missed something.
    for state in bundle_states(session):
        if state.owns_in:
            where = ", ".join(state.owns_in)
            left.append(f"bundle {state.name} still owns object(s) in database(s) {where}")
        if state.settings_in:
            left.append(f"bundle {state.name} still has role settings")
        if state.password:
            left.append(f"bundle {state.name} still has a password")
        if state.login:
            left.append(f"bundle {state.name} may still log in")
    return sorted(set(left))


def _clean_one(session: PostgreSQLSession, state: BundleState) -> list[str]:
    left: list[str] = []
    role = sql.Identifier(state.name)
    alters: list[sql.Composable] = []
    if (
        state.password
        or state.login
        or (state.password is None and (state.settings_in or state.owns_in))
    ):
        alters.append(sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(role))
    for dbname in sorted(set(state.settings_in)):
        if dbname:
            alters.append(
                sql.SQL("ALTER ROLE {} IN DATABASE {} RESET ALL").format(
                    role, sql.Identifier(dbname)
                )
            )
        else:
            alters.append(sql.SQL("ALTER ROLE {} RESET ALL").format(role))
    if alters:
        try:
            session._retrying(lambda: session._atomic(alters))
        except psycopg.Error as exc:
            left.append(f"bundle {state.name}: settings not reset: {exc.diag.message_primary}")
    for dbname in state.owns_in:
        try:
            conn = session.conn if dbname == session.settings.dbname else session._connect(dbname)
        except TargetError as exc:
            left.append(f"bundle {state.name}: database {dbname}: {exc}")
            continue
        try:
            try:
                _drop_objects_ending_lockers(session, conn, state, dbname)
            except psycopg.errors.DependentObjectsStillExist:
                # A member's session made temporary objects as the bundle (TEMP is PUBLIC's by
                # default) and its own temporary objects on them: they go with that session,
                # which is ended; then the drop is tried once more.
                holders = _temp_holders(session, conn, state)
                if not holders:
                    raise
                session._terminate_all(holders)
                _drop_objects_ending_lockers(session, conn, state, dbname)
        except psycopg.Error as exc:
            detail = f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""
            left.append(
                f"bundle {state.name}: database {dbname}: objects a member made as the bundle "
                f"not removed: {exc.diag.message_primary}{detail}"
            )
        finally:
            if conn is not session.conn:
                conn.close()
    return left


def _drop_objects_ending_lockers(
    session: PostgreSQLSession, conn: psycopg.Connection[Any], state: BundleState, dbname: str
) -> None:
    try:
        _drop_objects(session, conn, state)
    except psycopg.errors.LockNotAvailable:
        # A session (a member acting as the bundle, or anyone) holds a lock on one of the
        # bundle's objects to keep it: such objects are not allowed, so the sessions locking
        # them are ended (never a superuser's or the admin's).
        session._ending_blockers(
            [state.name],
            lambda: _drop_objects(session, conn, state),
            conn=conn,
            dbname=dbname,
            relations_of=[state.oid],
        )


# Other owners of objects in the temporary schemas where the bundle owns something. Only the
# session of a schema pg_temp_N can create in it, so they are the roles of that session.
_TEMP_HOLDERS = (
    "WITH o AS (SELECT c.relnamespace AS ns, c.relowner AS owner FROM pg_catalog.pg_class c "
    "  UNION ALL SELECT p.pronamespace, p.proowner FROM pg_catalog.pg_proc p "
    "  UNION ALL SELECT t.typnamespace, t.typowner FROM pg_catalog.pg_type t), "
    "temp AS (SELECT o.ns, o.owner FROM o JOIN pg_catalog.pg_namespace n "
    "  ON n.oid OPERATOR(pg_catalog.=) o.ns "
    "  WHERE pg_catalog.starts_with(n.nspname::pg_catalog.text, 'pg_temp_')) "
    "SELECT DISTINCT r.rolname::pg_catalog.text FROM temp "
    "JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) temp.owner "
    "WHERE temp.owner OPERATOR(pg_catalog.<>) %s::pg_catalog.oid "
    "AND temp.ns OPERATOR(pg_catalog.=) ANY(ARRAY(SELECT b.ns FROM temp b "
    "  WHERE b.owner OPERATOR(pg_catalog.=) %s::pg_catalog.oid))"
)


def _temp_holders(
    session: PostgreSQLSession, conn: psycopg.Connection[Any], state: BundleState
) -> list[str]:
    """The connector's grant roles whose sessions hold temporary objects next to the bundle's
    (never another role: the connector ends only its own grantees' sessions)."""
    rows = conn.execute(_TEMP_HOLDERS, (state.oid, state.oid)).fetchall()
    roles = session._roles([str(row[0]) for row in rows])
    return sorted(
        name
        for name, role in roles.items()
        if session._ours(role) is not None and not role.privileged
    )


def _drop_objects(
    session: PostgreSQLSession, conn: psycopg.Connection[Any], state: BundleState
) -> None:
    """In `conn`'s database: the bundle's objects go through a throwaway role, which takes
    their ownership (and nothing of the bundle's privileges) and is dropped with them; then
    the bundle's default privileges are reset. One transaction: all or nothing."""
    bundle = sql.Identifier(state.name)
    trash = sql.Identifier(f"{session.settings.role_prefix}x_{secrets.token_hex(6)}")
    with conn.transaction():
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(trash))
        conn.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(bundle, trash))
        # Never CASCADE: a company object built on the bundle's must stop the revoke, not go.
        conn.execute(sql.SQL("DROP OWNED BY {}").format(trash))
        conn.execute(sql.SQL("DROP ROLE {}").format(trash))
        for scoped, schema, objtype, grantees in conn.execute(
            _DEFAULT_ACLS, (state.oid,)
        ).fetchall():
            kind = _OBJECT_TYPES.get(str(objtype))
            if kind is None:
                continue
            where = (
                sql.SQL(" IN SCHEMA {}").format(sql.Identifier(schema)) if scoped else sql.SQL("")
            )
            prefix = sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {}{} ").format(bundle, where)
            names = [str(g) for g in grantees if scoped or str(g) != state.name]
            if names:
                targets = sql.SQL(", ").join(
                    sql.SQL("PUBLIC") if not g else sql.Identifier(g) for g in names
                )
                conn.execute(
                    prefix + sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.SQL(kind), targets)
                )
            if not scoped:  # back to the built-in default, which removes the entry
                conn.execute(
                    prefix + sql.SQL("GRANT ALL ON {} TO {}").format(sql.SQL(kind), bundle)
                )
                public = _PUBLIC_DEFAULT.get(str(objtype))
                if public:
                    conn.execute(
                        prefix
                        + sql.SQL("GRANT {} ON {} TO PUBLIC").format(sql.SQL(public), sql.SQL(kind))
                    )


def reset_passwords(session: PostgreSQLSession) -> list[str]:
    """When the admin cannot see whether a bundle has a password (not a superuser), remove it
    from every bundle: the sweep does this, so one a member set survives a sweep interval."""
    if session._authid_readable is not False:
        return []
    failed = []
    for state in bundle_states(session):
        role = sql.Identifier(state.name)
        statement = sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(role)
        try:
            session._retrying(lambda statement=statement: session._atomic([statement]))  # type: ignore[misc]
        except psycopg.Error as exc:
            failed.append(f"bundle {state.name}: password not reset: {exc.diag.message_primary}")
    return failed


_MEMBERS = (
    "SELECT g.rolname::pg_catalog.text, pg_catalog.shobj_description(g.oid, 'pg_authid'), "
    "  u.rolname::pg_catalog.text, pg_catalog.shobj_description(u.oid, 'pg_authid') "
    "FROM pg_catalog.pg_auth_members m "
    "JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) m.roleid "
    "JOIN pg_catalog.pg_roles u ON u.oid OPERATOR(pg_catalog.=) m.member "
    "WHERE g.rolname OPERATOR(pg_catalog.>=) %s::pg_catalog.name "
    "AND g.rolname OPERATOR(pg_catalog.<) %s::pg_catalog.name"
)


def remove_strangers(session: PostgreSQLSession) -> list[str]:
    """Only the connector's grant roles made for a bundle may be its members: a role manager that
    grants a bundle to anyone else (`GRANT bundle TO mallory`) would give lasting access that no
    revoke of ours ends, and one that grants it to another permission's grant role would make
    that grant give more than its permission says. Such memberships are revoked; what could not
    be is returned."""
    prefix = session.settings.role_prefix + "b_"
    after = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    rows = session.conn.execute(_MEMBERS, (prefix, after)).fetchall()
    strangers: dict[str, list[str]] = {}
    for bundle, bundle_comment, member, member_comment in rows:
        group = session._role((bundle, 0, False, False, bundle_comment))
        bundle_label = session._ours(group, "bundle")
        if bundle_label is None:
            continue
        role = session._role((member, 0, False, False, member_comment))
        if _belongs(session, str(bundle), str(member), session._ours(role), bundle_label):
            continue
        strangers.setdefault(str(bundle), []).append(str(member))
    failed = []
    for bundle, members in strangers.items():
        statement = sql.SQL("REVOKE {} FROM {} CASCADE").format(
            sql.Identifier(bundle), sql.SQL(", ").join(map(sql.Identifier, members))
        )
        log.warning("bundle %s had members the connector did not make: %s", bundle, members)
        try:
            session._retrying(lambda statement=statement: session._atomic([statement]))  # type: ignore[misc]
        except psycopg.Error as exc:
            failed.append(
                f"bundle {bundle}: members {members} not removed: {exc.diag.message_primary}"
            )
    return failed


_GROUPS = (
    "SELECT u.rolname::pg_catalog.text, pg_catalog.shobj_description(u.oid, 'pg_authid'), "
    "  g.rolname::pg_catalog.text "
    "FROM pg_catalog.pg_auth_members m "
    "JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) m.roleid "
    "JOIN pg_catalog.pg_roles u ON u.oid OPERATOR(pg_catalog.=) m.member "
    "WHERE u.rolname OPERATOR(pg_catalog.>=) %s::pg_catalog.name "
    "AND u.rolname OPERATOR(pg_catalog.<) %s::pg_catalog.name"
)


def remove_foreign_groups(session: PostgreSQLSession) -> list[str]:
    """A bundle is a member only of the groups its statements gave it, which its label records
    (bundles from before labels recorded them are brought up to date by their next grant): a
    role manager's `GRANT company TO bundle` would give every grant of the permission the
    company's privileges, and no revoke of ours would end that. Such memberships are revoked;
    what could not be is returned."""
    foreign = _foreign_groups(session)
    for bundle, groups in foreign.items():
        statement = sql.SQL("REVOKE {} FROM {} CASCADE").format(
            sql.SQL(", ").join(map(sql.Identifier, groups)), sql.Identifier(bundle)
        )
        log.warning("bundle %s was made a member of groups it was not given: %s", bundle, groups)
        # A failure is said below, with what a REVOKE that only warned (16 and later) left.
        with contextlib.suppress(psycopg.Error):
            session._retrying(lambda statement=statement: session._atomic([statement]))  # type: ignore[misc]
    if not foreign:
        return []
    return [
        f"bundle {bundle}: still a member of {groups}, which its statements did not give"
        for bundle, groups in _foreign_groups(session).items()
    ]


def _foreign_groups(session: PostgreSQLSession) -> dict[str, list[str]]:
    prefix = session.settings.role_prefix + "b_"
    after = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    foreign: dict[str, list[str]] = {}
    for bundle, comment, group in session.conn.execute(_GROUPS, (prefix, after)).fetchall():
        label = session._ours(session._role((bundle, 0, False, False, comment)), "bundle")
        if label is None or "groups" not in label or group in label["groups"]:
            continue
        foreign.setdefault(str(bundle), []).append(str(group))
    return foreign


def _belongs(
    session: PostgreSQLSession,
    bundle: str,
    member: str,
    label: dict[str, Any] | None,
    bundle_label: dict[str, Any],
) -> bool:
    """A member the connector made for this bundle: an ephemeral grant's role whose label names
    the bundle (labels from before they named it: of the bundle's permission). Any grant role
    would do otherwise: a role manager's `GRANT owner_bundle TO reader_grant` (or the bundle of
    an earlier, broader version of the same permission) would make a grant give more than its
    permission until its own revoke."""
    if label is None or member != role_name(session.settings, label["grant_id"]):
        return False
    if label.get("mode", "ephemeral") != "ephemeral":
        return False
    bundles = label.get("bundles")
    if bundles is not None:
        return bundle in bundles
    return bool(label.get("permission") == bundle_label.get("permission"))


def drop_idle_bundles(session: PostgreSQLSession, now: datetime | None = None) -> list[str]:
    """Drop the bundles no grant is a member of (old versions, and current ones nobody holds),
    except those made in the last few minutes. Returns what could not be dropped; running it
    again is harmless."""
    moment = now or utcnow()
    failed: list[str] = []
    for state in bundle_states(session):
        if state.has_members:
            continue
        # Another database's bundle (one name prefix may serve several): its privileges are
        # there, and only a connection there can drop it. Labels from before the database was
        # recorded are judged by where the bundle's privileges are.
        if state.label.get("database", session.settings.dbname) != session.settings.dbname:
            continue
        if "database" not in state.label and state.elsewhere:
            continue
        made = state.label.get("made_at")
        # Made this recently: the grant that made it joins it in a transaction of its own.
        grace = timedelta(seconds=session.settings.bundle_grace_seconds)
        if made and datetime.fromisoformat(str(made)) > moment - grace:
            continue
        if state.dirty:
            left = _clean_one(session, state)
            if left:
                failed += left
                continue
        try:
            session._retrying(lambda state=state: _drop_bundle(session, state))  # type: ignore[misc]
        except psycopg.Error as exc:
            failed.append(f"bundle {state.name} not dropped: {exc.diag.message_primary}")
    return failed


def _drop_bundle(session: PostgreSQLSession, state: BundleState) -> None:
    conn = session.conn
    with conn.transaction():
        got = conn.execute(
            "SELECT pg_catalog.pg_try_advisory_xact_lock(%s::pg_catalog.int8)",
            (lock_key(session.key, state.name),),
        ).fetchone()
        if not (got and got[0]):
            return  # a grant is joining it right now
        # Holding the lock: every grant that joined has committed and is seen here.
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m "
            "WHERE m.roleid OPERATOR(pg_catalog.=) %s::pg_catalog.oid)",
            (state.oid,),
        ).fetchone()
        if row and row[0]:
            return
        role = sql.Identifier(state.name)
        conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
        conn.execute(sql.SQL("DROP ROLE {}").format(role))


# Per server and admin: (when checked, what was found). Checking means a connection to every
# database PUBLIC may connect to; a queue delivers one grant per batch, so the answer is kept
# for a while. What a member makes as its bundle in between is removed at revoke anyway.
_PUBLIC_CREATE: dict[tuple[str, int, str, str], tuple[float, list[str]]] = {}
_PUBLIC_CREATE_LOCK = threading.Lock()


def public_create_databases(session: PostgreSQLSession) -> list[str]:
    """Each database a member can reach where PUBLIC may CREATE (in the database, or in one of
    its schemas), as `database` or `database.schema`; from the last check of this server if it
    is recent enough."""
    s = session.settings
    key = (s.host, s.port, s.user, s.dbname)
    with _PUBLIC_CREATE_LOCK:
        cached = _PUBLIC_CREATE.get(key)
    if cached is not None and time.monotonic() - cached[0] < s.public_create_check_seconds:
        return cached[1]
    found = _public_create_databases(session)
    with _PUBLIC_CREATE_LOCK:
        _PUBLIC_CREATE[key] = (time.monotonic(), found)
    return found


def _public_create_databases(session: PostgreSQLSession) -> list[str]:
    found: list[str] = []
    for dbname, database_create in session.conn.execute(_REACHABLE).fetchall():
        if database_create:
            found.append(str(dbname))
        conn = session.conn if dbname == session.settings.dbname else None
        try:
            if conn is None:
                conn = session._connect(str(dbname))
        except AuthenticationFailed:
            # The admin's password changed under us (a rotation): the engine reads the secret
            # again and runs the grant again; never a refusal, never a cached answer.
            raise
        except TargetError:
            still = session.conn.execute(
                "SELECT 1 FROM pg_catalog.pg_database d "
                "WHERE d.datname OPERATOR(pg_catalog.=) %s AND d.datallowconn",
                (dbname,),
            ).fetchone()
            if still is not None:
                # What cannot be checked is counted as open: the grant is refused, not risked.
                found.append(f"{dbname} (not checked: the admin cannot connect)")
            continue  # dropped (or closed to connections) since it was listed: out of reach
        try:
            row = conn.execute(_PUBLIC_CREATE_SCHEMAS).fetchone()
        finally:
            if conn is not session.conn:
                conn.close()
        found += [f"{dbname}.{schema}" for schema in (row[0] if row and row[0] else [])]
    return found
