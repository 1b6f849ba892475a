"""What only MySQL/MariaDB has to prove: the server-side expiry event, database-name wildcards,
the ledger table, and hostile neighbours on a shared server. The promises every template keeps
are in tests/contract/."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pymysql
import pytest
from contract_mysql import (
    ADMIN,
    ADMIN_PASSWORD,
    DATABASE,
    LEDGER,
    PREFIX,
    MySQLTarget,
    admin_grants,
    root,
    run,
)
from contract_targets import LABEL_KEY, ContractEnv, catalog_doc, make_env

from jitc.catalog import catalog_warnings, parse_catalog
from jitc.errors import CatalogError
from jitc.labels import LabelKey
from jitc.secrets import Secret


@pytest.fixture(scope="module")
def target() -> Iterator[MySQLTarget]:
    target = MySQLTarget()
    try:
        target.reach()
    except RuntimeError as exc:
        pytest.exit(str(exc), returncode=3)
    yield target
    target.cleanup()


@pytest.fixture
def env(target: MySQLTarget) -> Iterator[ContractEnv]:
    yield make_env(target)
    target.reset()


@pytest.fixture
def event_scheduler(target: MySQLTarget) -> Iterator[Any]:
    """Set the server's event scheduler for one test, and put back what it was. It is one
    setting for the whole server: concurrent runs of these tests take turns."""
    turn = root()
    assert run(turn, "SELECT GET_LOCK('jitc-tests-event-scheduler', 300)") == [(1,)]
    before = run(target.admin, "SELECT @@GLOBAL.event_scheduler")[0][0]

    def switch(on: bool) -> None:
        run(target.admin, f"SET GLOBAL event_scheduler = {'ON' if on else 'OFF'}")

    yield switch
    run(target.admin, f"SET GLOBAL event_scheduler = {before}")
    turn.close()  # and with it the lock


def _wait_until(check: Any, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def test_plan_shows_the_exact_statements_with_the_password_masked(env: ContractEnv) -> None:
    outcome = env.engine.plan(env.request(request_id="m-plan"))
    name = env.target.planned_principal(outcome.statements)
    escaped = DATABASE.replace("_", "\\_")
    assert outcome.statements[:2] == [
        f"CREATE USER '{name}'@'%' IDENTIFIED WITH mysql_native_password AS '********' "
        "WITH MAX_USER_CONNECTIONS 3",
        f"GRANT SELECT, SHOW VIEW ON `{escaped}`.* TO '{name}'@'%'",
    ]
    assert len(outcome.statements) == 3
    event = outcome.statements[2]
    assert event.startswith(f"CREATE EVENT IF NOT EXISTS `{LEDGER}`.`jitc_expire_g")
    assert f"ALTER USER IF EXISTS '{name}'@'%' ACCOUNT LOCK" in event and "KILL CONNECTION" in event


def test_expiry_event_ends_access_while_the_connector_is_down(
    env: ContractEnv, event_scheduler: Any
) -> None:
    event_scheduler(True)
    outcome = env.engine.execute(env.request(request_id="m-event", duration="2s"))
    assert outcome.status == "granted", outcome
    creds = env.credentials(outcome.sealed_credentials)
    live = env.target.login(creds)
    env.target.allowed(live)
    # No revoke, no sweep: only the server acts.
    assert _wait_until(lambda: not env.target.alive(live))
    assert not env.can_login(creds)
    locked = run(
        env.target.admin,
        "SELECT JSON_VALUE(Priv, '$.account_locked') IN ('1', 'true') FROM mysql.global_priv "
        "WHERE User = %s AND Host = '%%'",
        outcome.principal,
    )
    assert locked == [(1,)]
    env.advance(timedelta(seconds=3))
    report = env.engine.sweep()  # the connector, back, finishes: the account is dropped
    assert report.revoked == [outcome.grant_id] and report.ok
    assert outcome.principal not in env.target.principals()


def test_required_expiry_event_refuses_a_grant_while_the_scheduler_is_off(
    target: MySQLTarget, event_scheduler: Any
) -> None:
    event_scheduler(False)
    env = make_env(
        target, catalog_doc(target, connection=target.connection(expiry_event="required"))
    )
    before = target.snapshot()
    outcome = env.engine.execute(env.request(request_id="m-required"))
    assert outcome.status == "refused" and "event_scheduler" in str(outcome.message)
    assert target.principals() == set() and target.snapshot() == before


def test_a_grant_whose_expiry_event_cannot_fire_is_made_with_a_warning(
    target: MySQLTarget, event_scheduler: Any, caplog: pytest.LogCaptureFixture
) -> None:
    event_scheduler(False)
    env = make_env(target)
    # On the `jitc` logger itself: a one-shot CLI command run in this process earlier (jitc
    # sync, jitc rotate) sets it to ERROR.
    with caplog.at_level(logging.WARNING, logger="jitc"):
        outcome = env.engine.execute(env.request(request_id="m-if-available"))
    assert outcome.status == "granted"
    warned = [r.getMessage() for r in caplog.records if "event_scheduler" in r.getMessage()]
    assert warned and env.target.integration in warned[0], caplog.text
    assert any("event_scheduler" in w for w in catalog_warnings(env.catalog))
    env.engine.execute(env.request("revoke", request_id="m-if-available"))
    target.reset()


def test_a_database_grant_does_not_reach_a_lookalike_database(env: ContractEnv) -> None:
    # `_` is a wildcard in a database-level GRANT: unescaped, jcXXXXXX_db would match this too.
    lookalike = DATABASE.replace("_", "x")
    run(env.target.admin, f"CREATE DATABASE IF NOT EXISTS `{lookalike}`")
    run(env.target.admin, f"CREATE TABLE IF NOT EXISTS `{lookalike}`.secrets (id INT)")
    try:
        outcome = env.engine.execute(env.request(request_id="m-wild"))
        live = env.target.login(env.credentials(outcome.sealed_credentials))
        env.target.allowed(live)
        with pytest.raises(pymysql.err.OperationalError) as denied:
            run(live, f"SELECT * FROM `{lookalike}`.secrets")
        assert denied.value.args[0] == 1142
        env.target.close(live)
    finally:
        run(env.target.admin, f"DROP DATABASE IF EXISTS `{lookalike}`")


def test_the_ledger_is_never_granted_and_a_grantee_cannot_write_it(
    target: MySQLTarget,
) -> None:
    permissions = {
        **target.permissions(),
        "ledger": {"template": "read-write", "resources": [LEDGER]},
        "write": {"template": "read-write", "resources": [DATABASE]},
    }
    env = make_env(target, catalog_doc(target, permissions=permissions))
    refused = env.engine.execute(env.request(permission="ledger", resources=[LEDGER]))
    assert refused.status == "refused" and refused.field == "resources[0]"
    lookalike = LEDGER[:-1] + "_"  # as a database-level pattern it matches the ledger
    permissions["near"] = {"template": "read-write", "resources": [lookalike]}
    near = make_env(target, catalog_doc(target, permissions=permissions))
    refused = near.engine.execute(near.request(permission="near", resources=[lookalike]))
    assert refused.status == "refused" and refused.field == "resources[0]", refused
    outcome = env.engine.execute(env.request(request_id="m-forger", permission="write"))
    live = target.login(env.credentials(outcome.sealed_credentials))
    with pytest.raises(pymysql.err.OperationalError) as denied:
        run(live, f"UPDATE `{LEDGER}`.grants SET expires_at = '2099-01-01'")
    assert denied.value.args[0] == 1142
    target.close(live)
    target.reset()


def test_a_genuine_label_moved_to_another_account_never_steers_a_revoke_or_sweep(
    env: ContractEnv,
) -> None:
    outcome = env.engine.execute(env.request(request_id="m-steer", duration="5m"))
    grant_id = str(outcome.grant_id)
    # Named as the connector would name it, so only the label's MAC, which binds the account
    # name, tells the two apart.
    foreign = f"{PREFIX}bob_{grant_id[1:11]}"
    env.target.make_foreign(foreign)
    run(
        env.target.admin,
        f"UPDATE `{LEDGER}`.grants SET name = %s WHERE grant_id = %s",
        foreign,
        grant_id,
    )
    before = env.target.snapshot()
    revoke = env.engine.execute(env.request("revoke", request_id="m-steer"))
    # The ledger holds no valid row for the grant, and accounts are named for it: the revoke
    # names them and fails (retried, for an operator to see), and changes nothing.
    assert revoke.status == "failed" and not revoke.verified, revoke
    assert any(foreign in line for line in revoke.residual), revoke.residual
    env.advance(timedelta(hours=1))
    report = env.engine.sweep()
    assert grant_id not in report.revoked and report.ok
    assert foreign in env.target.principals() and env.target.snapshot() == before


def test_neighbour_locks_do_not_stall_a_revoke(env: ContractEnv) -> None:
    outcome = env.engine.execute(env.request(request_id="m-locks"))
    creds = env.credentials(outcome.sealed_credentials)
    live = env.target.login(creds)
    neighbour = env.target.login(creds)  # the grantee itself, holding what it can
    grant_id = str(outcome.grant_id)
    for guess in (grant_id, f"jitc-{grant_id}", f"jitc:{grant_id}", f"jitc-{grant_id[:20]}"):
        assert run(neighbour, "SELECT GET_LOCK(%s, 0)", guess) == [(1,)]
    run(neighbour, "BEGIN")
    run(neighbour, f"SELECT * FROM `{DATABASE}`.items LOCK IN SHARE MODE")
    revoke = env.engine.execute(env.request("revoke", request_id="m-locks"))
    assert revoke.status == "revoked" and revoke.verified, revoke
    assert not env.target.alive(live) and not env.target.alive(neighbour)


def test_a_grant_account_renamed_away_is_found_by_its_password_and_dropped(
    env: ContractEnv,
) -> None:
    outcome = env.engine.execute(env.request(request_id="m-renamed"))
    creds = env.credentials(outcome.sealed_credentials)
    kept = f"{FOREIGN}kept"
    # A neighbour holding only CREATE USER could do this: the account lives on under a name
    # the ledger does not know.
    run(env.target.admin, f"RENAME USER '{outcome.principal}'@'%' TO '{kept}'@'%'")
    try:
        revoke = env.engine.execute(env.request("revoke", request_id="m-renamed"))
        assert not revoke.verified, revoke  # reported, and retried
        assert any(kept in line for line in revoke.residual), revoke.residual
        assert not run(env.target.admin, "SELECT User FROM mysql.user WHERE User = %s", kept)
        with pytest.raises(pymysql.err.OperationalError):
            env.target.login({**creds, "username": kept})
        again = env.engine.execute(env.request("revoke", request_id="m-renamed"))
        assert again.status == "revoked" and again.verified, again  # the retry finds nothing
    finally:
        run(env.target.admin, "DROP USER IF EXISTS %s@'%%'", kept)


def test_a_redelivered_grant_completes_one_cut_short_between_ledger_and_account(
    env: ContractEnv,
) -> None:
    request = env.request(request_id="m-crash")
    first = env.engine.execute(request)
    # As if the worker had died after writing the ledger row, before making the account.
    run(env.target.admin, "DROP USER %s@'%%'", first.principal)
    again = env.engine.execute(request)
    assert again.status == "granted" and again.reissued and again.principal == first.principal
    assert env.usable(env.credentials(again.sealed_credentials))


def test_a_redelivery_completes_a_grant_cut_short_after_its_account(
    env: ContractEnv, event_scheduler: Any
) -> None:
    """A worker that died after CREATE USER left an account without its privileges or its
    expiry event: the redelivery runs the GRANTs and the event again (both idempotent)."""
    event_scheduler(True)
    request = env.request(request_id="m-cut-short")
    first = env.engine.execute(request)
    who = f"'{first.principal}'@'%'"
    run(env.target.admin, f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {who}")
    event = f"jitc_expire_{first.grant_id}"
    run(env.target.admin, f"DROP EVENT `{LEDGER}`.`{event}`")
    creds = env.credentials(first.sealed_credentials)
    assert not env.usable(creds)
    again = env.engine.execute(request)
    assert again.status == "granted" and again.reissued, again
    assert env.credentials(again.sealed_credentials) == creds
    assert env.usable(creds)
    events = "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s"
    assert (event,) in run(env.target.admin, events, LEDGER)


def test_a_redelivery_after_the_catalog_widens_the_permission_leaves_the_grant_as_made(
    target: MySQLTarget,
) -> None:
    """The same request delivered again after the catalog's permission changed gets the grant
    as it was made: its ledger row holds a digest of the GRANTs, and only the same GRANTs run
    again. Its expiry event, missing here (a first delivery cut short before it), is made
    again all the same, at the row's expiry."""
    before = make_env(target)
    first = before.engine.execute(before.request(request_id="m-event-kept"))
    event = f"jitc_expire_{first.grant_id}"
    run(target.admin, f"DROP EVENT `{LEDGER}`.`{event}`")
    wider = {"allowed": {"template": "read-write", "resources": [DATABASE]}}
    after = make_env(target, catalog_doc(target, permissions=wider))
    again = after.engine.execute(after.request(request_id="m-event-kept"))
    assert again.status == "granted" and again.reissued, again
    events = "SELECT EXECUTE_AT FROM information_schema.EVENTS WHERE EVENT_NAME = %s"
    ((at,),) = run(target.admin, events, event)
    assert first.expires_at is not None
    assert at == first.expires_at.replace(tzinfo=None, microsecond=0) + timedelta(
        seconds=1 if first.expires_at.microsecond else 0
    )
    live = target.login(before.credentials(first.sealed_credentials))
    try:
        assert target.denied(live)
    finally:
        target.close(live)
    target.reset()


def test_a_redelivery_after_the_grant_expired_is_refused_and_makes_nothing(
    env: ContractEnv,
) -> None:
    """A copy of the request signed later asks for a later expiry; past the grant's own (the
    row's), the server's event may already have ended it: nothing is made again."""
    # Long enough for the grant to be made before the server's clock passes its expiry.
    request = env.request(request_id="m-late-copy", duration="3s")
    first = env.engine.execute(request)
    assert first.status == "granted", first
    run(env.target.admin, "DROP USER %s@'%%'", first.principal)  # as the expiry would
    time.sleep(3.3)
    env.advance(timedelta(seconds=3.3))
    late = env.engine.execute(request, issued_at=env.now[0])
    assert late.status == "refused" and late.field == "request_id", late
    assert env.target.principals() == set()


def test_a_redelivery_after_the_account_was_renamed_away_is_refused_and_the_revoke_drops_it(
    env: ContractEnv,
) -> None:
    """Someone with CREATE USER renamed the grant's account: a redelivery does not make a
    second one (whose presence would hide the renamed one from the revoke); the revoke finds
    the renamed one by its password and drops it."""
    request = env.request(request_id="m-renamed-again")
    first = env.engine.execute(request)
    creds = env.credentials(first.sealed_credentials)
    kept = f"{FOREIGN}kept2"
    run(env.target.admin, f"RENAME USER '{first.principal}'@'%' TO '{kept}'@'%'")
    try:
        again = env.engine.execute(request)
        assert again.status == "refused" and kept in str(again.message), again
        assert env.target.principals() == set()
        revoke = env.engine.execute(env.request("revoke", request_id="m-renamed-again"))
        assert any(kept in line for line in revoke.residual), revoke
        assert not env.usable({**creds, "username": kept})
    finally:
        run(env.target.admin, "DROP USER IF EXISTS %s@'%%'", kept)


@pytest.mark.parametrize(
    "change", [{"user_prefix": f"{PREFIX}z"}, {"user_host": "127.0.0.1"}], ids=str
)
def test_a_revoke_acts_on_the_account_its_grant_made_after_the_naming_settings_change(
    target: MySQLTarget, change: dict[str, str]
) -> None:
    """What a revoke removes was fixed at grant time: the account its ledger row names, at its
    host, whatever the catalog would call a new grant's account now."""
    before = make_env(target)
    first = before.engine.execute(before.request(request_id="m-renamed-settings"))
    assert first.status == "granted", first
    creds = before.credentials(first.sealed_credentials)
    live = target.login(creds)
    after = make_env(target, catalog_doc(target, connection=target.connection(**change)))
    again = after.engine.execute(after.request(request_id="m-renamed-settings"))
    assert again.status == "granted" and again.reissued, again
    assert again.principal == first.principal and target.principals() == {first.principal}
    revoke = after.engine.execute(after.request("revoke", request_id="m-renamed-settings"))
    assert revoke.status == "revoked" and revoke.verified, revoke
    assert revoke.principal == first.principal
    assert target.principals() == set()
    assert not target.alive(live) and not after.can_login(creds)
    target.reset()


def test_a_revoke_on_a_ledger_without_the_grant_reports_its_account_and_changes_nothing(
    target: MySQLTarget,
) -> None:
    """After `ledger_database` changes, the new ledger has no row for an older grant: its revoke
    names the account and fails (retried), rather than say there was nothing to revoke."""
    moved = f"{LEDGER}b"
    run(target.admin, f"GRANT ALL PRIVILEGES ON `{moved}`.* TO '{ADMIN}'@'%'")
    try:
        before = make_env(target)
        first = before.engine.execute(before.request(request_id="m-moved-ledger"))
        creds = before.credentials(first.sealed_credentials)
        after = make_env(
            target, catalog_doc(target, connection=target.connection(ledger_database=moved))
        )
        for _ in range(2):
            revoke = after.engine.execute(after.request("revoke", request_id="m-moved-ledger"))
            assert revoke.status == "failed" and not revoke.verified, revoke
            assert any(str(first.principal) in line for line in revoke.residual), revoke
        assert target.principals() == {first.principal} and before.usable(creds)
        assert run(target.admin, f"SELECT grant_id FROM `{moved}`.grants") == []
        revoke = before.engine.execute(before.request("revoke", request_id="m-moved-ledger"))
        assert revoke.status == "revoked" and revoke.verified, revoke
        assert target.principals() == set()
    finally:
        run(target.admin, f"DROP DATABASE IF EXISTS `{moved}`")
        run(target.admin, f"REVOKE ALL PRIVILEGES ON `{moved}`.* FROM '{ADMIN}'@'%'")
        target.reset()


def test_revoke_leaves_nothing_in_the_server_tables(env: ContractEnv) -> None:
    outcome = env.engine.execute(env.request(request_id="m-gone", resources=[DATABASE]))
    name = outcome.principal
    assert run(env.target.admin, "SELECT COUNT(*) FROM mysql.db WHERE User = %s", name) == [(1,)]
    env.engine.execute(env.request("revoke", request_id="m-gone"))
    for table in ("global_priv", "db", "tables_priv", "columns_priv", "procs_priv"):
        rows = run(env.target.admin, f"SELECT COUNT(*) FROM mysql.{table} WHERE User = %s", name)
        assert rows == [(0,)], table
    events = run(
        env.target.admin,
        "SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s AND "
        "EVENT_NAME = %s",
        LEDGER,
        f"jitc_expire_{outcome.grant_id}",
    )
    assert events == [(0,)]


@pytest.mark.parametrize(
    ("statements", "resources", "error"),
    [
        (["GRANT SELECT ON {database}.* TO {user}"], [DATABASE], "write {object}"),
        (["GRANT SELECT ON {schema}.* TO {user}"], [DATABASE], "unknown placeholder"),
        (["GRANT SELECT ON {object} TO root"], [DATABASE], "must name {user}"),
        (["GRANT SELECT ON {object} TO {user}"], ["mysql"], "system database"),
        (["GRANT SELECT ON {object} TO {user}"], ["a.b.c"], "database.table"),
        (["GRANT SELECT ON {database}.{table} TO {user}"], [DATABASE], "{table} needs"),
        # Spaced or commented apart, `db` .* is still a database-level, wildcard grant.
        (["GRANT SELECT ON {database} .* TO {user}"], [DATABASE], "{database}.{table}"),
        (["GRANT SELECT ON {database}/**/.* TO {user}"], [DATABASE], "{database}.{table}"),
        (["GRANT SELECT ON {object} TO {user}"], ["mysq_"], "system database"),
        (["GRANT SELECT ON {database}.{table} TO {user}"], ["m_sql.user"], "system database"),
    ],
)
def test_catalog_refuses_unsafe_statements_and_resources(
    target: MySQLTarget, statements: list[str], resources: list[str], error: str
) -> None:
    permissions = {"custom": {"statements": statements, "resources": resources}}
    with pytest.raises(CatalogError, match=r"permissions\.custom") as err:
        parse_catalog(catalog_doc(target, permissions=permissions))
    assert error in str(err.value)


@pytest.mark.parametrize(
    "statement",
    [
        "GRANT SELECT ON {object} TO {user} WITH GRANT OPTION",
        "GRANT SELECT ON *.* TO {user}",
        "GRANT SELECT ON * . * TO {user}",
        "GRANT ALL ON {object} TO {user}",
        "GRANT ALL PRIVILEGES ON {object} TO {user}",
        "GRANT SUPER ON {object} TO {user}",
        "GRANT PROXY ON root TO {user}",
        "GRANT `some_role` TO {user}",
        "GRANT CREATE USER ON {object} TO {user}",
        "GRANT SELECT, FILE ON {object} TO {user}",
        "GRANT SELECT ON {object} TO {user}; GRANT SUPER ON *.* TO {user}",
        "GRANT SELECT ON {object} TO {user} /* */ WITH GRANT OPTION",
        "GRANT SELECT ON mysql.user TO {user}",
        "SET PASSWORD FOR {user} = PASSWORD('x')",
    ],
)
def test_catalog_statements_beyond_plain_object_grants_need_privileged(
    target: MySQLTarget, statement: str
) -> None:
    plain = {"statements": [statement], "resources": [DATABASE]}
    with pytest.raises(CatalogError, match="privileged") as err:
        parse_catalog(catalog_doc(target, permissions={"custom": plain}))
    assert "permissions.custom" in str(err.value)
    marked = {**plain, "privileged": True}
    parse_catalog(catalog_doc(target, permissions={"custom": marked}))


def test_a_grantee_of_a_plain_statement_cannot_pass_it_on(env: ContractEnv) -> None:
    """What the screen lets through, run on the server: the grantee holds no grant option."""
    permissions = {
        "cols": {
            "statements": [
                "GRANT SELECT (id), INSERT, UPDATE, DELETE, SHOW VIEW ON {object} TO {user}",
                "grant select\n on {database}.{table} to {user};",
            ],
            "resources": [f"{DATABASE}.items"],
        }
    }
    cols = make_env(env.target, catalog_doc(env.target, permissions=permissions))  # type: ignore[arg-type]
    outcome = cols.engine.execute(cols.request(permission="cols", resources=[f"{DATABASE}.items"]))
    assert outcome.status == "granted", outcome.message
    live = env.target.login(cols.credentials(outcome.sealed_credentials))
    with pytest.raises(pymysql.err.OperationalError):
        run(live, f"GRANT SELECT ON `{DATABASE}`.items TO '{ADMIN}'@'%'")
    env.target.close(live)


def test_inventory_lists_users_databases_and_the_scheduler(env: ContractEnv) -> None:
    integration = env.catalog.integration(env.target.integration)
    session = integration.template.open(
        env.target.integration,
        integration.connection,
        Secret(env.target.admin_secret()),
        LabelKey.from_secret(LABEL_KEY),
    )
    try:
        inventory = session.inventory()
    finally:
        session.close()
    assert DATABASE in inventory["databases"]
    assert f"{ADMIN}@%" in inventory["users"]
    assert inventory["event_scheduler"][0] in ("ON", "OFF")


def test_a_grantee_reconnecting_in_a_loop_keeps_nothing_after_revoke(env: ContractEnv) -> None:
    outcome = env.engine.execute(env.request(request_id="m-storm"))
    creds = env.credentials(outcome.sealed_credentials)
    held: list[Any] = []
    stop = threading.Event()

    def storm() -> None:
        while not stop.is_set():
            try:
                held.append(env.target.login(creds))
            except pymysql.Error:
                time.sleep(0.005)

    workers = [threading.Thread(target=storm) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        assert _wait_until(lambda: len(held) >= 2, 10)
        revoke = env.engine.execute(env.request("revoke", request_id="m-storm"))
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert revoke.status == "revoked" and revoke.verified, revoke
    assert not any(env.target.alive(live) for live in held)
    assert not env.can_login(creds)
    sessions = run(
        env.target.admin,
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s",
        outcome.principal,
    )
    assert sessions == [(0,)]


FOREIGN = f"d{PREFIX[1:]}"  # the company's own names: not the connector's prefix
ROLES = ("readers", "boss", "mid", "granter", "wild", "keeper", "routine")
PROCEDURE = "AddGeometryColumn"  # a routine MariaDB ships in the mysql database


@pytest.fixture
def roles(target: MySQLTarget) -> Iterator[dict[str, str]]:
    """The company's roles and a member account, made outside the connector; the admin may
    hand out `readers` (ADMIN OPTION), and `boss` reaches CREATE USER through `mid`."""
    names = {
        "member": f"{FOREIGN}alice",
        "readers": f"{FOREIGN}readers",
        "boss": f"{FOREIGN}boss",
        "mid": f"{FOREIGN}mid",
        "granter": f"{FOREIGN}granter",
        "wild": f"{FOREIGN}wild",
        "keeper": f"{FOREIGN}keeper",
        "routine": f"{FOREIGN}routine",
        "dealer": f"{FOREIGN}dealer",
        "stranger": f"{FOREIGN}stranger",
    }
    conn = target.admin
    run(conn, "CREATE USER %s@'%%' IDENTIFIED BY 'alice-pw'", names["member"])
    # A member that may pass on what it holds in one database only.
    run(conn, "CREATE USER %s@'%%' IDENTIFIED BY 'dealer-pw'", names["dealer"])
    run(conn, f"GRANT SELECT ON `{DATABASE}`.* TO '{names['dealer']}'@'%' WITH GRANT OPTION")
    for role in ROLES:
        run(conn, f"CREATE ROLE `{names[role]}`")
        run(conn, f"GRANT `{names[role]}` TO '{ADMIN}'@'%' WITH ADMIN OPTION")
    run(conn, f"GRANT SELECT ON `{DATABASE}`.* TO `{names['readers']}`")
    run(conn, f"GRANT CREATE USER ON *.* TO `{names['boss']}`")
    run(conn, f"GRANT `{names['boss']}` TO `{names['mid']}`")
    run(conn, f"GRANT SELECT ON `{DATABASE}`.* TO `{names['granter']}` WITH GRANT OPTION")
    run(conn, f"CREATE ROLE `{names['stranger']}`")  # the admin may not hand this one out
    run(conn, f"GRANT SELECT ON `{DATABASE}`.* TO `{names['stranger']}`")
    # A database-level `%` pattern reaches the system databases and the ledger.
    run(conn, f"GRANT SELECT, DELETE ON `%`.* TO `{names['wild']}`")
    run(conn, f"GRANT `{names['readers']}` TO `{names['keeper']}` WITH ADMIN OPTION")
    run(conn, f"GRANT EXECUTE ON PROCEDURE mysql.{PROCEDURE} TO `{names['routine']}`")
    yield names
    for thread in run(
        conn, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", names["member"]
    ):
        with contextlib.suppress(pymysql.Error):
            run(conn, f"KILL CONNECTION {int(thread[0])}")
    run(conn, "DROP USER IF EXISTS %s@'%%'", names["member"])
    run(conn, "DROP USER IF EXISTS %s@'%%'", names["dealer"])
    run(conn, f"DROP ROLE IF EXISTS `{names['stranger']}`")
    for role in ROLES:
        run(conn, f"DROP ROLE IF EXISTS `{names[role]}`")


def _membership_env(target: MySQLTarget, roles: dict[str, str]) -> ContractEnv:
    permissions = {
        **target.permissions(),
        "analyst": {"mode": "membership", "resources": [roles["readers"]]},
        "boss": {"mode": "membership", "resources": [roles["boss"]]},
        "mid": {"mode": "membership", "resources": [roles["mid"]]},
        "granter": {"mode": "membership", "resources": [roles["granter"]]},
        "wild": {"mode": "membership", "resources": [roles["wild"]]},
        "keeper": {"mode": "membership", "resources": [roles["keeper"]]},
        "routine": {"mode": "membership", "resources": [roles["routine"]]},
        "stranger": {"mode": "membership", "resources": [roles["stranger"]]},
    }
    return make_env(target, catalog_doc(target, permissions=permissions))


def _member_login(roles: dict[str, str]) -> Any:
    return pymysql.connect(
        host="127.0.0.1", user=roles["member"], password="alice-pw", autocommit=True
    )


def _can_select_as(live: Any, role: str) -> bool:
    try:
        run(live, f"SET ROLE `{role}`")
        run(live, f"SELECT COUNT(*) FROM `{DATABASE}`.items")
    except pymysql.err.OperationalError:
        return False
    return True


def test_membership_grants_a_role_per_grant_and_revoke_ends_only_that_one(
    target: MySQLTarget, roles: dict[str, str]
) -> None:
    env = _membership_env(target, roles)
    ident = {"email": "alice@example.com", "username": roles["member"]}

    def grant(rid: str) -> Any:
        return env.engine.execute(
            env.request(
                request_id=rid, permission="analyst", resources=[roles["readers"]], identity=ident
            )
        )

    before = run(
        target.admin, "SELECT Priv FROM mysql.global_priv WHERE User = %s", roles["member"]
    )
    one, two = grant("mm-1"), grant("mm-2")
    assert one.status == two.status == "granted", (one.message, two.message)
    assert one.sealed_credentials is None
    assert one.principal != two.principal
    live = _member_login(roles)
    assert _can_select_as(live, str(one.principal))
    revoke = env.engine.execute(env.request("revoke", request_id="mm-1"))
    assert revoke.status == "revoked" and revoke.verified, revoke
    assert not target.alive(live)  # its sessions could hold the role: ended
    again = _member_login(roles)
    assert not _can_select_as(again, str(one.principal))
    assert _can_select_as(again, str(two.principal))  # the other grant still holds
    assert env.engine.execute(env.request("revoke", request_id="mm-2")).verified
    last = _member_login(roles)  # the account itself is the company's: untouched
    assert not _can_select_as(last, str(two.principal))
    last.close()
    after = run(target.admin, "SELECT Priv FROM mysql.global_priv WHERE User = %s", roles["member"])
    assert after == before


@pytest.mark.parametrize(
    ("permission", "who", "field"),
    [
        ("boss", "member", "resources[0]"),
        ("mid", "member", "resources[0]"),
        ("granter", "member", "resources[0]"),
        ("wild", "member", "resources[0]"),
        ("keeper", "member", "resources[0]"),
        ("routine", "member", "resources[0]"),
        ("analyst", "dealer", "identity.username"),
        ("analyst", "admin", "identity.username"),
        ("analyst", "missing", "identity.username"),
        ("analyst", "role", "identity.username"),
    ],
)
def test_membership_refuses_privileged_roles_and_grantees(
    target: MySQLTarget, roles: dict[str, str], permission: str, who: str, field: str
) -> None:
    env = _membership_env(target, roles)
    username = {
        "member": roles["member"],
        "admin": ADMIN,
        "missing": f"{FOREIGN}nobody",
        "role": roles["readers"],
        "dealer": roles["dealer"],
    }[who]
    resource = {"analyst": "readers"}.get(permission, permission)
    before = target.snapshot()
    outcome = env.engine.execute(
        env.request(
            permission=permission,
            resources=[roles[resource]],
            identity={"email": "x@example.com", "username": username},
        )
    )
    assert outcome.status == "refused" and outcome.field == field, outcome
    if field.startswith("resources"):
        assert "never handed out" in str(outcome.message)
    assert target.snapshot() == before and target.principals() == set()


def test_membership_of_a_role_the_admin_cannot_hand_out_is_refused_before_anything_is_made(
    target: MySQLTarget, roles: dict[str, str]
) -> None:
    env = _membership_env(target, roles)
    before = target.snapshot()
    outcome = env.engine.execute(
        env.request(
            permission="stranger",
            resources=[roles["stranger"]],
            identity={"email": "x@example.com", "username": roles["member"]},
        )
    )
    assert outcome.status == "refused" and outcome.field == "resources[0]", outcome
    assert "ADMIN OPTION" in str(outcome.message)
    assert target.snapshot() == before and target.principals() == set()
    ledger = run(
        target.admin,
        f"SELECT COUNT(*) FROM `{LEDGER}`.grants WHERE grant_id = %s",
        outcome.grant_id,
    )
    assert ledger == [(0,)]


def test_membership_expiry_event_drops_the_grant_role_and_ends_the_member_sessions(
    target: MySQLTarget, roles: dict[str, str], event_scheduler: Any
) -> None:
    event_scheduler(True)
    env = _membership_env(target, roles)
    request = env.request(
        request_id="mm-event",
        permission="analyst",
        resources=[roles["readers"]],
        identity={"email": "alice@example.com", "username": roles["member"]},
        duration="2s",
    )
    plan = env.engine.plan(request).statements
    role = str(env.engine.execute(request).principal)
    assert plan[0] == f"CREATE ROLE `{role}`"
    assert plan[-2] == f"GRANT `{role}` TO '{roles['member']}'@'%'"
    live = _member_login(roles)
    assert _can_select_as(live, role)
    assert _wait_until(lambda: not target.alive(live))
    again = _member_login(roles)
    assert not _can_select_as(again, role)
    again.close()
    env.advance(timedelta(seconds=3))
    assert env.engine.sweep().revoked == [request.target_grant_id]


def _member_accounts(target: MySQLTarget, roles: dict[str, str]) -> list[Any]:
    return run(
        target.admin,
        "SELECT Host, JSON_VALUE(Priv, '$.authentication_string') FROM mysql.global_priv "
        "WHERE User = %s",
        roles["member"],
    )


def _member_roles(target: MySQLTarget, roles: dict[str, str]) -> list[Any]:
    return run(
        target.admin, "SELECT Role FROM mysql.roles_mapping WHERE User = %s", roles["member"]
    )


def test_a_membership_redelivery_after_the_member_is_gone_makes_no_account(
    target: MySQLTarget, roles: dict[str, str]
) -> None:
    """The member was removed while its grant lived; a GRANT to an account that does not
    exist would make it, with no password, on MariaDB: refused instead."""
    env = _membership_env(target, roles)
    request = env.request(
        request_id="mm-gone",
        permission="analyst",
        resources=[roles["readers"]],
        identity={"email": "alice@example.com", "username": roles["member"]},
    )
    assert env.engine.execute(request).status == "granted"
    run(target.admin, "DROP USER %s@'%%'", roles["member"])
    again = env.engine.execute(request)
    assert again.status == "refused" and again.field == "identity.username", again
    assert _member_accounts(target, roles) == []
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host="127.0.0.1", user=roles["member"], password="", connect_timeout=3)
    revoke = env.engine.execute(env.request("revoke", request_id="mm-gone"))
    assert revoke.status == "revoked" and revoke.verified, revoke


@pytest.mark.parametrize(
    "change", [{"user_prefix": f"{PREFIX}z"}, {"user_host": "127.0.0.1"}], ids=str
)
def test_a_membership_redelivery_after_the_naming_settings_change_keeps_the_grant_as_made(
    target: MySQLTarget, roles: dict[str, str], change: dict[str, str]
) -> None:
    """The role and the member's host the row holds, not today's: no second role the revoke
    would not know, no account made at another host."""
    before = _membership_env(target, roles)
    request = before.request(
        request_id=f"mm-renamed-{next(iter(change))}",
        permission="analyst",
        resources=[roles["readers"]],
        identity={"email": "alice@example.com", "username": roles["member"]},
    )
    first = before.engine.execute(request)
    assert first.status == "granted", first
    permissions = {"analyst": {"mode": "membership", "resources": [roles["readers"]]}}
    doc = catalog_doc(
        target,
        permissions={**target.permissions(), **permissions},
        connection=target.connection(**change),
    )
    after = make_env(target, doc)
    again = after.engine.execute(request)
    assert again.status == "granted" and again.reissued, again
    assert again.principal == first.principal
    assert _member_roles(target, roles) == [(first.principal,)]
    assert [host for host, _ in _member_accounts(target, roles)] == ["%"]
    revoke = after.engine.execute(after.request("revoke", request_id=request.request_id))
    assert revoke.status == "revoked" and revoke.verified, revoke
    assert _member_roles(target, roles) == []


def test_tls_is_verified_or_the_connection_refused(target: MySQLTarget) -> None:
    from jitc.templates.mysql import Connection
    from jitc.templates.mysql_session import _tls

    context = _tls(Connection.model_validate(target.connection(ssl=True)))
    assert context is not None and context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    # This server offers no TLS: the admin's password is then never sent in the clear.
    env = make_env(target, catalog_doc(target, connection=target.connection(ssl=True)))
    outcome = env.engine.execute(env.request(request_id="m-tls"))
    assert outcome.status == "failed" and target.password not in str(outcome.message)
    assert target.principals() == set()


def test_a_revoke_whose_lock_is_held_still_ends_access_and_is_retried(
    target: MySQLTarget,
) -> None:
    # The worst case: someone who can read the ledger's key holds the grant's very lock.
    env = make_env(target, catalog_doc(target, connection=target.connection(lock_wait_seconds=1)))
    outcome = env.engine.execute(env.request(request_id="m-held"))
    creds = env.credentials(outcome.sealed_credentials)
    live = target.login(creds)
    holder = _hold_lock(target, str(outcome.grant_id))
    try:
        blocked = env.engine.execute(env.request("revoke", request_id="m-held"))
        assert blocked.status == "failed" and "busy" in str(blocked.message)
        assert not target.alive(live) and not env.can_login(creds)
    finally:
        holder.close()
    done = env.engine.execute(env.request("revoke", request_id="m-held"))
    assert done.status == "revoked" and done.verified
    assert outcome.principal not in target.principals()


def _hold_lock(target: MySQLTarget, grant_id: str) -> Any:
    """A connection holding the grant's own lock (as someone who can read the ledger's key)."""
    key = run(target.admin, f"SELECT value FROM `{LEDGER}`.`keys` WHERE name = 'lock'")[0][0]
    digest = hashlib.sha256(f"{key}:{grant_id}".encode()).hexdigest()[:56]
    holder = root()
    assert run(holder, "SELECT GET_LOCK(%s, 0)", f"jitc-{digest}") == [(1,)]
    return holder


def test_a_membership_revoke_cut_short_by_its_held_lock_is_not_undone_by_a_redelivery(
    target: MySQLTarget, roles: dict[str, str]
) -> None:
    """The revoke that cannot take its grant's lock drops the grant's role all the same, and
    marks the row: a redelivery finding the role gone refuses instead of making it again."""
    permissions = {"analyst": {"mode": "membership", "resources": [roles["readers"]]}}
    doc = catalog_doc(
        target,
        permissions={**target.permissions(), **permissions},
        connection=target.connection(lock_wait_seconds=1),
    )
    env = make_env(target, doc)
    request = env.request(
        request_id="mm-held",
        permission="analyst",
        resources=[roles["readers"]],
        identity={"email": "alice@example.com", "username": roles["member"]},
    )
    outcome = env.engine.execute(request)
    holder = _hold_lock(target, str(outcome.grant_id))
    try:
        blocked = env.engine.execute(env.request("revoke", request_id="mm-held"))
        assert blocked.status == "failed" and "busy" in str(blocked.message), blocked
        assert _member_roles(target, roles) == []
    finally:
        holder.close()
    again = env.engine.execute(request)
    assert again.status == "refused" and again.field == "request_id", again
    assert _member_roles(target, roles) == []
    done = env.engine.execute(env.request("revoke", request_id="mm-held"))
    assert done.status == "revoked" and done.verified, done


def test_a_redelivery_past_the_expiry_by_the_server_s_clock_is_refused(
    target: MySQLTarget, roles: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The expiry event fires by the server's clock: a connector whose clock runs behind
    still refuses a redelivery once the server has passed the grant's expiry."""
    env = _membership_env(target, roles)
    request = env.request(
        request_id="mm-skewed",
        permission="analyst",
        resources=[roles["readers"]],
        identity={"email": "alice@example.com", "username": roles["member"]},
        # Long enough for the grant to be made before the server's clock passes its expiry
        # (a grant past it is refused) on a loaded machine.
        duration="3s",
    )
    outcome = env.engine.execute(request)
    assert outcome.status == "granted", outcome
    run(target.admin, f"DROP ROLE `{outcome.principal}`")  # as the server's event would
    time.sleep(3.3)
    behind = _clock_behind(monkeypatch, env, 10)
    again = env.engine.execute(request, issued_at=behind)
    assert again.status == "refused" and again.field == "request_id", again
    assert _member_roles(target, roles) == []
    revoke = env.engine.execute(env.request("revoke", request_id="mm-skewed"))
    assert revoke.status == "revoked" and revoke.verified, revoke


def test_a_revoke_whose_lock_is_held_ends_access_even_while_the_ledger_is_locked(
    target: MySQLTarget,
) -> None:
    """A backup's `LOCK TABLES ... READ` on the ledger makes the revoke's mark wait and fail:
    the account is locked and its sessions ended first, all the same."""
    env = make_env(target, catalog_doc(target, connection=target.connection(lock_wait_seconds=1)))
    outcome = env.engine.execute(env.request(request_id="m-held-ledger"))
    creds = env.credentials(outcome.sealed_credentials)
    live = target.login(creds)
    holder = _hold_lock(target, str(outcome.grant_id))
    backup = root()
    run(backup, f"LOCK TABLES `{LEDGER}`.grants READ")
    try:
        blocked = env.engine.execute(env.request("revoke", request_id="m-held-ledger"))
        assert blocked.status == "failed", blocked
        assert not target.alive(live) and not env.can_login(creds)
    finally:
        backup.close()
        holder.close()
    done = env.engine.execute(env.request("revoke", request_id="m-held-ledger"))
    assert done.status == "revoked" and done.verified, done


def _clock_behind(monkeypatch: pytest.MonkeyPatch, env: ContractEnv, seconds: float) -> Any:
    """The connector's clock `seconds` behind the server's (and the engine's with it)."""
    from datetime import UTC, datetime

    from jitc.templates import mysql_session

    behind = datetime.now(UTC) - timedelta(seconds=seconds)
    monkeypatch.setattr(mysql_session, "utcnow", lambda: behind)
    env.now[0] = behind
    return behind


def test_a_grant_the_server_s_clock_has_already_passed_is_refused(
    target: MySQLTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its expiry event, scheduled at a time the server has passed, would be dropped as it is
    made: the grant would have no expiry in the server."""
    env = make_env(target)
    behind = _clock_behind(monkeypatch, env, 600)
    outcome = env.engine.execute(env.request(request_id="m-skew", duration="5m"), issued_at=behind)
    assert outcome.status == "refused" and outcome.field == "integration", outcome
    assert target.principals() == set()


def test_without_an_expiry_event_the_server_s_clock_refuses_nothing(
    target: MySQLTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_env(target, catalog_doc(target, connection=target.connection(expiry_event="off")))
    behind = _clock_behind(monkeypatch, env, 600)
    request = env.request(request_id="m-skew-off", duration="5m")
    first = env.engine.execute(request, issued_at=behind)
    assert first.status == "granted", first
    again = env.engine.execute(request, issued_at=behind)
    assert again.status == "granted" and again.reissued, again
    revoke = env.engine.execute(env.request("revoke", request_id="m-skew-off"))
    assert revoke.status == "revoked" and revoke.verified, revoke


def test_an_upper_case_user_host_is_the_server_s_lower_case_one(target: MySQLTarget) -> None:
    """The server keeps an account's host in lower case; the catalog's is read so, and a
    redelivery and a revoke find the account they made."""
    doc = catalog_doc(target, connection=target.connection(user_host="127.0.0.1.EXAMPLE"))
    env = make_env(target, doc)
    request = env.request(request_id="m-upper-host")
    first = env.engine.execute(request)
    assert first.status == "granted", first
    again = env.engine.execute(request)
    assert again.status == "granted" and again.reissued, again
    revoke = env.engine.execute(env.request("revoke", request_id="m-upper-host"))
    assert revoke.status == "revoked" and revoke.verified, revoke
    assert target.principals() == set()


BACKUP_LOCKS = {
    "global": "FLUSH TABLES WITH READ LOCK",
    "mysql-tables": "LOCK TABLES mysql.global_priv READ, mysql.roles_mapping READ",
}


@pytest.mark.parametrize("began", [False, True], ids=["fresh", "revoke-began"])
@pytest.mark.parametrize("grant_lock", [False, True], ids=["lock-free", "lock-held"])
@pytest.mark.parametrize("backup", sorted(BACKUP_LOCKS))
def test_a_revoke_held_up_by_a_backup_s_lock_ends_the_sessions_and_returns(
    target: MySQLTarget, backup: str, grant_lock: bool, began: bool
) -> None:
    """A backup job holds FLUSH TABLES WITH READ LOCK, or locks the `mysql` tables: the
    revoke's writes and account DDL wait on it (MariaDB waits on the DDL without a bound). The
    grantee's sessions are ended first all the same (`KILL` waits on no lock), the revoke
    returns within its bound, failed, and its retry finishes. So too when the grant's lock is
    held (the revoke only contains), and when an earlier revoke already marked the row."""
    env = make_env(target, catalog_doc(target, connection=target.connection(lock_wait_seconds=1)))
    rid = f"m-backup-{backup[0]}-{int(grant_lock)}-{int(began)}"
    outcome = env.engine.execute(env.request(request_id=rid))
    creds = env.credentials(outcome.sealed_credentials)
    if began:  # a revoke that could not take its lock: account locked, row marked
        holder = _hold_lock(target, str(outcome.grant_id))
        assert env.engine.execute(env.request("revoke", request_id=rid)).status == "failed"
        holder.close()
        run(target.admin, "ALTER USER %s@'%%' ACCOUNT UNLOCK", outcome.principal)
    live = target.login(creds)
    held = _hold_lock(target, str(outcome.grant_id)) if grant_lock else None
    backup_job = root()
    run(backup_job, BACKUP_LOCKS[backup])
    results: list[Any] = []
    revoking = threading.Thread(
        target=lambda: results.append(env.engine.execute(env.request("revoke", request_id=rid)))
    )
    try:
        revoking.start()
        revoking.join(30)
        assert not revoking.is_alive(), "the revoke waited on the backup's lock without a bound"
        assert results[0].status == "failed", results
        assert not target.alive(live)
    finally:
        run(backup_job, "UNLOCK TABLES")
        backup_job.close()
        if held is not None:
            held.close()
        revoking.join()
    done = env.engine.execute(env.request("revoke", request_id=rid))
    assert done.status == "revoked" and done.verified, done
    assert outcome.principal not in target.principals() and not env.can_login(creds)


@pytest.mark.parametrize("backup", sorted(BACKUP_LOCKS))
def test_a_grant_held_up_by_a_backup_s_lock_returns_and_its_redelivery_completes_it(
    target: MySQLTarget, backup: str
) -> None:
    """The grant's writes and its account DDL wait on the backup's lock, bounded: the grant
    fails (retried) instead of holding its lock, and every revoke of it, for as long as the
    backup lasts."""
    env = make_env(target, catalog_doc(target, connection=target.connection(lock_wait_seconds=1)))
    request = env.request(request_id=f"m-backup-grant-{backup[0]}")
    backup_job = root()
    run(backup_job, BACKUP_LOCKS[backup])
    results: list[Any] = []
    granting = threading.Thread(target=lambda: results.append(env.engine.execute(request)))
    try:
        granting.start()
        granting.join(30)
        assert not granting.is_alive(), "the grant waited on the backup's lock without a bound"
        assert results[0].status == "failed", results
    finally:
        run(backup_job, "UNLOCK TABLES")
        backup_job.close()
        granting.join()
    again = env.engine.execute(request)
    assert again.status == "granted", again
    assert env.usable(env.credentials(again.sealed_credentials))
    done = env.engine.execute(env.request("revoke", request_id=request.request_id))
    assert done.status == "revoked" and done.verified, done
    target.reset()


def test_the_expiry_event_ends_the_sessions_while_a_backup_holds_the_account_tables(
    target: MySQLTarget, event_scheduler: Any
) -> None:
    """The event kills first: its `ACCOUNT LOCK` waits as long as the backup locks the `mysql`
    tables (a statement in an event has no time bound), its kills on nothing."""
    event_scheduler(True)
    env = make_env(target)
    outcome = env.engine.execute(env.request(request_id="m-event-backup", duration="2s"))
    live = target.login(env.credentials(outcome.sealed_credentials))
    backup_job = root()
    run(backup_job, BACKUP_LOCKS["mysql-tables"])
    try:
        assert _wait_until(lambda: not target.alive(live), 20)
    finally:
        run(backup_job, "UNLOCK TABLES")
        backup_job.close()
    env.advance(timedelta(seconds=3))
    assert outcome.grant_id in env.engine.sweep().revoked
    target.reset()


def _ledger_rows(target: MySQLTarget, grant_id: str | None) -> list[Any]:
    return run(
        target.admin, f"SELECT grant_id FROM `{LEDGER}`.grants WHERE grant_id = %s", grant_id
    )


@pytest.mark.parametrize(
    "statement",
    [
        # Through a role: `mid` holds `boss`, which holds CREATE USER.
        "GRANT `{mid}` TO {{user}}",
        # A role's ADMIN OPTION: `keeper` may hand `readers` to anyone.
        "GRANT `{keeper}` TO {{user}}",
        # The grant option: the grantee could give its access to an account that outlives it.
        "GRANT SELECT ON {{object}} TO {{user}} WITH GRANT OPTION",
    ],
)
def test_a_privileged_grant_that_could_rename_or_repassword_accounts_is_refused(
    target: MySQLTarget, roles: dict[str, str], statement: str
) -> None:
    """An account that may create, rename or re-password accounts (or pass its access on)
    could rename itself under a new password, and no revoke would find it: such a grant is
    refused, even for a privileged permission, with nothing of it left in the server."""
    permissions = {
        "wide": {
            "statements": [statement.format(**roles)],
            "resources": [DATABASE],
            "privileged": True,
        }
    }
    env = make_env(target, catalog_doc(target, permissions=permissions))
    before = target.snapshot()
    outcome = env.engine.execute(env.request(permission="wide"))
    assert outcome.status == "refused" and outcome.field == "permission", outcome
    # Accounts and privileges as they were (the connector's ledger database may be new).
    assert target.principals() == set() and target.snapshot()[:3] == before[:3]
    assert _ledger_rows(target, outcome.grant_id) == []
    # A privileged grant that reaches no account administration is made.
    fine = {"statements": [f"GRANT `{roles['readers']}` TO {{user}}"], "resources": [DATABASE]}
    env = make_env(target, catalog_doc(target, permissions={"fine": {**fine, "privileged": True}}))
    made = env.engine.execute(env.request(permission="fine"))
    assert made.status == "granted", made
    target.reset()


@pytest.mark.parametrize(
    "statement",
    [
        "GRANT CREATE USER ON *.* TO {user}",
        "GRANT UPDATE ON mysql.global_priv TO {user}",
        # Names any definer: a routine the grantee defines as the connector's admin runs as the
        # admin, and a CREATE USER there makes an account no revoke knows of.
        "GRANT SET USER ON *.* TO {user}",
        # Ends any connection: a grantee ending the admin's in a loop stops every revoke (and
        # the expiry event, which runs as the admin) before it locks the account.
        "GRANT CONNECTION ADMIN ON *.* TO {user}",
        # FLUSH TABLES WITH READ LOCK holds every write: the revoke's and the expiry event's.
        "GRANT RELOAD ON *.* TO {user}",
    ],
)
def test_account_administration_granted_directly_is_refused(
    target: MySQLTarget, statement: str
) -> None:
    """With an admin that could hand them out: what reaches account administration, or past
    the revoke, is refused even to a privileged permission, with nothing made."""
    boss = f"{FOREIGN}boss_admin"
    conn = target.admin
    run(conn, "CREATE USER %s@'%%' IDENTIFIED BY %s", boss, ADMIN_PASSWORD)
    try:
        for grant in admin_grants(DATABASE, LEDGER):
            run(conn, grant.format(admin=f"'{boss}'@'%'"))
        run(conn, f"GRANT CREATE USER ON *.* TO '{boss}'@'%' WITH GRANT OPTION")
        run(conn, f"GRANT UPDATE ON mysql.global_priv TO '{boss}'@'%' WITH GRANT OPTION")
        run(
            conn,
            f"GRANT SET USER, CONNECTION ADMIN, RELOAD ON *.* TO '{boss}'@'%' WITH GRANT OPTION",
        )
        permissions = {
            "wide": {"statements": [statement], "resources": [DATABASE], "privileged": True}
        }
        doc = catalog_doc(target, connection=target.connection(user=boss), permissions=permissions)
        env = make_env(target, doc)
        outcome = env.engine.execute(env.request(permission="wide"))
        assert outcome.status == "refused" and outcome.field == "permission", outcome
        assert target.principals() == set()
        assert _ledger_rows(target, outcome.grant_id) == []
    finally:
        run(conn, "DROP USER IF EXISTS %s@'%%'", boss)


def test_a_plain_grantee_cannot_rename_itself_and_its_own_new_password_ends_with_it(
    env: ContractEnv,
) -> None:
    """The name is how the revoke finds the account: a grantee may change its own password
    (MariaDB lets every account do that), but not its name, nor anyone else's password."""
    outcome = env.engine.execute(env.request(request_id="m-selfpw"))
    creds = env.credentials(outcome.sealed_credentials)
    live = env.target.login(creds)
    me = f"'{outcome.principal}'@'%'"
    for hostile in (
        f"RENAME USER {me} TO '{FOREIGN}hidden'@'%'",
        f"CREATE USER '{FOREIGN}spare'@'%' IDENTIFIED BY 'x'",
        f"SET PASSWORD FOR '{ADMIN}'@'%' = PASSWORD('x')",
        f"ALTER USER '{ADMIN}'@'%' IDENTIFIED BY 'x'",
    ):
        with pytest.raises(pymysql.err.OperationalError):
            run(live, hostile)
    run(live, "SET PASSWORD = PASSWORD('mine-now')")
    revoke = env.engine.execute(env.request("revoke", request_id="m-selfpw"))
    assert revoke.status == "revoked" and revoke.verified, revoke
    assert not env.target.alive(live)
    assert not env.can_login({**creds, "password": "mine-now"})
    assert not run(
        env.target.admin, "SELECT User FROM mysql.user WHERE User LIKE %s", f"{FOREIGN}%"
    )


def test_the_inventory_sync_streams_names_only_including_hostile_ones(env: ContractEnv) -> None:
    import io
    import json

    from jitc.inventory import JsonLinesTransport, MemorySyncState

    hostile = 'x"},{"kind":"user","name":"root'
    conn = root()
    try:
        run(conn, f"CREATE TABLE `{DATABASE}`.`{hostile}` (secret_col text)")
        run(conn, f"INSERT INTO `{DATABASE}`.`{hostile}` VALUES ('ROW-VALUE-NOT-SENT')")
        out = io.StringIO()
        report = env.engine.sync(JsonLinesTransport(out), MemorySyncState())
    finally:
        run(conn, f"DROP TABLE IF EXISTS `{DATABASE}`.`{hostile}`")
        conn.close()
    assert report.integrations[env.target.integration].status == "complete", report.as_dict()
    records = [
        r for line in out.getvalue().splitlines()
        if json.loads(line)["inventory"]["integration"] == env.target.integration
        for r in json.loads(line)["inventory"].get("records", [])
    ]  # fmt: skip
    assert {"kind": "table", "name": hostile, "parent": DATABASE} in records
    assert {"kind": "database", "name": DATABASE} in records
    assert {"kind": "user", "name": ADMIN, "parent": "%"} in records
    text = out.getvalue()
    assert "ROW-VALUE-NOT-SENT" not in text and "secret_col" not in text
    assert env.target.admin_secret() not in text
