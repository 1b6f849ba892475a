"""The PostgreSQL template in the contract suite, on the server named by JITC_TEST_PG_DSN."""

from __future__ import annotations

from typing import Any

import psycopg
from contract_targets import BOX_PUBLIC, RUN, forged_label
from pgtest import PG_DSN
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from jitc.models import Outcome

PREFIX = f"c{RUN}_"
SCHEMA = f"jc_{RUN}"
ITEMS = sql.SQL("{}.items").format(sql.Identifier(SCHEMA))


class PostgreSQLTarget:
    kind = "postgresql"
    integration = f"postgresql-{RUN}"

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
        self._admin: psycopg.Connection[Any] | None = None
        self.foreign: set[str] = set()

    @property
    def admin(self) -> psycopg.Connection[Any]:
        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
        return self._admin

    def reach(self) -> None:
        try:
            conn = self.admin
        except psycopg.OperationalError as exc:
            raise RuntimeError(
                f"PostgreSQL is not reachable at JITC_TEST_PG_DSN={PG_DSN!r} ({exc})"
            ) from None
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} (id int PRIMARY KEY, name text)").format(ITEMS)
        )
        conn.execute(
            sql.SQL("INSERT INTO {} VALUES (1, 'a'), (2, 'b') ON CONFLICT DO NOTHING").format(ITEMS)
        )

    def _drop_ours(self) -> None:
        conn = self.admin
        rows = conn.execute(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (PREFIX,)
        ).fetchall()
        for (name,) in sorted(rows):
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
            )
            with conn.transaction():
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))

    def reset(self) -> None:
        self.foreign.clear()
        self._drop_ours()

    def cleanup(self) -> None:
        self.admin.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA))
        )
        self._drop_ours()
        self.admin.close()

    def admin_secret(self) -> str:
        return "CANARY-pg-admin-secret-5c1e"  # trust auth ignores it; the driver still gets it

    def connection(self, **overrides: Any) -> dict[str, Any]:
        params = conninfo_to_dict(PG_DSN)
        return {
            "host": params.get("host", "127.0.0.1"),
            "port": int(params.get("port", 5432)),
            "dbname": params.get("dbname", "test"),
            "user": params.get("user", "postgres"),
            "role_prefix": PREFIX,
            **overrides,
        }

    def renamed(self) -> dict[str, Any]:
        return {"role_prefix": f"{PREFIX}z"}

    def permissions(self) -> dict[str, dict[str, Any]]:
        return {
            "allowed": {"template": "read-only", "resources": [SCHEMA]},
            "custom": {
                "statements": [
                    "GRANT USAGE ON SCHEMA {schema} TO {role}",
                    "GRANT SELECT ON {schema}.items TO {role}",
                ],
                "resources": [SCHEMA],
            },
        }

    def resource(self) -> str:
        return SCHEMA

    def hostile_resources(self) -> list[str]:
        return ['x"; DROP ROLE postgres; --', "a b", "public'; --", "a;b"]

    def login(self, credentials: dict[str, str]) -> psycopg.Connection[Any]:
        params = {**conninfo_to_dict(PG_DSN), "user": credentials["username"]}
        return psycopg.connect(
            **params, password=credentials["password"], autocommit=True, connect_timeout=3
        )

    def allowed(self, live: psycopg.Connection[Any]) -> None:
        assert live.execute(sql.SQL("SELECT min(id) FROM {}").format(ITEMS)).fetchone() == (1,)

    def denied(self, live: psycopg.Connection[Any]) -> bool:
        try:
            live.execute(sql.SQL("INSERT INTO {} VALUES (99, 'x')").format(ITEMS))
        except psycopg.errors.InsufficientPrivilege:
            return True
        return False

    def alive(self, live: psycopg.Connection[Any]) -> bool:
        try:
            live.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def close(self, live: psycopg.Connection[Any]) -> None:
        live.close()

    def principals(self) -> set[str]:
        # Not the privilege bundles the grants share, nor tombstones: the roles that are grants.
        rows = self.admin.execute(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s) "
            "AND NOT starts_with(rolname, %s) "
            "AND coalesce(shobj_description(oid, 'pg_authid'), '') NOT LIKE '%%\"tombstone\"%%'",
            (PREFIX, PREFIX + "b_"),
        ).fetchall()
        return {str(row[0]) for row in rows}

    def snapshot(self) -> Any:
        return self.admin.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolvaliduntil, "
            "shobj_description(oid, 'pg_authid'), ARRAY(SELECT roleid::regrole::text "
            "FROM pg_auth_members WHERE member = r.oid ORDER BY 1) FROM pg_roles r "
            # Other clients of a shared server make and drop roles all the time: this run's
            # names and the admin are what a grant here could have touched.
            "WHERE (starts_with(rolname, %s) OR rolname = current_user) "
            "AND (coalesce(shobj_description(oid, 'pg_authid'), '') NOT LIKE 'jitc:%%' "
            "OR rolname = ANY(%s)) ORDER BY 1",
            (PREFIX, sorted(self.foreign)),
        ).fetchall()

    def make_foreign(self, name: str) -> None:
        self.admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        self.foreign.add(name)

    def forge_label(self, name: str, grant_id: str, integration: str) -> None:
        self.admin.execute(
            sql.SQL("COMMENT ON ROLE {} IS {}").format(
                sql.Identifier(name), sql.Literal(forged_label(grant_id, integration))
            )
        )

    def planned_principal(self, statements: list[str]) -> str:
        return statements[0].split('"')[1]
