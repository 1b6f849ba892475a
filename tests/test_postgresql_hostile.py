"""The PostgreSQL template inside a server where grantees and other users are hostile.

On a private cluster (tests/pgtest.py: private_cluster), because these tests plant functions in
`public`, hold locks and make CREATEROLE users: nothing a shared server's other users should
meet. The database `app` is set up as one upgraded from before PostgreSQL 15, where every user
may create objects in `public`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from pgtest import LABEL_KEY, private_cluster
from psycopg import sql

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.labels import LabelKey
from jitc.local import MemorySink, NullScheduler
from jitc.messages import parse_request
from jitc.models import AccessRequest, Outcome
from jitc.sealing import box_keypair, unseal
from jitc.secrets import EnvSecretStore, SecretStores
from jitc.templates.postgresql_bundles import lock_key

PREFIX = "h_"
INTEGRATION = "hostile"
BOX_PRIVATE, BOX_PUBLIC = box_keypair()
# The old template's lock keys: derived from what every user can read, so anyone could hold them.
OLD_ACL_LOCK_KEY = 0x6A697463_61636C


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    with private_cluster() as params:
        with psycopg.connect(**params, autocommit=True) as conn:
            conn.execute("CREATE DATABASE app")
        app = {**params, "dbname": "app"}
        with psycopg.connect(**app, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA s")
            conn.execute("CREATE TABLE s.items (id int PRIMARY KEY, name text)")
            conn.execute("INSERT INTO s.items VALUES (1, 'a'), (2, 'b')")
            conn.execute("CREATE ROLE mallory LOGIN")
            conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
            conn.execute("GRANT USAGE ON SCHEMA s TO mallory")
        yield app


@dataclass
class Hostile:
    engine: Engine
    sink: MemorySink
    params: dict[str, Any]
    admin: psycopg.Connection[Any]

    def connect(
        self, user: str, dbname: str | None = None, **extra: Any
    ) -> psycopg.Connection[Any]:
        params = {**self.params, "user": user, **extra}
        if dbname:
            params["dbname"] = dbname
        return psycopg.connect(**params, autocommit=True, connect_timeout=3)

    def grant(self, request_id: str, **fields: Any) -> Outcome:
        doc: dict[str, Any] = {
            "request_id": request_id,
            "action": "grant",
            "integration": INTEGRATION,
            "permission": "read-only",
            "resources": ["s"],
            "identity": {"email": "eve@example.com", "username": "eve", "public_key": BOX_PUBLIC},
            "duration": "15m",
            **fields,
        }
        return self.engine.execute(parse_request(json.dumps(doc)))

    def revoke(self, request_id: str) -> Outcome:
        return self.engine.execute(self._revoke(request_id))

    def _revoke(self, request_id: str) -> AccessRequest:
        doc = {"request_id": request_id, "action": "revoke", "integration": INTEGRATION}
        return parse_request(json.dumps(doc))

    def login(self, outcome: Outcome, dbname: str | None = None) -> psycopg.Connection[Any]:
        assert outcome.sealed_credentials is not None, outcome
        creds = unseal(outcome.sealed_credentials, BOX_PRIVATE)
        return self.connect(creds["username"], dbname, password=creds["password"])

    def superuser(self, role: str) -> bool:
        row = self.admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,))
        found = row.fetchone()
        return bool(found and found[0])

    def exists(self, role: str) -> bool:
        """The role exists and is not a tombstone (which keeps a revoked grant's name)."""
        row = self.admin.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s AND coalesce(shobj_description(oid, "
            "'pg_authid'), '') NOT LIKE '%%\"state\":\"tombstone\"%%'",
            (role,),
        )
        return row.fetchone() is not None


def _hostile(cluster: dict[str, Any], **connection: Any) -> Iterator[Hostile]:
    catalog = parse_catalog(
        {
            "connector": {"label_key": "mem:label"},
            "integrations": {
                INTEGRATION: {
                    "kind": "postgresql",
                    "connection": {
                        **cluster,
                        "role_prefix": PREFIX,
                        "admin_lock_timeout": "1s",
                        "terminate_wait_seconds": 5,
                        "bundle_grace_seconds": 0,
                        "public_create_check_seconds": 0,
                        **connection,
                    },
                    "credentials": "mem:admin",
                    "permissions": {
                        "read-only": {"template": "read-only", "resources": ["s"]},
                        "owner": {"template": "owner", "resources": ["s"]},
                        "analyst": {"mode": "membership", "resources": ["readers", "g_top"]},
                        "watcher": {
                            "mode": "membership",
                            "resources": ["readers"],
                            "terminate_sessions": False,
                        },
                    },
                }
            },
        }
    )
    sink = MemorySink()
    store = SecretStores({"mem": EnvSecretStore({"admin": "", "label": LABEL_KEY})})
    engine = Engine(catalog, store, NullScheduler(), sink)
    with psycopg.connect(**cluster, autocommit=True) as admin:
        yield Hostile(engine, sink, cluster, admin)


@pytest.fixture
def hostile(cluster: dict[str, Any]) -> Iterator[Hostile]:
    # This cluster lets PUBLIC create in schema public on purpose: the traps live there.
    yield from _hostile(cluster, allow_public_create=True)


@pytest.fixture
def strict(cluster: dict[str, Any]) -> Iterator[Hostile]:
    yield from _hostile(cluster)


# -- item 1: nothing a user creates runs as the admin ---------------------------------------

# Every catalog function the admin session calls, today and in earlier versions of it.
USED_FUNCTIONS = (
    "aclexplode",
    "array_agg",
    "coalesce",
    "count",
    "current_database",
    "hashtextextended",
    "max",
    "now",
    "pg_advisory_xact_lock",
    "pg_backend_pid",
    "pg_terminate_backend",
    "pg_try_advisory_xact_lock",
    "shobj_description",
    "starts_with",
    "unnest",
)
USED_OPERATORS = ("=", "<>", "<=", "||", "~")
# A trap wins overload resolution when it matches the call's types better than pg_catalog's:
# an integer literal where pg_catalog takes bigint, text where it takes name or oid.
SWAPS = {
    "bigint": "integer",
    "oid": "integer",
    "name": "text",
    "regclass": "text",
    "anyarray": "text[]",
    "anyelement": "text",
    "anycompatiblearray": "text[]",
    "anycompatible": "text",
    '"any"': "text",
    "aclitem[]": "text",
}


def _swap(types: str) -> str:
    pattern = "|".join(re.escape(t) for t in sorted(SWAPS, key=len, reverse=True))
    return re.sub(rf"(?<![\w\"])({pattern})(?![\w\[])", lambda m: SWAPS[m.group(1)], types)


def _plant_traps(h: Hostile) -> int:
    """As mallory, in `public`: a function or operator for every name the admin session uses,
    in every variant that could beat pg_catalog's; each makes mallory a superuser if it runs."""
    planted = 0
    with h.connect("mallory") as m:
        m.execute("CREATE TABLE IF NOT EXISTS public.sprung (name text)")
        m.execute("GRANT INSERT ON public.sprung TO PUBLIC")
        m.execute(
            "CREATE OR REPLACE FUNCTION public.spring(what text) RETURNS void "
            "LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.sprung VALUES (what); "
            "EXECUTE 'ALTER ROLE mallory SUPERUSER'; END $$"
        )
        signatures = m.execute(
            "SELECT p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid), "
            "pg_catalog.pg_get_function_result(p.oid) FROM pg_catalog.pg_proc p "
            "WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY(%s)",
            (list(USED_FUNCTIONS),),
        ).fetchall()
        for name, args, result in signatures:
            for variant in {args, _swap(args)}:
                returns = _swap(result)
                body = "RETURN;" if returns.startswith(("SETOF", "TABLE")) else "RETURN NULL;"
                try:
                    with m.transaction():
                        m.execute(
                            f"CREATE FUNCTION public.{name}({variant}) RETURNS {returns} "
                            f"LANGUAGE plpgsql AS $$ BEGIN PERFORM public.spring('{name}'); "
                            f"{body} END $$"
                        )
                    planted += 1
                except psycopg.Error:
                    pass  # a pseudo-type PL/pgSQL cannot take, or a variant already planted
        operators = m.execute(
            "SELECT DISTINCT o.oprname, pg_catalog.format_type(o.oprleft, NULL), "
            "pg_catalog.format_type(o.oprright, NULL) FROM pg_catalog.pg_operator o "
            "WHERE o.oprname = ANY(%s) AND o.oprleft <> 0 AND pg_catalog.format_type(o.oprleft, "
            "NULL) IN ('name', 'oid', 'text', 'bigint', 'integer', 'timestamp with time zone')",
            (list(USED_OPERATORS),),
        ).fetchall()
        for index, (op, left, right) in enumerate(operators):
            swapped = (_swap(left), _swap(right))
            fn = f"public.trap_op_{index}"
            try:
                with m.transaction():
                    m.execute(
                        f"CREATE FUNCTION {fn}(a {swapped[0]}, b {swapped[1]}) RETURNS boolean "
                        "LANGUAGE plpgsql AS $$ BEGIN PERFORM public.spring('operator'); "
                        "RETURN false; END $$"
                    )
                    m.execute(
                        f"CREATE OPERATOR public.{op} (LEFTARG = {swapped[0]}, "
                        f"RIGHTARG = {swapped[1]}, FUNCTION = {fn})"
                    )
                planted += 1
            except psycopg.Error:
                pass
    return planted


def _remove_traps(h: Hostile) -> None:
    with h.connect("admin") as admin:
        admin.execute("DROP OWNED BY mallory")
        admin.execute("ALTER ROLE mallory NOSUPERUSER")
        admin.execute("GRANT USAGE ON SCHEMA s TO mallory")


def test_traps_in_public_never_run_as_the_admin(hostile: Hostile) -> None:
    h = hostile
    h.admin.execute("CREATE ROLE readers NOLOGIN")
    h.admin.execute("CREATE ROLE g_top NOLOGIN")
    h.admin.execute("CREATE ROLE eve LOGIN")
    try:
        assert _plant_traps(h) > len(USED_FUNCTIONS)
        ro = h.grant("trap-ro")
        owner = h.grant("trap-owner", permission="owner")
        member = h.grant("trap-m", permission="analyst", resources=["readers"])
        assert [o.status for o in (ro, owner, member)] == ["granted"] * 3, (ro, owner, member)
        assert h.grant("trap-ro").status == "granted"  # a redelivery reads the ledger
        assert h.revoke("trap-ro").status == "revoked"
        assert h.revoke("trap-never").status == "revoked"  # revoke before grant: a tombstone
        report = h.engine.sweep(datetime.now(UTC) + timedelta(days=1))
        assert report.ok and sorted(report.revoked) == sorted([owner.grant_id, member.grant_id]), (
            report
        )
        with h.connect("admin") as admin:
            sprung = admin.execute("SELECT name FROM public.sprung").fetchall()
        assert sprung == [] and not h.superuser("mallory")
    finally:
        _remove_traps(h)
        for role in ("readers", "g_top", "eve"):
            h.admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


# -- item 2: no lock a stranger holds stalls a revoke ----------------------------------------


def _in_thread(step: Any, timeout: float) -> tuple[bool, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(step()), daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive(), result


def test_advisory_locks_held_by_another_user_do_not_stall_grant_or_revoke(
    hostile: Hostile,
) -> None:
    h = hostile
    granted = h.grant("lock-1")
    assert granted.status == "granted"
    with h.connect("mallory") as m:
        # Every key the grant id or a fixed constant could give, as the old template used them.
        m.execute(
            "SELECT pg_advisory_lock(pg_catalog.hashtextextended(%s, 0)), pg_advisory_lock(%s)",
            (granted.grant_id, OLD_ACL_LOCK_KEY),
        )
        done, result = _in_thread(lambda: h.revoke("lock-1"), 30)
        other_done, other = _in_thread(lambda: h.grant("lock-2"), 30)
        m.execute("SELECT pg_advisory_unlock_all()")
    assert done and result[0].status == "revoked" and result[0].verified
    assert other_done and other[0].status == "granted"


def test_a_grantee_locking_its_own_role_cannot_stall_its_revoke(hostile: Hostile) -> None:
    h = hostile
    granted = h.grant("lock-3")
    session = h.login(granted)
    session.execute("SET idle_in_transaction_session_timeout = 0")
    session.execute("BEGIN")
    # Holds the row lock on its own pg_authid entry for as long as it likes.
    session.execute(
        sql.SQL("ALTER ROLE {} PASSWORD 'mine-now'").format(sql.Identifier(str(granted.principal)))
    )
    done, result = _in_thread(lambda: h.revoke("lock-3"), 30)
    assert done, "revoke waited on the grantee's lock"
    assert result[0].status == "revoked" and result[0].verified
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    assert not h.exists(str(granted.principal))


# -- item 3: a revoke removes everything, in every database, or says failed ------------------


def test_owner_backdoors_in_two_databases_are_removed_at_revoke(hostile: Hostile) -> None:
    h = hostile
    granted = h.grant("own-1", permission="owner")
    name = str(granted.principal)
    with h.login(granted) as grantee:
        grantee.execute(
            "CREATE FUNCTION s.backdoor() RETURNS bigint SECURITY DEFINER LANGUAGE sql "
            "AS 'SELECT count(*) FROM s.items'"
        )
        grantee.execute("GRANT EXECUTE ON FUNCTION s.backdoor() TO PUBLIC")
    with h.login(granted, "postgres") as elsewhere:  # PUBLIC may connect to `postgres`
        lo = elsewhere.execute("SELECT lo_create(0)").fetchone()
    assert lo is not None

    revoke = h.revoke("own-1")
    assert revoke.status == "revoked" and revoke.verified, revoke
    assert not h.exists(name)
    with h.connect("mallory") as m, pytest.raises(psycopg.errors.UndefinedFunction):
        m.execute("SELECT s.backdoor()")
    with h.connect("admin", "postgres") as pg:
        row = pg.execute("SELECT 1 FROM pg_largeobject_metadata WHERE oid = %s", (lo[0],))
        assert row.fetchone() is None


def test_a_trigger_on_a_table_the_grantee_does_not_own_goes_with_its_function(
    hostile: Hostile,
) -> None:
    h = hostile
    h.admin.execute("CREATE TABLE IF NOT EXISTS s.audit (x int)")
    granted = h.grant("own-2", permission="owner")
    name = str(granted.principal)
    # The company once gave TRIGGER on one of its tables to this role.
    h.admin.execute(sql.SQL("GRANT TRIGGER ON s.audit TO {}").format(sql.Identifier(name)))
    with h.login(granted) as grantee:
        grantee.execute(
            "CREATE FUNCTION s.tf() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"
        )
        grantee.execute(
            "CREATE TRIGGER later BEFORE INSERT ON s.audit FOR EACH ROW EXECUTE FUNCTION s.tf()"
        )
    revoke = h.revoke("own-2")
    assert revoke.status == "revoked" and revoke.verified, revoke
    triggers = h.admin.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 's.audit'::regclass"
    ).fetchone()
    assert triggers == (0,) and not h.exists(name)


def test_revoke_never_drops_company_objects_that_depend_on_the_grantees(hostile: Hostile) -> None:
    """The grantee makes a type; the company uses it in its own table. DROP OWNED ... CASCADE
    would drop the company's column; the revoke fails instead and says what is in the way."""
    h = hostile
    granted = h.grant("dep-1", permission="owner")
    with h.login(granted) as grantee:
        grantee.execute("CREATE DOMAIN s.dep_amount AS int CHECK (VALUE >= 0)")
    h.admin.execute("CREATE TABLE s.dep_company (id int, amount s.dep_amount)")
    h.admin.execute("INSERT INTO s.dep_company VALUES (1, 5)")
    try:
        outcome = h.revoke("dep-1")
        assert outcome.status == "failed" and not outcome.verified, outcome
        assert any("dep_company" in r for r in outcome.residual), outcome.residual
        row = h.admin.execute("SELECT amount FROM s.dep_company").fetchone()
        assert row == (5,)  # the company's column is still there
        login = h.admin.execute(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (str(granted.principal),)
        ).fetchone()
        assert login == (False,)  # access ended, though the role stays until it is clean
        # Once the company moves its column off the type, the retried revoke finishes.
        h.admin.execute("ALTER TABLE s.dep_company ALTER COLUMN amount TYPE int")
        again = h.revoke("dep-1")
        assert again.status == "revoked" and again.verified, again
    finally:
        h.admin.execute("DROP TABLE IF EXISTS s.dep_company")


def test_a_strangers_lock_on_the_grantees_table_neither_stalls_revoke_nor_keeps_its_door(
    hostile: Hostile,
) -> None:
    """The grantee leaves a SECURITY DEFINER function for mallory, and mallory holds a lock on
    a table of the grantee's so that its drop waits: the revoke still finishes, and the door
    never makes anything in the company's schema after the revoke began."""
    h = hostile
    granted = h.grant("door-1", permission="owner")
    with h.login(granted) as grantee:
        grantee.execute("CREATE TABLE s.door_mine (x int)")
        grantee.execute("GRANT SELECT ON s.door_mine TO mallory")
        grantee.execute(
            "CREATE FUNCTION s.door(q text) RETURNS void SECURITY DEFINER LANGUAGE plpgsql "
            "SET search_path = pg_catalog AS $$ BEGIN EXECUTE q; END $$"
        )
        grantee.execute("GRANT EXECUTE ON FUNCTION s.door(text) TO mallory")
    mallory = h.connect("mallory")
    try:
        mallory.execute("SET idle_in_transaction_session_timeout = 0")
        mallory.execute("BEGIN")
        mallory.execute("LOCK TABLE s.door_mine IN ACCESS SHARE MODE")
        outcome = h.revoke("door-1")
        assert outcome.status == "revoked" and outcome.verified, outcome
        with h.connect("mallory") as again, pytest.raises(psycopg.Error):
            again.execute("SELECT s.door('CREATE TABLE s.door_planted (x int)')")
        assert h.admin.execute("SELECT to_regclass('s.door_planted')").fetchone() == (None,)
    finally:
        mallory.close()
        h.admin.execute("DROP TABLE IF EXISTS s.door_planted")


def test_before_16_no_grant_while_public_may_create_and_bundle_objects_go_at_revoke(
    strict: Hostile, hostile: Hostile
) -> None:
    """Before 16 a grantee may SET ROLE its bundle: where PUBLIC may CREATE it would leave a
    SECURITY DEFINER function owned by the bundle, usable by anyone after the revoke."""
    if strict.admin.info.server_version >= 160000:
        pytest.skip("on 16 and later the grantee may not SET ROLE its bundle")
    refused = strict.grant("pub-1")
    assert refused.status == "refused" and refused.field == "permission", refused
    assert "allow_public_create" in str(refused.message)
    # With the catalog's explicit leave, what a member made as the bundle goes at revoke.
    granted = hostile.grant("pub-2")
    bundle = str(
        hostile.admin.execute(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s",
            (str(granted.principal),),
        ).fetchone()[0]  # type: ignore[index]
    )
    try:
        with hostile.login(granted) as grantee:
            grantee.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(bundle)))
            grantee.execute(
                "CREATE FUNCTION public.pub_leak() RETURNS bigint SECURITY DEFINER "
                "LANGUAGE sql AS 'SELECT count(*) FROM s.items'"
            )
        outcome = hostile.revoke("pub-2")
        assert outcome.status == "revoked" and outcome.verified, outcome
        gone = hostile.admin.execute("SELECT to_regprocedure('public.pub_leak()')").fetchone()
        assert gone == (None,)
    finally:
        hostile.admin.execute("DROP FUNCTION IF EXISTS public.pub_leak()")


def test_owner_template_hands_out_no_trigger_or_references(hostile: Hostile) -> None:
    h = hostile
    granted = h.grant("own-3", permission="owner")
    for privilege in ("TRIGGER", "REFERENCES"):
        row = h.admin.execute(
            "SELECT has_table_privilege(%s, 's.items', %s)", (granted.principal, privilege)
        ).fetchone()
        assert row == (False,), privilege
    assert h.revoke("own-3").status == "revoked"


# -- item 4: forged labels steer nothing -----------------------------------------------------


def test_labels_forged_by_a_createrole_user_are_never_acted_on(hostile: Hostile) -> None:
    h = hostile
    h.admin.execute("CREATE ROLE carol LOGIN CREATEROLE")
    h.admin.execute("CREATE ROLE app_owner NOLOGIN")
    h.admin.execute("CREATE ROLE app_reader LOGIN")
    h.admin.execute("CREATE TABLE s.precious (x int)")
    h.admin.execute("ALTER TABLE s.precious OWNER TO app_owner")
    real = h.grant("forge-1")
    lookalike = f"{PREFIX}{'a' * 24}"
    fake_member = f"{PREFIX}{'b' * 24}"
    past = "2000-01-01T00:00:00+00:00"
    gid = "g" + "a" * 24
    h.admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(lookalike)))
    h.admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(fake_member)))
    su = h.connect("admin")  # a superuser's session that a forged label asks us to end
    try:
        genuine = h.admin.execute(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s",
            (real.principal,),
        ).fetchone()
        assert genuine is not None
        v1 = {
            "v": 1,
            "grant_id": gid,
            "integration": INTEGRATION,
            "expires_at": past,
            "state": "active",
        }
        body = json.dumps({**v1, "v": 2, "kind": "grant"}, sort_keys=True, separators=(",", ":"))
        member = {
            **v1,
            "grant_id": "g" + "b" * 24,
            "mode": "membership",
            "member": "admin",
            "terminate_sessions": True,
        }
        with h.connect("carol") as carol:
            for role, text in (
                ("app_owner", "jitc:" + json.dumps(v1)),  # the old, unsigned format
                (lookalike, f"jitc:{'x' * 43}.{body}"),  # the new format, a made-up MAC
                ("app_reader", genuine[0]),  # a genuine label, copied onto another role
                (fake_member, "jitc:" + json.dumps(member)),
            ):
                carol.execute(
                    sql.SQL("COMMENT ON ROLE {} IS {}").format(
                        sql.Identifier(role), sql.Literal(text)
                    )
                )
        report = h.engine.sweep(datetime.now(UTC) + timedelta(days=1))
        assert real.grant_id in report.revoked and gid not in report.revoked, report
        assert all(h.exists(r) for r in ("app_owner", "app_reader", lookalike, fake_member))
        assert h.admin.execute("SELECT to_regclass('s.precious')").fetchone() == ("s.precious",)
        assert su.execute("SELECT 1").fetchone() == (1,)
        # Asked by grant id, the revoke leaves a role it cannot prove is ours alone, and says so.
        outcome = h.engine.execute(
            parse_request(
                json.dumps(
                    {
                        "request_id": "forge-r",
                        "action": "revoke",
                        "integration": INTEGRATION,
                        "grant_id": gid,
                    }
                )
            )
        )
        assert outcome.status == "failed" and h.exists(lookalike)
    finally:
        su.close()
        h.admin.execute("DROP TABLE IF EXISTS s.precious")
        for role in ("carol", "app_owner", "app_reader", lookalike, fake_member):
            h.admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


# -- item 5: no group that reaches power is handed out ---------------------------------------


@pytest.mark.parametrize(
    "reach",
    ["superuser", "createrole", "admin", "pg_write_all_data", "pg_execute_server_program", "ours"],
)
def test_membership_refuses_a_group_that_reaches_power_through_nesting(
    hostile: Hostile, reach: str
) -> None:
    h = hostile
    for role in ("g_top", "g_mid", "eve"):
        h.admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    h.admin.execute("CREATE ROLE eve LOGIN")
    h.admin.execute("CREATE ROLE g_top NOLOGIN")
    h.admin.execute("CREATE ROLE g_mid NOLOGIN")
    h.admin.execute("GRANT g_mid TO g_top")  # g_top -> g_mid -> the powerful role
    target = {
        "superuser": "h_boss",
        "createrole": "h_manager",
        "admin": "admin",
        "pg_write_all_data": "pg_write_all_data",
        "pg_execute_server_program": "pg_execute_server_program",
    }.get(reach)
    made = None
    try:
        if reach == "superuser":
            h.admin.execute("CREATE ROLE h_boss NOLOGIN SUPERUSER")
            made = "h_boss"
        elif reach == "createrole":
            h.admin.execute("CREATE ROLE h_manager NOLOGIN CREATEROLE")
            made = "h_manager"
        elif reach == "ours":
            target = str(h.grant("nest-own-role").principal)
        h.admin.execute(sql.SQL("GRANT {} TO g_mid").format(sql.Identifier(str(target))))
        outcome = h.grant("nest-" + reach, permission="analyst", resources=["g_top"])
        assert outcome.status == "refused" and outcome.field == "resources[0]", outcome.message
        with h.connect("eve") as eve, pytest.raises(psycopg.Error):
            eve.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(str(target))))
    finally:
        for role in ("g_top", "g_mid", "eve", made):
            if role:
                h.admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_membership_refuses_a_group_that_holds_admin_option_somewhere_in_reach(
    hostile: Hostile,
) -> None:
    """g_top -> g_mid, and g_mid may administer h_payroll: a member of g_top could grant
    h_payroll to itself, a grant no revoke of ours would see."""
    h = hostile
    roles = ("g_top", "g_mid", "eve", "h_payroll")
    for role in roles:
        h.admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    try:
        h.admin.execute("CREATE ROLE eve LOGIN")
        for role in ("g_top", "g_mid", "h_payroll"):
            h.admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        h.admin.execute("GRANT g_mid TO g_top")
        h.admin.execute("GRANT h_payroll TO g_mid WITH ADMIN OPTION")
        outcome = h.grant("nest-admin-option", permission="analyst", resources=["g_top"])
        assert outcome.status == "refused" and outcome.field == "resources[0]", outcome.message
        assert "ADMIN OPTION" in str(outcome.message)
        with h.connect("eve") as eve, pytest.raises(psycopg.Error):
            eve.execute("GRANT h_payroll TO eve")
    finally:
        for role in roles:
            h.admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _intermediate(h: Hostile, member: str) -> str:
    row = h.admin.execute(
        "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
        "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s",
        (member,),
    ).fetchone()
    assert row is not None
    return str(row[0])


def _reads(h: Hostile, user: str) -> bool:
    row = h.admin.execute("SELECT has_table_privilege(%s, 's.items', 'SELECT')", (user,))
    found = row.fetchone()
    return bool(found and found[0])


@pytest.mark.parametrize("hold", ["session", "prepared"])
def test_a_member_holding_its_intermediate_role_row_still_loses_the_group(
    hostile: Hostile, hold: str
) -> None:
    """eve locks the row of the role that carries her membership (an open ALTER ROLE of it,
    in a live session or a prepared transaction): the revoke still ends the access."""
    h = hostile
    for role in ("readers", "eve"):
        h.admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    h.admin.execute("CREATE ROLE readers NOLOGIN")
    h.admin.execute("CREATE ROLE eve LOGIN")
    h.admin.execute("GRANT SELECT ON s.items TO readers")
    eve = None
    try:
        rid = f"lock-{hold}"
        assert h.grant(rid, permission="analyst", resources=["readers"]).status == "granted"
        mid = _intermediate(h, "eve")
        eve = h.connect("eve")
        eve.execute("SET idle_in_transaction_session_timeout = 0")
        # On 16 and later the member may not SET ROLE to the intermediate role at all.
        eve.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(mid)))
        eve.execute("BEGIN")
        eve.execute(sql.SQL("ALTER ROLE {} PASSWORD 'x'").format(sql.Identifier(mid)))
        if hold == "prepared":
            eve.execute("PREPARE TRANSACTION 'eve-holds-it'")
        eve.execute("RESET ROLE")
        assert _reads(h, "eve")
        outcome = h.revoke(rid)
        assert not _reads(h, "eve"), outcome
        assert outcome.status == "revoked" and outcome.verified, outcome
        assert h.admin.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone() == (0,)
    finally:
        if eve is not None:
            eve.close()
        for (gid,) in h.admin.execute("SELECT gid FROM pg_prepared_xacts").fetchall():
            h.admin.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
        h.admin.execute("DROP OWNED BY readers")
        for role in ("readers", "eve"):
            h.admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


# -- item 8: membership mode says verified only when access is gone --------------------------


def test_membership_without_ending_sessions_is_unverified_while_one_holds_the_group(
    hostile: Hostile,
) -> None:
    h = hostile
    for role in ("readers", "eve"):
        h.admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    h.admin.execute("CREATE ROLE readers NOLOGIN")
    h.admin.execute("CREATE ROLE eve LOGIN")
    try:
        granted = h.grant("watch-1", permission="watcher", resources=["readers"])
        assert granted.status == "granted"
        session = h.connect("eve")
        session.execute("SET ROLE readers")  # holds the group for as long as it lives
        first = h.revoke("watch-1")
        assert first.status == "failed" and not first.verified
        assert any("session" in r for r in first.residual), first.residual
        assert session.execute("SELECT current_user").fetchone() == ("readers",)
        session.close()
        again = h.revoke("watch-1")
        assert again.status == "revoked" and again.verified, again
        with h.connect("eve") as later, pytest.raises(psycopg.errors.InsufficientPrivilege):
            later.execute("SET ROLE readers")
    finally:
        for role in ("readers", "eve"):
            h.admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


# -- bundles before PostgreSQL 16: what a member does as its bundle ---------------------------


def _bundle_of(h: Hostile, principal: str) -> str:
    row = h.admin.execute(
        "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
        "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s",
        (principal,),
    ).fetchone()
    assert row is not None
    return str(row[0])


def _bundle_state(h: Hostile, bundle: str) -> tuple[int, int, bool]:
    """(objects the bundle owns in any database, settings rows, has a password)."""
    row = h.admin.execute(
        "SELECT (SELECT count(*) FROM pg_shdepend d WHERE d.refobjid = a.oid "
        "  AND d.refclassid = 'pg_authid'::regclass AND d.deptype = 'o'), "
        " (SELECT count(*) FROM pg_db_role_setting s WHERE s.setrole = a.oid), "
        " a.rolpassword IS NOT NULL FROM pg_authid a WHERE a.rolname = %s",
        (bundle,),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), bool(row[2])


def _act_as_bundle(h: Hostile, granted: Outcome, bundle: str) -> int:
    """Everything a member may do as its bundle on 15 without CREATE of its own: a function
    where PUBLIC may create, large objects here and in `postgres`, default privileges, role
    settings (here and per database) and a password. Returns the large object's oid here."""
    role = sql.Identifier(bundle)
    with h.login(granted) as grantee:
        grantee.execute(sql.SQL("SET ROLE {}").format(role))
        grantee.execute(
            "CREATE FUNCTION public.bundle_door() RETURNS bigint SECURITY DEFINER "
            "LANGUAGE sql AS 'SELECT count(*) FROM s.items'"
        )
        grantee.execute("GRANT EXECUTE ON FUNCTION public.bundle_door() TO PUBLIC")
        lo = grantee.execute("SELECT lo_from_bytea(0, 'kept')").fetchone()
        grantee.execute("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO mallory")
        grantee.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA s GRANT SELECT ON TABLES TO mallory")
        grantee.execute("ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC")
        grantee.execute(sql.SQL("ALTER ROLE {} SET work_mem = '1MB'").format(role))
        grantee.execute(sql.SQL("ALTER ROLE {} PASSWORD 'chosen-by-the-grantee'").format(role))
    with h.login(granted, "postgres") as elsewhere:
        elsewhere.execute(sql.SQL("SET ROLE {}").format(role))
        elsewhere.execute("SELECT lo_from_bytea(0, 'kept elsewhere')")
        elsewhere.execute("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC")
    assert lo is not None
    return int(lo[0])


def _before_16(h: Hostile) -> None:
    if h.admin.info.server_version >= 160000:
        pytest.skip("on 16 and later the grantee may not SET ROLE its bundle")


def test_what_a_grantee_left_as_its_bundle_is_gone_after_revoke(hostile: Hostile) -> None:
    h = hostile
    _before_16(h)
    granted = h.grant("bo-1")
    bundle = _bundle_of(h, str(granted.principal))
    try:
        lo = _act_as_bundle(h, granted, bundle)
        assert _bundle_state(h, bundle) != (0, 0, False)
        outcome = h.revoke("bo-1")
        assert outcome.status == "revoked" and outcome.verified, outcome
        assert _bundle_state(h, bundle) == (0, 0, False)
        assert h.admin.execute("SELECT to_regprocedure('public.bundle_door()')").fetchone() == (
            None,
        )
        assert (
            h.admin.execute(
                "SELECT 1 FROM pg_largeobject_metadata WHERE oid = %s", (lo,)
            ).fetchone()
            is None
        )
        # The bundle still serves the next grant, with its privileges intact.
        again = h.grant("bo-1b")
        with h.login(again) as grantee:
            assert grantee.execute("SELECT count(*) FROM s.items").fetchone() == (2,)
        assert h.revoke("bo-1b").status == "revoked"
    finally:
        h.admin.execute("DROP FUNCTION IF EXISTS public.bundle_door()")


def test_a_retried_revoke_never_says_revoked_while_a_bundle_object_remains(
    hostile: Hostile,
) -> None:
    """The company builds on what the grantee made as its bundle: never CASCADE into it; the
    revoke fails, and so does every retry, until the company's object is out of the way."""
    h = hostile
    _before_16(h)
    granted = h.grant("bo-2")
    bundle = _bundle_of(h, str(granted.principal))
    try:
        with h.login(granted) as grantee:
            grantee.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(bundle)))
            grantee.execute("CREATE TABLE public.bundle_table (x int)")
        h.admin.execute("CREATE VIEW public.company_view AS SELECT x FROM public.bundle_table")
        first = h.revoke("bo-2")
        assert first.status == "failed" and not first.verified, first
        retried = h.revoke("bo-2")
        assert retried.status == "failed" and not retried.verified, retried
        assert any(bundle in r for r in retried.residual), retried.residual
        assert h.admin.execute("SELECT to_regclass('public.company_view')").fetchone() != (None,)
        h.admin.execute("DROP VIEW public.company_view")
        last = h.revoke("bo-2")
        assert last.status == "revoked" and last.verified, last
        assert _bundle_state(h, bundle)[0] == 0
    finally:
        h.admin.execute("DROP VIEW IF EXISTS public.company_view")
        h.admin.execute("DROP TABLE IF EXISTS public.bundle_table")


def test_public_create_in_another_database_the_grantee_can_reach_refuses_the_grant(
    cluster: dict[str, Any],
) -> None:
    """The connection's database is clean, but PUBLIC may connect to `postgres` and create in
    its `public`: a member could make objects as its bundle there."""
    postgres = {**cluster, "dbname": "postgres"}
    with psycopg.connect(**postgres, autocommit=True) as conn:
        if conn.info.server_version >= 160000:
            pytest.skip("on 16 and later the grantee may not SET ROLE its bundle")
        conn.execute("CREATE DATABASE clean")
    clean = {**cluster, "dbname": "clean"}
    with psycopg.connect(**clean, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA s")
        conn.execute("CREATE TABLE s.items (id int)")
        conn.execute("CREATE ROLE mallory_clean LOGIN")
    try:
        with psycopg.connect(**postgres, autocommit=True) as conn:
            conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
            # `app` (PUBLIC may CREATE in its public) is out of reach for this test.
            conn.execute("REVOKE CONNECT ON DATABASE app FROM PUBLIC")
        for h in _hostile(clean):
            refused = h.grant("pc-1")
            assert refused.status == "refused" and refused.field == "permission", refused
            assert "postgres.public" in str(refused.message), refused.message
        with psycopg.connect(**postgres, autocommit=True) as conn:
            conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        for h in _hostile(clean):
            granted = h.grant("pc-2")
            assert granted.status == "granted", granted
            assert h.revoke("pc-2").status == "revoked"
    finally:
        with psycopg.connect(**postgres, autocommit=True) as conn:
            conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            conn.execute("GRANT CONNECT ON DATABASE app TO PUBLIC")


def _bundles(h: Hostile) -> set[str]:
    rows = h.admin.execute(
        "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (PREFIX + "b_",)
    ).fetchall()
    return {str(row[0]) for row in rows}


def test_the_sweep_drops_bundles_no_live_grant_uses_and_only_those(hostile: Hostile) -> None:
    h = hostile
    kept = h.grant("idle-1")
    gone = h.grant("idle-2", permission="owner")
    live = _bundle_of(h, str(kept.principal))
    idle = _bundle_of(h, str(gone.principal))
    assert h.revoke("idle-2").status == "revoked"
    assert {live, idle} <= _bundles(h)
    for _ in range(2):  # idempotent: a second sweep finds nothing more to do
        report = h.engine.sweep()
        assert report.ok, report
        assert live in _bundles(h) and idle not in _bundles(h)
    with h.login(kept) as grantee:  # the live grant's access is untouched
        assert grantee.execute("SELECT count(*) FROM s.items").fetchone() == (2,)
    again = h.grant("idle-3", permission="owner")  # a later grant makes the bundle anew
    with h.login(again) as grantee:
        assert grantee.execute("SELECT count(*) FROM s.items").fetchone() == (2,)
    for request_id in ("idle-1", "idle-3"):
        assert h.revoke(request_id).status == "revoked"


def test_the_sweep_never_drops_a_bundle_a_grant_is_joining(hostile: Hostile) -> None:
    """A grant that read the bundle as present and has not committed its membership yet holds
    the bundle's shared lock: the sweep leaves that bundle for a later run."""
    h = hostile
    first = h.grant("join-1")
    bundle = _bundle_of(h, str(first.principal))
    assert h.revoke("join-1").status == "revoked"
    joining = h.connect("admin")
    try:
        joining.execute("BEGIN")
        # What a grant runs (postgresql_bundles.join_lock), up to its commit.
        key = lock_key(LabelKey.from_secret(LABEL_KEY), bundle)
        joining.execute("SELECT pg_advisory_xact_lock_shared(%s)", (key,))
        joining.execute(
            sql.SQL("CREATE ROLE join_member IN ROLE {}").format(sql.Identifier(bundle))
        )
        report = h.engine.sweep()
        assert report.ok, report
        assert bundle in _bundles(h)
        joining.execute("COMMIT")
        row = h.admin.execute(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
            "JOIN pg_roles g ON g.oid = m.roleid WHERE r.rolname = 'join_member'"
        ).fetchone()
        assert row == (1,)  # the membership points at a bundle that still exists
    finally:
        if joining.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            joining.execute("ROLLBACK")
        joining.close()
        h.admin.execute("DROP ROLE IF EXISTS join_member")


def test_what_the_grantee_made_reachable_is_cut_at_disable_even_when_the_drop_fails(
    hostile: Hostile,
) -> None:
    """The company builds a view on the grantee's table, so the revoke cannot drop it: the
    grantee's function and table are still there, but nobody reaches them through it."""
    h = hostile
    granted = h.grant("reach-1", permission="owner")
    with h.login(granted) as grantee:
        grantee.execute("CREATE TABLE s.reach_mine (x int)")
        grantee.execute("INSERT INTO s.reach_mine VALUES (1)")
        grantee.execute("GRANT SELECT ON s.reach_mine TO mallory")
        grantee.execute(
            "CREATE FUNCTION s.reach_fn() RETURNS bigint SECURITY DEFINER LANGUAGE sql "
            "AS 'SELECT count(*) FROM s.reach_mine'"
        )  # EXECUTE for PUBLIC by default
        grantee.execute(
            "CREATE AGGREGATE s.reach_agg(int) (SFUNC = int4pl, STYPE = int, INITCOND = '0')"
        )
    with h.login(granted, "postgres") as elsewhere:  # PUBLIC may connect to `postgres`
        row = elsewhere.execute("SELECT lo_from_bytea(0, 'elsewhere')").fetchone()
        assert row is not None
        elsewhere.execute(sql.SQL("GRANT SELECT ON LARGE OBJECT {} TO mallory").format(row[0]))
        with h.connect("mallory", "postgres") as m:
            assert m.execute("SELECT lo_get(%s)", (row[0],)).fetchone() == (b"elsewhere",)
    # Objects a REVOKE cannot name (another session's temporary table) must not undo the rest.
    holder = h.login(granted)
    holder.execute("CREATE TEMP TABLE reach_tmp (x int)")
    holder.execute("GRANT SELECT ON reach_tmp TO mallory")
    h.admin.execute("CREATE VIEW s.reach_company AS SELECT x FROM s.reach_mine")
    try:
        with h.connect("mallory") as m:
            assert m.execute("SELECT s.reach_fn()").fetchone() == (1,)
        outcome = h.revoke("reach-1")
        assert outcome.status == "failed", outcome
        with h.connect("mallory") as m, pytest.raises(psycopg.errors.InsufficientPrivilege):
            m.execute("SELECT s.reach_fn()")
        with h.connect("mallory") as m, pytest.raises(psycopg.errors.InsufficientPrivilege):
            m.execute("SELECT x FROM s.reach_mine")
        with h.connect("mallory") as m, pytest.raises(psycopg.errors.InsufficientPrivilege):
            m.execute("SELECT s.reach_agg(1)")
        with h.connect("mallory", "postgres") as m, pytest.raises(psycopg.Error):
            m.execute("SELECT lo_get(%s)", (row[0],))
        login = h.admin.execute(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (str(granted.principal),)
        ).fetchone()
        assert login == (False,)
    finally:
        holder.close()
        h.admin.execute("DROP VIEW IF EXISTS s.reach_company")
    assert h.revoke("reach-1").status == "revoked"


def test_a_live_member_locking_what_it_made_as_the_bundle_cannot_keep_it_or_fail_revokes(
    hostile: Hostile,
) -> None:
    """Grantee B, still live, makes a table as the shared bundle and holds a lock on it so that
    its removal waits: A's revoke still removes it (B's locking session is ended) and says so."""
    h = hostile
    _before_16(h)
    h.grant("lk-a")
    b = h.grant("lk-b")
    bundle = _bundle_of(h, str(b.principal))
    member = h.login(b)
    try:
        member.execute("SET idle_in_transaction_session_timeout = 0")
        member.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(bundle)))
        member.execute("CREATE TABLE public.kept_by_lock (x int)")
        member.execute("BEGIN")
        member.execute("LOCK TABLE public.kept_by_lock IN ACCESS SHARE MODE")
        outcome = h.revoke("lk-a")
        assert outcome.status == "revoked" and outcome.verified, outcome
        assert h.admin.execute("SELECT to_regclass('public.kept_by_lock')").fetchone() == (None,)
        assert _bundle_state(h, bundle)[0] == 0
        with h.login(b) as again:  # B's grant itself is untouched
            assert again.execute("SELECT count(*) FROM s.items").fetchone() == (2,)
    finally:
        member.close()
        h.admin.execute("DROP TABLE IF EXISTS public.kept_by_lock")
    assert h.revoke("lk-b").status == "revoked"


def test_without_pg_authid_the_sweep_still_removes_a_password_a_member_set(
    hostile: Hostile,
) -> None:
    """An admin that is not a superuser cannot read whether a bundle has a password: the sweep
    removes it from every bundle. (Simulated: the session is told it cannot read pg_authid.)"""
    h = hostile
    _before_16(h)
    granted = h.grant("pw-1")
    bundle = _bundle_of(h, str(granted.principal))
    with h.login(granted) as grantee:
        grantee.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(bundle)))
        grantee.execute(sql.SQL("ALTER ROLE {} PASSWORD 'mine'").format(sql.Identifier(bundle)))
    assert _bundle_state(h, bundle)[2]
    integration = h.engine.catalog.integrations[INTEGRATION]
    session = integration.template.open(  # type: ignore[call-arg]
        INTEGRATION,
        integration.connection,
        None,
        label_key=LabelKey.from_secret(LABEL_KEY),
    )
    try:
        session._authid_readable = False  # type: ignore[attr-defined]
        assert session.tidy() == []  # type: ignore[attr-defined]
    finally:
        session.conn.close()  # not kept for another batch with the flag set  # type: ignore[attr-defined]
        session.close()
    assert _bundle_state(h, bundle) == (0, 0, False)
    assert h.revoke("pw-1").status == "revoked"


def test_a_role_manager_cannot_keep_access_by_joining_someone_to_a_bundle(
    hostile: Hostile,
) -> None:
    """A CREATEROLE user grants a bundle to mallory: no revoke would ever end that. The sweep
    revokes every membership of a bundle that is not one of the connector's grant roles."""
    h = hostile
    kept = h.grant("rm-1")
    bundle = _bundle_of(h, str(kept.principal))
    h.admin.execute("CREATE ROLE rm_manager LOGIN CREATEROLE")
    try:
        with h.connect("rm_manager") as manager:
            if h.admin.info.server_version >= 160000:
                h.admin.execute(
                    sql.SQL("GRANT {} TO rm_manager WITH ADMIN OPTION").format(
                        sql.Identifier(bundle)
                    )
                )
            manager.execute(sql.SQL("GRANT {} TO mallory").format(sql.Identifier(bundle)))
        assert _reads(h, "mallory")
        report = h.engine.sweep()
        assert report.ok, report
        assert not _reads(h, "mallory")
        with h.login(kept) as grantee:  # the connector's own member keeps its access
            assert grantee.execute("SELECT count(*) FROM s.items").fetchone() == (2,)
    finally:
        h.admin.execute("DROP ROLE IF EXISTS rm_manager")
    assert h.revoke("rm-1").status == "revoked"


def _member_of(h: Hostile, member: str, group: str) -> bool:
    row = h.admin.execute(
        "SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
        "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s AND g.rolname = %s",
        (member, group),
    ).fetchone()
    return row is not None


def test_a_role_manager_cannot_give_a_grant_another_permissions_bundle(hostile: Hostile) -> None:
    """A CREATEROLE user grants the `owner` bundle to a read-only grant's role: that grant now
    gives more than its permission, until its own revoke. The sweep accepts a connector grant
    role as a bundle's member only for the bundle of its own permission."""
    h = hostile
    reader = h.grant("xb-1")
    owner = h.grant("xb-2", permission="owner")
    reader_bundle = _bundle_of(h, str(reader.principal))
    owner_bundle = _bundle_of(h, str(owner.principal))
    assert reader_bundle != owner_bundle
    h.admin.execute("CREATE ROLE xb_manager LOGIN CREATEROLE")
    try:
        with h.connect("xb_manager") as manager:
            if h.admin.info.server_version >= 160000:
                h.admin.execute(
                    sql.SQL("GRANT {} TO xb_manager WITH ADMIN OPTION").format(
                        sql.Identifier(owner_bundle)
                    )
                )
            manager.execute(
                sql.SQL("GRANT {} TO {}").format(
                    sql.Identifier(owner_bundle), sql.Identifier(str(reader.principal))
                )
            )
        assert _member_of(h, str(reader.principal), owner_bundle)
        report = h.engine.sweep()
        assert report.ok, report
        assert not _member_of(h, str(reader.principal), owner_bundle)
        assert _member_of(h, str(reader.principal), reader_bundle)
        assert _member_of(h, str(owner.principal), owner_bundle)
    finally:
        h.admin.execute("DROP ROLE IF EXISTS xb_manager")
    for request_id in ("xb-1", "xb-2"):
        assert h.revoke(request_id).status == "revoked"


def test_a_role_manager_cannot_widen_a_permission_by_joining_its_bundle_to_a_group(
    hostile: Hostile,
) -> None:
    """A CREATEROLE user makes a read-only bundle a member of a company group
    (`GRANT company TO bundle`): every grant of that permission, present and future, would get
    the group's privileges, and no revoke would end that. The next grant of the permission
    takes the bundle back to what its statements give; so does the sweep."""
    h = hostile
    first = h.grant("wg-1")
    bundle = _bundle_of(h, str(first.principal))
    h.admin.execute("CREATE ROLE wg_company NOLOGIN")
    h.admin.execute("CREATE TABLE IF NOT EXISTS public.wg_payroll (salary int)")
    h.admin.execute("GRANT SELECT ON public.wg_payroll TO wg_company")
    h.admin.execute("CREATE ROLE wg_manager LOGIN CREATEROLE")
    try:
        with h.connect("wg_manager") as manager:
            if h.admin.info.server_version >= 160000:
                h.admin.execute("GRANT wg_company TO wg_manager WITH ADMIN OPTION")
            manager.execute(sql.SQL("GRANT wg_company TO {}").format(sql.Identifier(bundle)))
        assert _member_of(h, bundle, "wg_company")
        second = h.grant("wg-2")
        assert second.status == "granted", second.message
        assert _bundle_of(h, str(second.principal)) == bundle
        assert not _member_of(h, bundle, "wg_company")
        with h.login(second) as grantee, pytest.raises(psycopg.errors.InsufficientPrivilege):
            grantee.execute("SELECT * FROM public.wg_payroll")

        with h.connect("wg_manager") as manager:
            manager.execute(sql.SQL("GRANT wg_company TO {}").format(sql.Identifier(bundle)))
        report = h.engine.sweep()
        assert report.ok, report
        assert not _member_of(h, bundle, "wg_company")
        with h.login(first) as grantee, pytest.raises(psycopg.errors.InsufficientPrivilege):
            grantee.execute("SELECT * FROM public.wg_payroll")
    finally:
        h.admin.execute("DROP TABLE IF EXISTS public.wg_payroll")
        h.admin.execute("DROP ROLE IF EXISTS wg_manager")
        h.admin.execute("DROP ROLE IF EXISTS wg_company")
    for request_id in ("wg-1", "wg-2"):
        assert h.revoke(request_id).status == "revoked"


def test_a_column_grant_on_the_grantees_table_is_cut_at_disable(hostile: Hostile) -> None:
    """A column privilege lives in pg_attribute, not in the table's ACL: the cut at disable
    must find a table whose only grant to another role is on a column."""
    h = hostile
    granted = h.grant("col-1", permission="owner")
    with h.login(granted) as grantee:
        grantee.execute("CREATE TABLE s.col_mine (x int, y int)")
        grantee.execute("INSERT INTO s.col_mine VALUES (1, 2)")
        grantee.execute("GRANT SELECT (x) ON s.col_mine TO mallory")
    h.admin.execute("CREATE VIEW s.col_company AS SELECT x FROM s.col_mine")
    try:
        with h.connect("mallory") as m:
            assert m.execute("SELECT x FROM s.col_mine").fetchone() == (1,)
        outcome = h.revoke("col-1")
        assert outcome.status == "failed", outcome
        with h.connect("mallory") as m, pytest.raises(psycopg.errors.InsufficientPrivilege):
            m.execute("SELECT x FROM s.col_mine")
    finally:
        h.admin.execute("DROP VIEW IF EXISTS s.col_company")
    assert h.revoke("col-1").status == "revoked"


def test_a_live_member_cannot_stall_every_revoke_with_temporary_objects_as_its_bundle(
    strict: Hostile,
) -> None:
    """TEMP is PUBLIC's on every database by default: a live member (B) may make a temporary
    table as its bundle with no CREATE anywhere, and a temporary view of its own on it. Another
    grantee's (A's) revoke must still end as `revoked`: B's session is ended, and what it made
    goes with it."""
    h = strict
    _before_16(h)
    h.admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    try:
        h.grant("tmp-a")
        b = h.grant("tmp-b")
        bundle = _bundle_of(h, str(b.principal))
        member = h.login(b)
        try:
            member.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(bundle)))
            member.execute("CREATE TEMP TABLE kept_tmp (x int)")
            member.execute("RESET ROLE")
            member.execute("CREATE TEMP VIEW kept_tmp_view AS SELECT x FROM kept_tmp")
            outcome = h.revoke("tmp-a")
            assert outcome.status == "revoked" and outcome.verified, outcome
            assert _bundle_state(h, bundle)[0] == 0
        finally:
            member.close()
        with h.login(b) as again:  # B's grant itself is untouched
            assert again.execute("SELECT count(*) FROM s.items").fetchone() == (2,)
        assert h.revoke("tmp-b").status == "revoked"
    finally:
        h.admin.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")


def test_a_database_owners_settings_cannot_turn_the_admin_into_another_role_or_read_only(
    hostile: Hostile,
) -> None:
    """A CREATEDB user makes a database (PUBLIC may connect) whose settings say `role` is its
    own and transactions are read-only: every admin connection there would act as that user,
    unable to remove what a grantee made there. The admin's own settings win."""
    h = hostile
    h.admin.execute("CREATE ROLE dbset_owner LOGIN CREATEDB")
    try:
        with h.connect("dbset_owner", "postgres") as owner:
            owner.execute("CREATE DATABASE dbset_evil")
        with h.connect("dbset_owner", "dbset_evil") as owner:
            owner.execute("ALTER DATABASE dbset_evil SET role = 'dbset_owner'")
            owner.execute("ALTER DATABASE dbset_evil SET default_transaction_read_only = on")
            owner.execute("ALTER DATABASE dbset_evil SET exit_on_error = on")
        integration = h.engine.catalog.integrations[INTEGRATION]
        session = integration.template.open(  # type: ignore[call-arg]
            INTEGRATION, integration.connection, None, label_key=LabelKey.from_secret(LABEL_KEY)
        )
        try:
            with session._connect("dbset_evil") as there:  # type: ignore[attr-defined]
                row = there.execute(
                    "SELECT current_user, current_setting('default_transaction_read_only'), "
                    "current_setting('exit_on_error')"
                ).fetchone()
                assert row == ("admin", "off", "off"), row
        finally:
            session.close()
        granted = h.grant("dbset-a", permission="owner")
        other = h.grant("dbset-b")
        bundle = _bundle_of(h, str(other.principal))
        with h.login(granted, "dbset_evil") as grantee:
            grantee.execute("SET default_transaction_read_only = off")
            row = grantee.execute("SELECT lo_from_bytea(0, 'mine')").fetchone()
            assert row is not None
            grantee.execute(sql.SQL("GRANT SELECT ON LARGE OBJECT {} TO mallory").format(row[0]))
        if h.admin.info.server_version < 160000:
            with h.login(other, "dbset_evil") as member:
                member.execute("SET default_transaction_read_only = off")
                member.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(bundle)))
                member.execute("SELECT lo_from_bytea(0, 'as the bundle')")
        outcome = h.revoke("dbset-a")
        assert outcome.status == "revoked" and outcome.verified, outcome
        assert _bundle_state(h, bundle)[0] == 0
        assert h.revoke("dbset-b").status == "revoked"
    finally:
        h.admin.execute("DROP DATABASE IF EXISTS dbset_evil WITH (FORCE)")
        h.admin.execute("DROP ROLE IF EXISTS dbset_owner")


@pytest.mark.parametrize(
    ("setting", "value", "ours"),
    [("client_encoding", "SQL_ASCII", "UTF8"), ("idle_session_timeout", "1", "0")],
)
def test_a_database_owners_session_settings_cannot_keep_a_grant_from_being_revoked(
    hostile: Hostile, setting: str, value: str, ours: str
) -> None:
    """A database's owner may set defaults for every connection there. Under client_encoding
    SQL_ASCII the driver hands back text as bytes and every label read there failed; with an
    idle_session_timeout of 1 ms the server ended the admin's session between two round trips.
    Either way a revoke of a grant made before the setting failed and left the grantee its
    login. The admin's own settings win, in the integration's database and in every other one
    it visits."""
    h = hostile
    h.admin.execute("CREATE ROLE dbenc_owner LOGIN CREATEDB")
    h.admin.execute("ALTER DATABASE app OWNER TO dbenc_owner")
    try:
        with h.connect("dbenc_owner", "postgres") as owner:
            owner.execute("CREATE DATABASE dbenc_evil")
        granted = h.grant(f"dbenc-{setting}", permission="owner")
        with h.login(granted, "dbenc_evil") as grantee:
            row = grantee.execute("SELECT lo_from_bytea(0, 'mine')").fetchone()
            assert row is not None
            grantee.execute(sql.SQL("GRANT SELECT ON LARGE OBJECT {} TO mallory").format(row[0]))
        for dbname in ("app", "dbenc_evil"):
            with h.connect("dbenc_owner", dbname) as owner:
                owner.execute(
                    sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                        sql.Identifier(dbname), sql.Identifier(setting), value
                    )
                )
        integration = h.engine.catalog.integrations[INTEGRATION]
        session = integration.template.open(  # type: ignore[call-arg]
            INTEGRATION, integration.connection, None, label_key=LabelKey.from_secret(LABEL_KEY)
        )
        try:
            with session._connect("dbenc_evil") as there:  # type: ignore[attr-defined]
                row = there.execute(sql.SQL("SHOW {}").format(sql.Identifier(setting)))
                assert row.fetchone() == (ours,)
        finally:
            session.close()
        outcome = h.revoke(f"dbenc-{setting}")
        assert outcome.status == "revoked" and outcome.verified, outcome
        assert not h.exists(str(granted.principal))
        with h.connect("admin", "dbenc_evil") as there:
            row = there.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
            assert row == (0,)
    finally:
        h.admin.execute(sql.SQL("ALTER DATABASE app RESET {}").format(sql.Identifier(setting)))
        h.admin.execute("ALTER DATABASE app OWNER TO admin")
        h.admin.execute("DROP DATABASE IF EXISTS dbenc_evil WITH (FORCE)")
        h.admin.execute("DROP ROLE IF EXISTS dbenc_owner")


def test_a_setting_the_server_does_not_know_is_left_out_not_a_refused_connection(
    hostile: Hostile,
) -> None:
    """The timeouts a database's owner could end the admin's session with are pinned only on a
    server that knows them: the first connection names them all, a server that does not know
    one refuses it by name, and the connection is made again without it, then remembered."""
    from jitc.templates import postgresql_session

    settings: Any = hostile.engine.catalog.integrations[INTEGRATION].connection
    server = (settings.host, settings.port)
    for remembered in (None, 999999, 90600):  # not yet seen; a downgrade or upgrade since
        if remembered is None:
            postgresql_session._SERVER_VERSIONS.pop(server, None)
        else:
            postgresql_session._SERVER_VERSIONS[server] = remembered
        with postgresql_session.admin_connect(settings, "app", None) as conn:
            version = conn.info.server_version
            assert conn.execute("SHOW client_encoding").fetchone() == ("UTF8",)
            # In the options, where libpq's retry without application_name cannot drop it.
            assert conn.execute("SHOW application_name").fetchone() == ("jit-connector",)
            assert "idle_session_timeout=0" in conn.info.get_parameters().get("options", "")
        assert postgresql_session._SERVER_VERSIONS[server] == version


def test_an_error_naming_a_setting_the_server_knows_never_drops_its_pin(
    hostile: Hostile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a server too old for a setting goes without it: an error that happens to name it
    (a database a user named after it, refused for its connection limit) fails the connect."""
    from jitc.errors import TargetError
    from jitc.templates import postgresql_session

    settings: Any = hostile.engine.catalog.integrations[INTEGRATION].connection
    postgresql_session._SERVER_VERSIONS.pop((settings.host, settings.port), None)
    real = psycopg.connect
    calls: list[str] = []

    def connect(conninfo: str, **kwargs: Any) -> psycopg.Connection[Any]:
        calls.append(conninfo)
        if len(calls) == 1:
            raise psycopg.OperationalError('too many connections for "idle_session_timeout"')
        return real(conninfo, **kwargs)

    monkeypatch.setattr(psycopg, "connect", connect)
    with pytest.raises(TargetError, match="idle_session_timeout refused"):
        postgresql_session.admin_connect(settings, "app", None)
    assert "idle_session_timeout" not in calls[1]


def test_a_role_manager_cannot_log_in_as_a_bundle_past_the_sweep(hostile: Hostile) -> None:
    """`ALTER ROLE bundle LOGIN` needs no password where the server trusts the client (trust,
    cert, peer): the role manager would then hold the bundle's access as long as it exists.
    The sweep finds a bundle that may log in and takes that away."""
    h = hostile
    kept = h.grant("bl-1")
    bundle = _bundle_of(h, str(kept.principal))
    h.admin.execute("CREATE ROLE bl_manager LOGIN CREATEROLE")
    try:
        with h.connect("bl_manager") as manager:
            if h.admin.info.server_version >= 160000:
                h.admin.execute(
                    sql.SQL("GRANT {} TO bl_manager WITH ADMIN OPTION").format(
                        sql.Identifier(bundle)
                    )
                )
            manager.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(bundle)))
        with h.connect(bundle) as as_bundle:
            assert as_bundle.execute("SELECT count(*) FROM s.items").fetchone() == (2,)
        report = h.engine.sweep()
        assert report.ok, report
        with pytest.raises(psycopg.OperationalError):
            h.connect(bundle).close()
        with h.login(kept) as grantee:
            assert grantee.execute("SELECT count(*) FROM s.items").fetchone() == (2,)
    finally:
        h.admin.execute("DROP ROLE IF EXISTS bl_manager")
    assert h.revoke("bl-1").status == "revoked"
