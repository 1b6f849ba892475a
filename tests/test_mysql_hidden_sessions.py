"""MySQL/MariaDB: sessions the process list hides or shares. A session running another
account's DEFINER trigger is listed under that account (the sweep ends it once it is back under
the revoked name); a member's name another account shares on another host cannot be told apart
there (such a grant is refused, and such a revoke ends nobody's sessions and says so); names are
compared byte for byte.

Everything made here is named `advm<run>_...` and dropped at the end."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pymysql
import pytest
from contract_mysql import HOST, PORT, admin_grants, root, run
from contract_targets import BOX_PUBLIC, ContractEnv, catalog_doc, make_env

RUN = secrets.token_hex(3)
PREFIX = f"advm{RUN}_"  # 11 characters: fits user_prefix
DATABASE = f"{PREFIX}db"
LEDGER = f"{PREFIX}ledger"
ADMIN = f"{PREFIX}admin"
OWNER = f"{PREFIX}owner"  # the company's application account, which defines the trigger
ADMIN_PASSWORD = f"CANARY-{secrets.token_hex(8)}"


class Target:
    """Just enough of the contract suite's target for `catalog_doc` and `make_env`."""

    kind = "mysql"
    integration = f"advm-{RUN}"

    def __init__(self) -> None:
        self.conn = root()

    def connection(self, **overrides: Any) -> dict[str, Any]:
        return {
            "host": HOST,
            "port": PORT,
            "user": ADMIN,
            "user_prefix": PREFIX,
            "ledger_database": LEDGER,
            "kill_wait_seconds": 2,
            "lock_wait_seconds": 3,
            **overrides,
        }

    def permissions(self) -> dict[str, dict[str, Any]]:
        return {"rw": {"template": "read-write", "resources": [DATABASE]}}

    def admin_secret(self) -> str:
        return ADMIN_PASSWORD

    def resource(self) -> str:
        return DATABASE

    def identity(self, index: int = 0) -> dict[str, Any]:
        return {"email": "mallory@example.com", "username": "mallory", "public_key": BOX_PUBLIC}


def _kill_sessions(conn: Any, user: str) -> None:
    for (thread,) in run(
        conn, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", user
    ):
        with contextlib.suppress(pymysql.Error):
            run(conn, f"KILL CONNECTION {int(thread)}")


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    try:
        target = Target()
    except pymysql.Error as exc:
        pytest.skip(f"MariaDB not reachable: {exc}")
    conn = target.conn
    run(conn, f"CREATE DATABASE `{DATABASE}`")
    run(conn, f"CREATE TABLE `{DATABASE}`.items (id INT PRIMARY KEY, name TEXT)")
    run(conn, f"CREATE TABLE `{DATABASE}`.audit (id INT PRIMARY KEY)")
    run(conn, f"INSERT INTO `{DATABASE}`.items VALUES (1, 'a'), (2, 'b')")
    run(conn, "CREATE USER %s@'%%' IDENTIFIED BY %s", ADMIN, ADMIN_PASSWORD)
    for text in admin_grants(DATABASE, LEDGER):
        run(conn, text.format(admin=f"'{ADMIN}'@'%'"))
    try:
        yield target
    finally:
        users = run(
            conn,
            "SELECT User, Host FROM mysql.global_priv WHERE User LIKE %s",
            PREFIX.replace("_", "\\_") + "%",
        )
        for user, host in users:
            if host == "":  # a role
                run(conn, f"DROP ROLE IF EXISTS `{user}`")
                continue
            _kill_sessions(conn, user)
            run(conn, "DROP USER IF EXISTS %s@%s", user, host)
        run(conn, f"DROP DATABASE IF EXISTS `{DATABASE}`")
        run(conn, f"DROP DATABASE IF EXISTS `{LEDGER}`")
        conn.close()


@pytest.fixture
def env(target: Target) -> ContractEnv:
    return make_env(target, catalog_doc(target))  # type: ignore[arg-type]


def _login(creds: dict[str, str]) -> Any:
    return pymysql.connect(
        host=creds["host"],
        port=int(creds["port"]),
        user=creds["username"],
        password=creds["password"],
        autocommit=True,
        connect_timeout=3,
    )


def _alive(conn: Any) -> bool:
    try:
        run(conn, "SELECT 1")
    except pymysql.Error:
        return False
    return True


@contextlib.contextmanager
def membership(target: Target, member: str, readers: str) -> Iterator[ContractEnv]:
    """An engine whose `analyst` permission hands out role `readers` (SELECT on the test
    database) to member accounts; the member `'<member>'@'%'` made here, and both dropped,
    the member's sessions ended, at the end."""
    conn = target.conn
    run(conn, "CREATE USER %s@'%%' IDENTIFIED BY 'member-pw'", member)
    run(conn, f"CREATE ROLE `{readers}`")
    run(conn, f"GRANT SELECT ON `{DATABASE.replace('_', chr(92) + '_')}`.* TO `{readers}`")
    run(conn, f"GRANT `{readers}` TO '{ADMIN}'@'%' WITH ADMIN OPTION")
    permissions = {"analyst": {"mode": "membership", "resources": [readers]}}
    try:
        yield make_env(target, catalog_doc(target, permissions=permissions))  # type: ignore[arg-type]
    finally:
        for (thread,) in run(
            conn,
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s AND COMMAND <> 'Daemon'",
            member,
        ):
            with contextlib.suppress(pymysql.Error):
                run(conn, f"KILL CONNECTION {int(thread)}")
        run(conn, "DROP USER IF EXISTS %s@'%%'", member)
        run(conn, f"DROP ROLE IF EXISTS `{readers}`")


@contextlib.contextmanager
def event_scheduler_on(conn: Any) -> Iterator[None]:
    before = run(conn, "SELECT @@GLOBAL.event_scheduler")[0][0]
    run(conn, "SET GLOBAL event_scheduler = ON")
    try:
        yield
    finally:
        run(conn, f"SET GLOBAL event_scheduler = {before}")


def _grant_to(env: ContractEnv, request_id: str, member: str, **fields: Any) -> Any:
    return env.engine.execute(
        env.request(
            request_id=request_id,
            permission="analyst",
            resources=[f"advm_{RUN}_readers"],
            identity={"email": "m@example.com", "username": member},
            **fields,
        )
    )


@pytest.mark.parametrize("namesake", ["other-host", "other-case", "other-host-later"])
def test_a_membership_revoke_ends_only_the_member_s_sessions_never_a_namesake_s(
    target: Target, namesake: str
) -> None:
    """Membership mode grants a role to `'<username>'@'<user_host>'`, and its revoke (and its
    expiry event) end the member's sessions, found in the process list by user name. That list
    compares without case and shows no account host: `'<USERNAME>'@'%'` is told apart byte for
    byte; `'<username>'@'127.0.0.1'` cannot be told apart at all, so a grant to a name another
    account shares is refused, and a revoke that finds one made since ends nobody's sessions
    and says so (not verified) until it is gone."""
    conn = target.conn
    member = f"advm_{RUN}_alice"
    other_user, other_host = {
        "other-host": (member, "127.0.0.1"),
        "other-host-later": (member, "127.0.0.1"),
        "other-case": (member.upper(), "%"),
    }[namesake]
    later = namesake == "other-host-later"

    def make_other() -> None:
        # A different account (a service, another person's) the grant never names.
        run(conn, "CREATE USER %s@%s IDENTIFIED BY 'other-pw'", other_user, other_host)

    request_id = f"adv-namesake-{namesake}"
    other = None
    with membership(target, member, f"advm_{RUN}_readers") as env:
        if not later:
            make_other()
        try:
            outcome = _grant_to(env, request_id, member)
            if namesake == "other-host":
                assert outcome.status == "refused" and outcome.field == "identity.username", outcome
                assert "share the name" in (outcome.message or "")
                return
            assert outcome.status == "granted", (outcome.field, outcome.message)
            if later:
                make_other()
            other = pymysql.connect(
                host="127.0.0.1", port=PORT, user=other_user, password="other-pw", autocommit=True
            )
            assert run(other, "SELECT CURRENT_USER()") == [(f"{other_user}@{other_host}",)]
            revoke = env.engine.execute(env.request("revoke", request_id=request_id))
            assert _alive(other), (
                f"the revoke of {member}@% killed the session of {other_user}@{other_host}, an "
                "account the grant never touched"
            )
            if later:
                assert revoke.status == "failed" and not revoke.verified, revoke
                assert any("share the name" in r for r in revoke.residual), revoke.residual
                other.close()
                other = None
                run(conn, "DROP USER %s@%s", other_user, other_host)
                revoke = env.engine.execute(env.request("revoke", request_id=request_id))
            assert revoke.status == "revoked" and revoke.verified, revoke
        finally:
            if other is not None:
                with contextlib.suppress(pymysql.Error):
                    other.close()
            run(conn, "DROP USER IF EXISTS %s@%s", other_user, other_host)


@pytest.mark.parametrize("namesake", ["other-case", "other-host-later", "member-dropped"])
def test_the_membership_expiry_event_ends_only_the_member_s_sessions(
    target: Target, namesake: str
) -> None:
    """The expiry event, run by the server with the connector down, drops the role and ends the
    member's sessions by the same rule as the revoke: byte for byte, and nobody's while another
    account on another host shares the member's name, the member's own account there or not."""
    conn = target.conn
    member = f"advm_{RUN}_bob"
    other_user, other_host = {
        "other-case": (member.upper(), "%"),
        "other-host-later": (member, "127.0.0.1"),
        "member-dropped": (member, "127.0.0.1"),
    }[namesake]
    later = namesake != "other-case"
    sessions: list[Any] = []
    with event_scheduler_on(conn), membership(target, member, f"advm_{RUN}_readers") as env:
        try:
            if not later:
                run(conn, "CREATE USER %s@%s IDENTIFIED BY 'other-pw'", other_user, other_host)
            outcome = _grant_to(env, f"adv-event-{namesake}", member, duration="2s")
            assert outcome.status == "granted", (outcome.field, outcome.message)
            # The member logs in before the namesake's account exists (afterwards, a login from
            # 127.0.0.1 would be the namesake's: the more specific host wins).
            member_session = pymysql.connect(
                host="127.0.0.1", port=PORT, user=member, password="member-pw", autocommit=True
            )
            sessions.append(member_session)
            if later:
                run(conn, "CREATE USER %s@%s IDENTIFIED BY 'other-pw'", other_user, other_host)
            if namesake == "member-dropped":
                # Only the namesake has the name now (the member's session lives on).
                run(conn, "DROP USER %s@'%%'", member)
            other = pymysql.connect(
                host="127.0.0.1", port=PORT, user=other_user, password="other-pw", autocommit=True
            )
            sessions.append(other)
            assert run(other, "SELECT CURRENT_USER()") == [(f"{other_user}@{other_host}",)]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and run(
                conn,
                "SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s "
                "AND EVENT_NAME LIKE %s",
                LEDGER,
                f"%{outcome.grant_id}%",
            ) != [(0,)]:
                time.sleep(0.1)
            time.sleep(0.3)
            assert _alive(other), f"the expiry event killed {other_user}@{other_host}"
            if namesake == "other-case":
                assert not _alive(member_session), "the member's session outlived the event"
            else:
                # Nobody's sessions are ended while the name is shared; the revoke says so.
                assert _alive(member_session)
                revoke = env.engine.execute(
                    env.request("revoke", request_id=f"adv-event-{namesake}")
                )
                assert revoke.status == "failed" and not revoke.verified, revoke
                assert any("share the name" in line for line in revoke.residual), revoke
        finally:
            for session in sessions:
                with contextlib.suppress(pymysql.Error):
                    session.close()
            run(conn, "DROP USER IF EXISTS %s@%s", other_user, other_host)


@dataclasses.dataclass
class Hidden:
    """A granted session whose INSERT waits inside another account's DEFINER trigger."""

    live: Any
    name: str
    grant_id: str
    release: Any


@contextlib.contextmanager
def hidden_in_a_trigger(target: Target, env: ContractEnv, request_id: str) -> Iterator[Hidden]:
    """The company's application account defines an ordinary audit trigger; another account
    (any with INSERT on the audit table) holds the row the trigger will write, so the
    grantee's INSERT waits inside the trigger, listed under the trigger's definer. `release`
    lets the trigger return; the session is then listed under the grantee's name again."""
    conn = target.conn
    row = 40 + sum(map(ord, request_id)) % 50
    run(conn, "CREATE USER %s@'%%' IDENTIFIED BY %s", OWNER, secrets.token_hex(8))
    run(conn, f"GRANT ALL ON `{DATABASE.replace('_', chr(92) + '_')}`.* TO '{OWNER}'@'%'")
    run(
        conn,
        f"CREATE DEFINER='{OWNER}'@'%' TRIGGER `{DATABASE}`.items_audit AFTER INSERT ON "
        f"`{DATABASE}`.items FOR EACH ROW INSERT INTO `{DATABASE}`.audit VALUES (NEW.id)",
    )
    outcome = env.engine.execute(env.request(permission="rw", request_id=request_id))
    assert outcome.status == "granted", outcome
    creds = env.credentials(outcome.sealed_credentials)
    live = _login(creds)
    run(live, f"USE `{DATABASE}`")
    # The grantee may wait as long as it likes.
    run(live, "SET SESSION innodb_lock_wait_timeout = 3600")
    holder = root()
    run(holder, "BEGIN")
    run(holder, f"INSERT INTO `{DATABASE}`.audit VALUES ({row})")

    def insert() -> None:
        with contextlib.suppress(pymysql.Error):  # ended by the sweep, or not
            run(live, f"INSERT INTO items VALUES ({row}, 'x')")

    worker = threading.Thread(target=insert)
    worker.start()
    released: list[bool] = []

    def release() -> None:
        if not released:
            released.append(True)
            with contextlib.suppress(pymysql.Error):
                run(holder, "ROLLBACK")
            worker.join(10)

    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            listed = run(
                conn,
                "SELECT USER FROM information_schema.PROCESSLIST WHERE INFO LIKE %s",
                f"%INSERT INTO `{DATABASE}`.audit VALUES%",
            )
            if any(user == OWNER for (user,) in listed):
                break
            time.sleep(0.05)
        yield Hidden(live, creds["username"], str(outcome.grant_id), release)
    finally:
        release()
        holder.close()
        with contextlib.suppress(pymysql.Error):
            live.close()
        run(conn, f"DROP TRIGGER IF EXISTS `{DATABASE}`.items_audit")
        run(conn, f"DELETE FROM `{DATABASE}`.items WHERE id = {row}")
        run(conn, f"DELETE FROM `{DATABASE}`.audit")
        run(conn, "DROP USER IF EXISTS %s@'%%'", OWNER)


def _reads(live: Any) -> Any:
    with contextlib.suppress(pymysql.Error):
        return run(live, "SELECT COUNT(*) FROM items")
    return None


def test_a_grantee_session_hidden_in_a_definer_trigger_is_ended_by_the_next_sweep(
    target: Target, env: ContractEnv
) -> None:
    """MariaDB lists a session running a trigger (or a stored function) whose DEFINER is
    another account under the definer's name, and shows no login user anywhere: the revoke
    cannot see it, drops the account and reports `revoked`, and the session goes on with the
    database privileges it cached with `USE`. Once the trigger returns, the session is listed
    under the dropped account's name again, and the sweep ends it and reports it."""
    with hidden_in_a_trigger(target, env, "hide-1") as hidden:
        revoke = env.engine.execute(env.request("revoke", request_id="hide-1"))
        assert revoke.status == "revoked", revoke
        hidden.release()
        report = env.engine.sweep()
        assert _reads(hidden.live) is None, "the grantee's session still reads after the sweep"
        assert any("outlived its revoke" in line for line in report.failed), report


def test_a_session_hidden_past_its_tombstone_is_still_ended_by_a_sweep(
    target: Target, env: ContractEnv
) -> None:
    """The grantee's statement may wait in the trigger until a sweep has forgotten the grant's
    tombstone (max_duration + 10 min + skew after the revoke): the sweep ends every session
    under a name of the connector's namespace that no account has, tombstone or not."""
    with hidden_in_a_trigger(target, env, "hide-2") as hidden:
        revoke = env.engine.execute(env.request("revoke", request_id="hide-2"))
        assert revoke.status == "revoked", revoke
        env.advance(timedelta(days=2))
        first = env.engine.sweep()
        assert hidden.grant_id in first.forgotten, first
        hidden.release()
        env.engine.sweep()
        assert _reads(hidden.live) is None, "the grantee's session still reads after the sweeps"


def test_a_namesake_made_after_the_revoke_does_not_hide_a_survivor_from_the_sweep(
    target: Target, env: ContractEnv
) -> None:
    """Anyone allowed CREATE USER (an account with no rights of its own) can make
    `'<dropped name>'@'<another host>'` while the grantee's session hides in the trigger. Once
    the session is back under the dropped name, the process list cannot tell it from that
    account's: the sweep does not end it, and says so (a failure naming it), as the membership
    revoke does in the same ambiguity."""
    conn = target.conn
    with hidden_in_a_trigger(target, env, "hide-3") as hidden:
        revoke = env.engine.execute(env.request("revoke", request_id="hide-3"))
        assert revoke.status == "revoked", revoke
        run(conn, "CREATE USER %s@'192.0.2.1' IDENTIFIED BY %s", hidden.name, secrets.token_hex(8))
        try:
            hidden.release()
            report = env.engine.sweep()
            assert any(hidden.name in line for line in report.failed), report
        finally:
            run(conn, "DROP USER IF EXISTS %s@'192.0.2.1'", hidden.name)


def test_a_member_named_like_the_event_scheduler_thread_is_revoked_and_verified(
    target: Target,
) -> None:
    """The event scheduler's own thread is listed under the user name `event_scheduler`, and
    cannot be killed: a member account of that name is revoked and verified, its sessions
    ended, and the server's thread left alone."""
    conn = target.conn
    member = "event_scheduler"
    with event_scheduler_on(conn), membership(target, member, f"advm_{RUN}_readers") as env:
        outcome = _grant_to(env, "adv-scheduler-name", member)
        assert outcome.status == "granted", (outcome.field, outcome.message)
        session = pymysql.connect(
            host="127.0.0.1", port=PORT, user=member, password="member-pw", autocommit=True
        )
        try:
            revoke = env.engine.execute(env.request("revoke", request_id="adv-scheduler-name"))
            assert revoke.status == "revoked" and revoke.verified, revoke
            assert not _alive(session)
            daemons = run(
                conn,
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE USER = 'event_scheduler' AND COMMAND = 'Daemon'",
            )
            assert daemons == [(1,)]
        finally:
            with contextlib.suppress(pymysql.Error):
                session.close()
