"""Fixtures on the real PostgreSQL; see pgtest.py for the variables that name it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import descriptors
import psycopg
import pytest
from pgtest import LABEL_KEY, PG_DSN, SCHEMA, Env, catalog_doc, drop_our_roles
from psycopg import sql

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.local import MemorySink, NullScheduler
from jitc.secrets import EnvSecretStore, SecretStores


def _reach_pg() -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.exit(
            f"PostgreSQL is not reachable at JITC_TEST_PG_DSN={PG_DSN!r} ({exc}). "
            "Start it or point JITC_TEST_PG_DSN at one.",
            returncode=3,
        )


def pytest_sessionstart(session: pytest.Session) -> None:
    """Before any test: a server that is not there stops the run at once, with what to set,
    instead of every test failing on its own connect timeout."""
    _reach_pg().close()


@pytest.fixture(scope="session")
def admin() -> Iterator[psycopg.Connection[Any]]:
    conn = _reach_pg()
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    conn.execute(
        sql.SQL("CREATE TABLE {}.items (id serial PRIMARY KEY, name text)").format(
            sql.Identifier(SCHEMA)
        )
    )
    conn.execute(
        sql.SQL("INSERT INTO {}.items (name) VALUES ('a'), ('b')").format(sql.Identifier(SCHEMA))
    )
    yield conn
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    drop_our_roles(conn)
    conn.close()


@pytest.fixture
def make_env(admin: psycopg.Connection[Any]) -> Iterator[Callable[..., Env]]:
    def make(doc: dict[str, Any] | None = None, secret: str = "") -> Env:
        catalog = parse_catalog(doc or catalog_doc())
        sink = MemorySink()
        now = [datetime.now(UTC)]
        engine = Engine(
            catalog,
            SecretStores({"mem": EnvSecretStore({"admin": secret, "label": LABEL_KEY})}),
            NullScheduler(),
            sink,
            clock=lambda: now[0],
        )
        return Env(catalog, engine, sink, admin, now)

    yield make
    drop_our_roles(admin)


@pytest.fixture
def env(make_env: Callable[..., Env]) -> Env:
    return make_env()


@pytest.fixture
def high_descriptors() -> Iterator[None]:
    with descriptors.above_select():
        yield
