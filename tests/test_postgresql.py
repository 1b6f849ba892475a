"""The PostgreSQL template through the engine, against the real server."""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from pgtest import (
    BOX_PUBLIC,
    INTEGRATION,
    LABEL_KEY,
    PG_DSN,
    PREFIX,
    SCHEMA,
    Env,
    all_roles,
    catalog_doc,
    keyed,
    live_roles,
    our_roles,
)
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from jitc.catalog import parse_catalog
from jitc.errors import CatalogError
from jitc.labels import LabelKey


def _table(name: str = "items") -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(SCHEMA), sql.Identifier(name))


def test_read_only_grant_allows_select_refuses_insert_and_revoke_ends_session(env: Env) -> None:
    outcome = env.engine.execute(env.request(request_id="ro-1"))
    assert outcome.status == "granted", outcome
    assert outcome.credentials is None  # never in the clear unless asked
    creds = env.credentials(outcome.sealed_credentials)
    assert creds["username"] == outcome.principal and creds["username"].startswith(PREFIX)
    session = env.login(creds)
    assert session.execute(sql.SQL("SELECT min(id) FROM {}").format(_table())).fetchone() == (1,)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        session.execute(sql.SQL("INSERT INTO {} (name) VALUES ('x')").format(_table()))

    revoke = env.engine.execute(env.request("revoke", request_id="ro-1"))
    assert revoke.status == "revoked" and revoke.verified is True and revoke.residual == []
    assert revoke.revocation_lag_seconds is not None and revoke.revocation_lag_seconds < 0
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    assert not env.can_login(creds["username"])
    assert creds["username"] not in live_roles(env.admin)
    event = env.sink.events[-1]
    assert event.type == "revoke" and event.verified is True
    assert event.revocation_lag_seconds == revoke.revocation_lag_seconds


def test_read_write_allows_insert(env: Env) -> None:
    outcome = env.engine.execute(env.request(permission="read-write", duration="1h"))
    session = env.login(env.credentials(outcome.sealed_credentials))
    session.execute(sql.SQL("INSERT INTO {} (name) VALUES ('rw')").format(_table()))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        session.execute(sql.SQL("CREATE TABLE {} (x int)").format(_table("nope")))
    session.close()


def _role_row(env: Env, name: Any) -> tuple[Any, ...]:
    row = env.admin.execute(
        "SELECT rolvaliduntil, rolconnlimit, rolsuper, rolcreaterole, rolconfig, "
        "shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s",
        (name,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_role_carries_expiry_limits_and_a_label_without_the_email(env: Env) -> None:
    outcome = env.engine.execute(env.request(duration="30m"))
    valid_until, limit, superuser, createrole, config, comment = _role_row(env, outcome.principal)
    assert outcome.expires_at is not None
    assert abs((valid_until - outcome.expires_at).total_seconds()) < 1
    assert limit == 3 and not superuser and not createrole
    assert config is None  # per-role settings only when the catalog asks for them
    assert comment.startswith("jitc:") and outcome.grant_id in comment
    # Every database user can read role comments: the grantee's email is not in them.
    assert "alice" not in comment and "example.com" not in comment


def test_per_role_settings_when_the_catalog_asks(make_env: Any) -> None:
    doc = catalog_doc()
    doc["integrations"][INTEGRATION]["connection"]["statement_timeout"] = "10min"
    env = make_env(doc)
    outcome = env.engine.execute(env.request())
    assert _role_row(env, outcome.principal)[4] == ["statement_timeout=10min"]


def test_plan_has_no_side_effects_and_masks_the_password(env: Env) -> None:
    before = our_roles(env.admin)
    outcome = env.engine.plan(env.request())
    assert outcome.status == "planned"
    assert our_roles(env.admin) == before
    create = outcome.statements[0]
    assert create.startswith("CREATE ROLE") and "PASSWORD '********'" in create
    assert any("GRANT SELECT ON ALL TABLES IN SCHEMA" in s for s in outcome.statements)


def test_redelivered_grant_lands_on_the_same_role_with_the_same_credentials(
    make_env: Any,
) -> None:
    env = keyed(make_env)
    request = env.request(request_id="dup-1")
    first = env.engine.execute(request)
    second = env.engine.execute(request)
    assert second.status == "granted" and second.reissued
    assert second.principal == first.principal and second.expires_at == first.expires_at
    assert live_roles(env.admin) == [first.principal]
    # A replay hands out the same password again: it never locks the grantee out.
    assert env.credentials(second.sealed_credentials) == env.credentials(first.sealed_credentials)
    env.login(env.credentials(first.sealed_credentials)).close()


def test_a_catalog_without_a_label_key_is_refused_naming_the_field() -> None:
    doc = catalog_doc()
    del doc["connector"]
    with pytest.raises(CatalogError) as err:
        parse_catalog(doc)
    assert "connector.label_key" in str(err.value) and repr(INTEGRATION) in str(err.value)


def test_double_revoke_and_revoke_before_grant_succeed_and_leave_no_access(env: Env) -> None:
    grant = env.request(request_id="early-1")
    revoke = env.request("revoke", request_id="early-1")
    first = env.engine.execute(revoke)
    assert first.status == "revoked" and first.message and "nothing to revoke" in first.message
    late = env.engine.execute(grant)
    assert late.status == "refused" and late.field == "request_id"
    assert live_roles(env.admin) == []  # only the tombstone
    again = env.engine.execute(revoke)
    assert again.status == "revoked"


def test_revoke_then_redelivered_grant_is_refused(env: Env) -> None:
    grant = env.request(request_id="again-1")
    assert env.engine.execute(grant).status == "granted"
    assert env.engine.execute(env.request("revoke", request_id="again-1")).status == "revoked"
    redelivered = env.engine.execute(grant)
    assert redelivered.status == "refused"
    assert live_roles(env.admin) == []


def test_overlapping_ephemeral_grants_are_independent(env: Env) -> None:
    one = env.engine.execute(env.request(request_id="ov-1", duration="10m"))
    two = env.engine.execute(env.request(request_id="ov-2", duration="1h"))
    assert one.principal != two.principal
    session_two = env.login(env.credentials(two.sealed_credentials))
    env.engine.execute(env.request("revoke", request_id="ov-1"))
    assert session_two.execute(sql.SQL("SELECT count(*) FROM {}").format(_table())).fetchone()
    env.advance(timedelta(minutes=11))
    report = env.engine.sweep()
    assert report.revoked == [] and report.ok  # ov-1 already gone; ov-2 not yet due
    assert env.can_login(str(two.principal))


@pytest.fixture
def member(env: Env) -> Any:
    """An existing login role and group role, created by the company, not by us."""
    name, group = f"{PREFIX}alice", f"{PREFIX}readers"
    env.admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    env.admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(group)))
    env.admin.execute(
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.Identifier(SCHEMA), sql.Identifier(group)
        )
    )
    env.admin.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(_table(), sql.Identifier(group)))
    return name, group


def _membership_env(make_env: Any, group: str) -> Env:
    doc = catalog_doc(analyst={"mode": "membership", "resources": [group]})
    env: Env = make_env(doc)
    return env


def _can_select(env: Env, role: str) -> bool:
    row = env.admin.execute(
        "SELECT has_table_privilege(%s, %s, 'SELECT')", (role, f"{SCHEMA}.items")
    ).fetchone()
    return bool(row and row[0])


def test_membership_overlap_and_revoke(make_env: Any, member: Any) -> None:
    name, group = member
    env = _membership_env(make_env, group)
    ident = {"email": "alice@example.com", "username": name}

    def req(rid: str) -> Any:
        return env.request(request_id=rid, permission="analyst", resources=[group], identity=ident)

    assert not _can_select(env, name)
    first = env.engine.execute(req("m-1"))
    assert first.status == "granted" and first.sealed_credentials is None
    assert env.engine.execute(req("m-2")).status == "granted"
    assert _can_select(env, name)
    session = psycopg.connect(**{**conninfo_to_dict(PG_DSN), "user": name}, autocommit=True)
    assert env.engine.execute(env.request("revoke", request_id="m-1")).status == "revoked"
    assert _can_select(env, name)  # the other grant still holds
    with pytest.raises(psycopg.OperationalError):  # sessions that could use the access are ended
        session.execute("SELECT 1")
    last = env.engine.execute(env.request("revoke", request_id="m-2"))
    assert last.status == "revoked" and last.verified
    assert not _can_select(env, name)
    assert env.can_login(name)  # the company's role itself is untouched


@pytest.mark.parametrize("who", ["superuser", "admin", "ours", "missing"])
def test_membership_refuses_admin_superuser_and_unknown_grantees(
    make_env: Any, member: Any, who: str
) -> None:
    _, group = member
    env = _membership_env(make_env, group)
    if who == "superuser":
        username = f"{PREFIX}boss"
        env.admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(username))
        )
    elif who == "ours":
        username = str(env.engine.execute(env.request()).principal)
    else:
        username = {
            "admin": conninfo_to_dict(PG_DSN).get("user", "postgres"),
            "missing": f"{PREFIX}nobody",
        }[who]
    before = all_roles(env.admin, username, group)
    outcome = env.engine.execute(
        env.request(
            permission="analyst",
            resources=[group],
            identity={"email": "x@example.com", "username": username},
        )
    )
    assert outcome.status == "refused" and outcome.field == "identity.username", outcome
    assert all_roles(env.admin, username, group) == before


def test_ephemeral_name_collision_with_existing_role_is_refused(env: Env) -> None:
    planned = env.engine.plan(env.request(request_id="clash-1"))
    name = planned.statements[0].split('"')[1]
    env.admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    before = all_roles(env.admin, name)
    outcome = env.engine.execute(env.request(request_id="clash-1"))
    assert outcome.status == "refused" and "not created by this connector" in str(outcome.message)
    assert all_roles(env.admin, name) == before


def test_revoke_is_frozen_at_grant_time(make_env: Any) -> None:
    custom = {
        "statements": [
            "GRANT USAGE ON SCHEMA {schema} TO {role}",
            "GRANT SELECT ON {schema}.items TO {role}",
        ],
        "resources": [SCHEMA],
    }
    env = make_env(catalog_doc(custom=custom))
    outcome = env.engine.execute(env.request(request_id="frozen-1", permission="custom"))
    assert outcome.status == "granted"
    doc = catalog_doc()
    del doc["integrations"][INTEGRATION]["permissions"]["read-only"]
    later = make_env(doc)  # the permission and its statements are gone from the catalog
    assert later.engine.execute(later.request("revoke", request_id="frozen-1")).status == "revoked"
    assert not env.can_login(str(outcome.principal))


def test_sweep_revokes_expired_labelled_grants_only(env: Env) -> None:
    short = env.engine.execute(env.request(request_id="sw-1", duration="5m"))
    long = env.engine.execute(env.request(request_id="sw-2", duration="2h"))
    stranger = f"{PREFIX}stranger_{INTEGRATION[-6:]}"
    env.admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(stranger)))
    env.admin.execute(
        sql.SQL("COMMENT ON ROLE {} IS 'jitc:not json'").format(sql.Identifier(stranger))
    )
    env.advance(timedelta(minutes=10))
    report = env.engine.sweep()
    assert report.revoked == [short.grant_id] and report.ok
    assert not env.can_login(str(short.principal))
    assert env.can_login(str(long.principal)) and env.can_login(stranger)
    env.advance(timedelta(hours=3))
    assert env.engine.sweep().revoked == [long.grant_id]


def test_revoke_removes_what_the_grantee_owns_in_another_database(env: Env) -> None:
    outcome = env.engine.execute(env.request(request_id="dep-1"))
    name = str(outcome.principal)
    session = env.login(env.credentials(outcome.sealed_credentials))
    other = psycopg.connect(**{**conninfo_to_dict(PG_DSN), "dbname": "postgres"}, autocommit=True)
    table = sql.Identifier(f"{PREFIX}left_behind")
    other.execute(sql.SQL("CREATE TABLE {} (x int)").format(table))
    other.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(table, sql.Identifier(name)))

    revoke = env.engine.execute(env.request("revoke", request_id="dep-1"))
    assert revoke.status == "revoked" and revoke.verified is True and revoke.residual == []
    assert name not in live_roles(env.admin)
    assert other.execute("SELECT to_regclass(%s)", (f"{PREFIX}left_behind",)).fetchone() == (None,)
    other.close()
    assert not env.can_login(name)
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")


def test_a_revoke_that_cannot_clean_up_fails_and_the_sweep_finishes_it(env: Env) -> None:
    outcome = env.engine.execute(env.request(request_id="dep-2"))
    name = str(outcome.principal)
    db = f"{PREFIX}closed"
    env.admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    try:
        params = {**conninfo_to_dict(PG_DSN), "dbname": db}
        with psycopg.connect(**params, autocommit=True) as other:
            other.execute(sql.SQL("CREATE TABLE kept (x int)"))
            other.execute(sql.SQL("ALTER TABLE kept OWNER TO {}").format(sql.Identifier(name)))
        # The connector cannot reach that database: what the grantee owns there stays.
        env.admin.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(db))
        )

        revoke = env.engine.execute(env.request("revoke", request_id="dep-2"))
        assert revoke.status == "failed" and revoke.verified is False
        assert any("owns or holds" in r for r in revoke.residual), revoke.residual
        assert env.sink.events[-1].residual == revoke.residual
        assert not env.can_login(name)  # access ended even so

        report = env.engine.sweep()
        assert outcome.grant_id in report.failed  # still there: reported, retried next time
        env.admin.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(db))
        )
        report = env.engine.sweep()
        assert report.revoked == [outcome.grant_id] and report.ok
        assert name not in live_roles(env.admin)
    finally:
        env.admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
        )


def test_catalog_statements_with_unknown_placeholders_are_refused() -> None:
    bad = catalog_doc(
        custom={"statements": ["GRANT SELECT ON {tabel} TO {role}"], "resources": [SCHEMA]}
    )
    with pytest.raises(CatalogError) as err:
        parse_catalog(bad)
    assert INTEGRATION in str(err.value) and "permissions.custom.statements" in str(err.value)


def test_inventory_lists_roles_databases_schemas(env: Env) -> None:
    integration = env.catalog.integration(INTEGRATION)
    session = integration.template.open(
        INTEGRATION, integration.connection, None, label_key=LabelKey.from_secret(LABEL_KEY)
    )
    try:
        inventory = session.inventory()
    finally:
        session.close()
    assert "test" in inventory["databases"] and SCHEMA in inventory["schemas"]
    assert "postgres" in inventory["roles"]


def test_canary_secrets_never_leak(make_env: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    canary = "CANARY-admin-secret-7f3a"
    env = make_env(secret=canary)  # trust auth ignores it, but it is handed to the driver
    outcome = env.engine.execute(env.request(request_id="canary-1"))
    password = env.credentials(outcome.sealed_credentials)["password"]
    env.engine.execute(env.request("revoke", request_id="canary-1"))
    doc = catalog_doc()
    doc["integrations"][INTEGRATION]["connection"]["port"] = 1  # nothing listens: a failure
    broken = make_env(doc, secret=canary)
    failed = broken.engine.execute(broken.request(request_id="canary-2"))
    assert failed.status == "failed"
    texts = [caplog.text, failed.model_dump_json()]
    texts += [e.model_dump_json() for e in env.sink.events + broken.sink.events]
    texts += [o.model_dump_json() for o in env.sink.outcomes + broken.sink.outcomes]
    for text in texts:
        assert canary not in text and password not in text


class CountingStore:
    """A secret store that counts how often it is asked for the admin credential."""

    def __init__(self) -> None:
        self.calls = 0

    def resolve(self, ref: Any) -> Any:
        from jitc.secrets import Secret

        if ref.location == "label":
            return Secret(LABEL_KEY)
        self.calls += 1
        return Secret("")


def test_secret_is_fetched_once_per_batch_and_not_kept(env: Env) -> None:
    from jitc.engine import Engine
    from jitc.messages import Work

    store = CountingStore()
    engine = Engine(env.catalog, store, env.engine.scheduler, env.sink, clock=env.engine.clock)
    batch = [Work(env.request(request_id=f"b-{i}"), env.now[0]) for i in range(3)]
    assert [o.status for o in engine.execute_batch(batch)] == ["granted"] * 3
    assert store.calls == 1
    engine.execute(env.request("revoke", request_id="b-0"))
    assert store.calls == 2  # a new batch asks the store again: nothing was cached


def test_a_request_id_reused_for_another_request_is_refused_and_one_revoke_ends_it(
    env: Env,
) -> None:
    first = env.engine.execute(env.request(request_id="same-1"))
    bob = {"email": "bob@example.com", "username": "bob", "public_key": BOX_PUBLIC}
    other = env.engine.execute(env.request(request_id="same-1", identity=bob))
    assert other.status == "refused" and other.field == "request_id", other
    assert env.sink.events[-1].type == "refusal"  # audited
    assert our_roles(env.admin) == [first.principal]
    revoke = env.engine.execute(env.request("revoke", request_id="same-1"))
    assert revoke.status == "revoked" and revoke.verified
    env.advance(timedelta(hours=9))
    report = env.engine.sweep()
    assert report.ok and report.remaining == 0
    assert our_roles(env.admin) == []


def test_grants_do_not_grow_any_acl(env: Env) -> None:
    def acls() -> tuple[Any, ...]:
        row = env.admin.execute(
            "SELECT (SELECT relacl FROM pg_class WHERE oid = %s::regclass), "
            "(SELECT nspacl FROM pg_namespace WHERE nspname = %s)",
            (f"{SCHEMA}.items", SCHEMA),
        ).fetchone()
        assert row is not None
        return tuple(row)

    assert env.engine.execute(env.request(request_id="acl-0")).status == "granted"
    before = acls()
    for index in range(1, 6):
        assert env.engine.execute(env.request(request_id=f"acl-{index}")).status == "granted"
    # The privileges sit on one bundle role: a table's ACL, and so its row, stays the same size
    # however many grants are live.
    assert acls() == before
    assert len(our_roles(env.admin)) == 6


def test_a_batch_of_grants_runs_together_and_one_failure_fails_only_itself(make_env: Any) -> None:
    from jitc.messages import Work

    missing = f"{PREFIX}nogroup"
    doc = catalog_doc(
        broken={
            "statements": ["GRANT SELECT ON {schema}.missing TO {role}"],
            "resources": [SCHEMA],
        },
        analyst={"mode": "membership", "resources": [missing]},
    )
    env = make_env(doc)
    clash = env.engine.plan(env.request(request_id="bt-clash")).statements[0].split('"')[1]
    env.admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(clash)))
    ident = {"email": "a@example.com", "username": "postgres"}
    requests = [
        env.request(request_id="bt-0"),
        env.request(request_id="bt-1", permission="read-write", duration="1h"),
        env.request(request_id="bt-clash"),  # refused: a role we did not make has its name
        env.request(request_id="bt-m", permission="analyst", resources=[missing], identity=ident),
        env.request(request_id="bt-broken", permission="broken"),  # fails on the server
        env.request(request_id="bt-2"),
        env.request(request_id="bt-0"),  # a redelivery within the batch
    ]
    outcomes = env.engine.execute_batch([Work(r, env.now[0]) for r in requests])
    assert [o.status for o in outcomes] == [
        "granted",
        "granted",
        "refused",
        "refused",
        "failed",
        "granted",
        "granted",
    ], [(o.status, o.message) for o in outcomes]
    assert outcomes[-1].reissued and outcomes[-1].principal == outcomes[0].principal
    for outcome in (outcomes[0], outcomes[1], outcomes[5]):
        env.login(env.credentials(outcome.sealed_credentials)).close()
    assert len(our_roles(env.admin)) == 3 + 1  # and the company's role that clashed


def test_a_grant_made_before_labels_carried_a_mac_is_still_revoked(env: Env) -> None:
    """A role the previous version made: its name from the username and the grant id, its
    label unsigned JSON. A revoke of that grant, and the sweep after its expiry, still end it."""
    request = env.request(request_id="legacy-1")
    grant_id = request.target_grant_id
    name = f"{PREFIX}alice_{grant_id[1:11]}"
    label = {
        "v": 1,
        "grant_id": grant_id,
        "request_id": "legacy-1",
        "integration": INTEGRATION,
        "permission": "read-only",
        "identity": "alice@example.com",
        "expires_at": (env.now[0] + timedelta(minutes=15)).isoformat(),
        "state": "active",
    }
    role = sql.Identifier(name)
    env.admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
    env.admin.execute(
        sql.SQL("COMMENT ON ROLE {} IS {}").format(role, sql.Literal("jitc:" + json.dumps(label)))
    )
    env.admin.execute(
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(SCHEMA), role)
    )
    assert env.can_login(name)
    revoke = env.engine.execute(env.request("revoke", request_id="legacy-1"))
    assert revoke.status == "revoked" and revoke.verified and revoke.principal == name, revoke
    assert not env.can_login(name) and name not in our_roles(env.admin)
    assert env.engine.execute(request).status == "refused"  # the grant's tombstone

    expired = {**label, "grant_id": "g" + "q" * 24, "expires_at": "2001-01-01T00:00:00+00:00"}
    old = sql.Identifier(f"{PREFIX}bob_{'q' * 10}")
    env.admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(old))
    env.admin.execute(
        sql.SQL("COMMENT ON ROLE {} IS {}").format(old, sql.Literal("jitc:" + json.dumps(expired)))
    )
    report = env.engine.sweep()
    assert expired["grant_id"] in report.revoked and report.ok, report
    assert f"{PREFIX}bob_{'q' * 10}" not in our_roles(env.admin)


def test_parallel_workers_share_one_bundle_and_a_racing_revoke_always_wins(env: Env) -> None:
    import threading

    from jitc.engine import Engine
    from jitc.local import MemorySink, NullScheduler

    def worker() -> Engine:
        return Engine(env.catalog, env.engine.secrets, NullScheduler(), MemorySink())

    outcomes: list[Any] = []

    def run(engine: Engine, request: Any) -> None:
        outcomes.append(engine.execute(request))

    # Four workers grant at once on a permission whose bundle does not exist yet.
    threads = [
        threading.Thread(target=run, args=(worker(), env.request(request_id=f"par-{i}")))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [o.status for o in outcomes] == ["granted"] * 4, [o.message for o in outcomes]
    bundles = env.admin.execute(
        "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, %s)", (PREFIX + "b_",)
    ).fetchone()
    assert bundles == (1,)

    # A grant and its revoke delivered at the same moment to two workers: whichever the server
    # orders first, no login is left once both are done.
    for i in range(4):
        outcomes.clear()
        pair = [
            threading.Thread(target=run, args=(worker(), env.request(request_id=f"race-{i}"))),
            threading.Thread(
                target=run, args=(worker(), env.request("revoke", request_id=f"race-{i}"))
            ),
        ]
        for thread in pair:
            thread.start()
        for thread in pair:
            thread.join(60)
        statuses = sorted(o.status for o in outcomes)
        assert statuses in (["granted", "revoked"], ["refused", "revoked"]), outcomes
        name = str(next(o.principal for o in outcomes if o.action == "grant") or "")
        if any(o.status == "granted" for o in outcomes):
            revoke = next(o for o in outcomes if o.action == "revoke")
            if revoke.message:  # the revoke ran first: its tombstone refused... nothing to end
                pytest.fail(f"grant succeeded after a revoke that found nothing: {outcomes}")
        assert not name or not env.can_login(name)
    assert len(our_roles(env.admin)) == 4  # the par- grants only


def test_a_configured_label_key_that_is_empty_or_short_fails_instead_of_signing_weakly(
    make_env: Any,
) -> None:
    for key in ("", "short"):
        env = keyed(make_env, key=key)
        outcome = env.engine.execute(env.request(request_id=f"weak-{len(key)}"))
        assert outcome.status == "failed" and "label key" in str(outcome.message), outcome
        assert our_roles(env.admin) == []


def test_a_table_created_after_the_bundle_is_covered_from_the_next_grant(make_env: Any) -> None:
    """From the next grant once the kept connection's schema fingerprint is older than
    `schema_check_seconds`: until then a grant may miss the new table (never see more)."""
    doc = catalog_doc()
    doc["integrations"][INTEGRATION]["connection"]["schema_check_seconds"] = 0.3
    env = make_env(doc)
    first = env.engine.execute(env.request(request_id="later-1"))
    env.admin.execute(sql.SQL("CREATE TABLE {} (x int)").format(_table("later")))
    env.admin.execute(sql.SQL("INSERT INTO {} VALUES (7)").format(_table("later")))
    time.sleep(0.35)
    second = env.engine.execute(env.request(request_id="later-2"))
    for outcome in (second, first):  # the bundle is shared: the earlier grant sees it too
        with env.login(env.credentials(outcome.sealed_credentials)) as session:
            row = session.execute(sql.SQL("SELECT x FROM {}").format(_table("later"))).fetchone()
            assert row == (7,)
    bundles = env.admin.execute(
        "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, %s)", (PREFIX + "b_",)
    ).fetchone()
    assert bundles == (1,)


def _bundles(env: Env) -> list[str]:
    rows = env.admin.execute(
        "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (PREFIX + "b_",)
    ).fetchall()
    return [row[0] for row in rows]


def test_custom_statements_that_make_the_bundle_reach_a_superuser_are_refused(
    make_env: Any,
) -> None:
    boss, team = f"{PREFIX}x_boss", f"{PREFIX}x_team"
    env_admin = make_env().admin
    env_admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN SUPERUSER").format(sql.Identifier(boss)))
    env_admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(team)))
    env_admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(boss), sql.Identifier(team)))
    env = make_env(
        catalog_doc(custom={"statements": [f"GRANT {team} TO {{role}}"], "resources": [SCHEMA]})
    )
    outcome = env.engine.execute(env.request(request_id="reach-1", permission="custom"))
    assert outcome.status == "refused" and outcome.field == "permission", outcome
    assert boss in str(outcome.message)
    # Nothing stays behind: no bundle, so no role anyone could be made a member of.
    assert _bundles(env) == [] and sorted(our_roles(env.admin)) == sorted([boss, team])


def test_custom_statements_with_grant_option_are_refused(make_env: Any) -> None:
    statements = [
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role} WITH GRANT OPTION",
    ]
    env = make_env(catalog_doc(custom={"statements": statements, "resources": [SCHEMA]}))
    outcome = env.engine.execute(env.request(request_id="gopt-1", permission="custom"))
    assert outcome.status == "refused" and outcome.field == "permission", outcome
    assert "GRANT OPTION" in str(outcome.message)
    assert _bundles(env) == [] and our_roles(env.admin) == []


def test_custom_statements_that_let_the_bundle_into_another_database_are_refused(
    make_env: Any,
) -> None:
    """There, no check looked for PUBLIC CREATE; before 16 a member could make objects as the
    bundle. (`postgres`: a database every test server has.)"""
    statements = [
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        "GRANT CONNECT ON DATABASE postgres TO {role}",
    ]
    env = make_env(catalog_doc(custom={"statements": statements, "resources": [SCHEMA]}))
    outcome = env.engine.execute(env.request(request_id="elsewhere-1", permission="custom"))
    assert outcome.status == "refused" and outcome.field == "permission", outcome
    assert "postgres" in str(outcome.message)
    assert _bundles(env) == [] and our_roles(env.admin) == []
