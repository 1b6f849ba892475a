"""The MySQL/MariaDB template in the contract suite.

JITC_TEST_MYSQL_HOST / _PORT / _USER / _PASSWORD   the server's root-like account (default
127.0.0.1:3306, root, empty password). The suite itself runs as a least-privilege admin account
it creates with those, holding only what the README lists for the connector's admin.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from typing import Any

import pymysql
from contract_targets import BOX_PUBLIC, RUN, forged_label

from jitc.models import Outcome

HOST = os.environ.get("JITC_TEST_MYSQL_HOST", "127.0.0.1")
PORT = int(os.environ.get("JITC_TEST_MYSQL_PORT", "3306"))
ROOT = os.environ.get("JITC_TEST_MYSQL_USER", "root")
ROOT_PASSWORD = os.environ.get("JITC_TEST_MYSQL_PASSWORD", "")

PREFIX = f"c{RUN}_"
DATABASE = f"jc{RUN}_db"
LEDGER = f"jc{RUN}_ledger"
ADMIN = f"{PREFIX}admin"
# Shared by every MySQLTarget of the run, and a canary: it must never show up in any output.
ADMIN_PASSWORD = f"CANARY-{secrets.token_hex(8)}"


def root() -> pymysql.connections.Connection[Any]:
    return pymysql.connect(
        host=HOST, port=PORT, user=ROOT, password=ROOT_PASSWORD, autocommit=True, connect_timeout=3
    )


def run(conn: pymysql.connections.Connection[Any], statement: str, *args: Any) -> list[Any]:
    with conn.cursor() as cursor:
        cursor.execute(statement, args or None)
        return list(cursor.fetchall())


def drop_run(conn: pymysql.connections.Connection[Any], prefix: str, *databases: str) -> None:
    """Every account under `prefix` (its sessions killed first, so none outlives the run) and
    `databases`."""
    for user, host in run(
        conn,
        "SELECT User, Host FROM mysql.user WHERE User LIKE %s",
        prefix.replace("_", "\\_") + "%",
    ):
        for (thread,) in run(
            conn, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", user
        ):
            with contextlib.suppress(pymysql.Error):
                run(conn, f"KILL CONNECTION {int(thread)}")
        run(conn, "DROP USER IF EXISTS %s@%s", user, host)
    for database in databases:
        run(conn, f"DROP DATABASE IF EXISTS `{database}`")


def _elsewhere(name: str) -> bool:
    """Made by another run, a benchmark or the example catalog on the same server: those come
    and go while a test runs, and are none of its business."""
    if name.startswith((PREFIX, f"d{RUN}_", f"jc{RUN}_")):
        return False
    return bool(re.match(r"^(j?c[0-9a-f]{6}_|d[0-9a-f]{6}_|jit_|benchm_|jitc_ledger$)", name))


def escaped(database: str) -> str:
    return database.replace("_", "\\_")


def admin_grants(database: str, ledger: str) -> list[str]:
    """What the connector's admin account needs, and nothing more."""
    return [
        "GRANT CREATE USER, PROCESS, CONNECTION ADMIN, SHOW DATABASES ON *.* TO {admin}",
        "GRANT SELECT ON mysql.* TO {admin}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE, SHOW VIEW ON `{escaped(database)}`.* "
        "TO {admin} WITH GRANT OPTION",
        f"GRANT ALL PRIVILEGES ON `{escaped(ledger)}`.* TO {{admin}}",
    ]


class MySQLTarget:
    kind = "mysql"
    integration = f"mysql-{RUN}"

    generates_secrets = True

    def identity(self, index: int = 0) -> dict[str, Any]:
        return {"email": "alice@example.com", "username": "alice", "public_key": BOX_PUBLIC}

    def holder(self, outcome: Outcome, credentials: dict[str, str] | None) -> Any:
        assert credentials is not None and credentials["username"] == outcome.principal
        return credentials

    def made(self, outcome: Outcome) -> str:
        return str(outcome.principal)

    def broken_connection(self) -> dict[str, Any] | None:
        return self.connection(port=1)

    def __init__(self) -> None:
        self.password = ADMIN_PASSWORD
        self.foreign: set[str] = set()
        self._root: pymysql.connections.Connection[Any] | None = None

    @property
    def admin(self) -> pymysql.connections.Connection[Any]:
        if self._root is None or not self._root.open:
            self._root = root()
        return self._root

    def reach(self) -> None:
        try:
            conn = self.admin
        except pymysql.Error as exc:
            raise RuntimeError(
                f"MariaDB/MySQL is not reachable at {HOST}:{PORT} as {ROOT} ({exc}); set "
                "JITC_TEST_MYSQL_HOST/_PORT/_USER/_PASSWORD"
            ) from None
        run(conn, f"CREATE DATABASE IF NOT EXISTS `{DATABASE}`")
        run(conn, f"CREATE TABLE IF NOT EXISTS `{DATABASE}`.items (id INT PRIMARY KEY, name TEXT)")
        run(conn, f"INSERT IGNORE INTO `{DATABASE}`.items VALUES (1, 'a'), (2, 'b')")
        run(conn, "CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", ADMIN, self.password)
        for text in admin_grants(DATABASE, LEDGER):
            run(conn, text.format(admin=f"'{ADMIN}'@'%'"))

    def cleanup(self) -> None:
        conn = self.admin
        drop_run(conn, PREFIX, LEDGER, DATABASE)
        conn.close()

    def reset(self) -> None:
        """Between tests: drop the grants this run made, keep the admin, the data and the
        ledger's tables (emptied)."""
        conn = self.admin
        self.foreign.clear()
        for user, host in run(
            conn,
            "SELECT User, Host FROM mysql.user WHERE User LIKE %s AND User <> %s",
            PREFIX.replace("_", "\\_") + "%",
            ADMIN,
        ):
            for (thread,) in run(
                conn, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", user
            ):
                with contextlib.suppress(pymysql.Error):
                    run(conn, f"KILL CONNECTION {int(thread)}")
            run(conn, "DROP USER IF EXISTS %s@%s", user, host)
        if run(
            conn,
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'grants'",
            LEDGER,
        ):
            run(conn, f"DELETE FROM `{LEDGER}`.grants")
        for (event,) in run(
            conn, "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s", LEDGER
        ):
            run(conn, f"DROP EVENT IF EXISTS `{LEDGER}`.`{event}`")

    def admin_secret(self) -> str:
        return self.password

    def connection(self, **overrides: Any) -> dict[str, Any]:
        return {
            "host": HOST,
            "port": PORT,
            "user": ADMIN,
            "user_prefix": PREFIX,
            "ledger_database": LEDGER,
            **overrides,
        }

    def renamed(self) -> dict[str, Any]:
        return {"user_prefix": f"{PREFIX}z", "user_host": "127.0.0.1"}

    def permissions(self) -> dict[str, dict[str, Any]]:
        return {
            "allowed": {"template": "read-only", "resources": [DATABASE]},
            "custom": {
                "statements": ["GRANT SELECT ON {object} TO {user}"],
                "resources": [DATABASE],
            },
        }

    def resource(self) -> str:
        return DATABASE

    def hostile_resources(self) -> list[str]:
        return [
            "x`; DROP DATABASE test; --",
            "a'b",
            "mysql",
            "information_schema.tables",
            "db.t.c",
            "a%b",
            "*",
        ]

    def login(self, credentials: dict[str, str]) -> pymysql.connections.Connection[Any]:
        return pymysql.connect(
            host=credentials["host"],
            port=int(credentials["port"]),
            user=credentials["username"],
            password=credentials["password"],
            autocommit=True,
            connect_timeout=3,
        )

    def allowed(self, live: pymysql.connections.Connection[Any]) -> None:
        rows = run(live, f"SELECT min(id) FROM `{DATABASE}`.items")
        assert rows == [(1,)]

    def denied(self, live: pymysql.connections.Connection[Any]) -> bool:
        try:
            run(live, f"INSERT INTO `{DATABASE}`.items VALUES (99, 'x')")
        except pymysql.err.OperationalError as exc:
            return exc.args[0] == 1142  # INSERT command denied
        return False

    def alive(self, live: pymysql.connections.Connection[Any]) -> bool:
        try:
            run(live, "SELECT 1")
        except pymysql.Error:
            return False
        return True

    def close(self, live: pymysql.connections.Connection[Any]) -> None:
        with contextlib.suppress(pymysql.Error):
            live.close()

    def principals(self) -> set[str]:
        rows = run(
            self.admin,
            "SELECT User FROM mysql.user WHERE User LIKE %s AND User <> %s",
            PREFIX.replace("_", "\\_") + "%",
            ADMIN,
        )
        return {str(row[0]) for row in rows}

    def snapshot(self) -> Any:
        ours = set()
        if run(
            self.admin,
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'grants'",
            LEDGER,
        ):
            ours = {row[0] for row in run(self.admin, f"SELECT name FROM `{LEDGER}`.grants")}
            ours -= self.foreign
        users = run(
            self.admin, "SELECT User, Host, Priv FROM mysql.global_priv ORDER BY User, Host"
        )
        db = run(self.admin, "SELECT * FROM mysql.db ORDER BY User, Host, Db")
        tables = run(
            self.admin,
            "SELECT User, Host, Db, Table_name, Table_priv FROM mysql.tables_priv ORDER BY 1, 2, 3, 4",
        )
        databases = [row[0] for row in run(self.admin, "SHOW DATABASES")]
        return (
            [u for u in users if u[0] not in ours and not _elsewhere(u[0])],
            [d for d in db if d[2] not in ours and not _elsewhere(d[2])],
            [t for t in tables if t[0] not in ours and not _elsewhere(t[0])],
            [d for d in databases if not _elsewhere(d)],
        )

    def make_foreign(self, name: str) -> None:
        run(self.admin, "CREATE USER %s@'%%' IDENTIFIED BY 'foreign-pw'", name)
        self.foreign.add(name)

    def forge_label(self, name: str, grant_id: str, integration: str) -> None:
        run(
            self.admin,
            f"REPLACE INTO `{LEDGER}`.grants VALUES (%s, %s, %s, 'active', '2020-01-01', %s)",
            integration,
            grant_id,
            name,
            forged_label(grant_id, integration),
        )

    def planned_principal(self, statements: list[str]) -> str:
        return statements[0].split("'")[1]
