"""Admin connections kept across batches (jitc.templates.postgresql_pool), on the shared server."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from descriptors import FD_SETSIZE
from pgtest import INTEGRATION, LABEL_KEY, PG_DSN, catalog_doc

from jitc.catalog import parse_catalog
from jitc.labels import LabelKey
from jitc.secrets import Secret
from jitc.templates import postgresql_pool
from jitc.templates.postgresql import Connection, PostgreSQLTemplate

KEY = LabelKey.from_secret(LABEL_KEY)


def _connection(**extra: Any) -> Connection:
    doc = catalog_doc()
    settings = {**doc["integrations"][INTEGRATION]["connection"], **extra}
    doc["integrations"][INTEGRATION]["connection"] = settings
    connection = parse_catalog(doc).integrations[INTEGRATION].connection
    assert isinstance(connection, Connection)
    return connection


@pytest.fixture(autouse=True)
def _empty_pool() -> Any:
    postgresql_pool.close_all()
    yield
    postgresql_pool.close_all()


def test_a_later_batch_with_the_same_secret_gets_the_same_connection() -> None:
    template, connection = PostgreSQLTemplate(), _connection()
    first = template.open(INTEGRATION, connection, Secret("a"), KEY)
    pid = first.conn.info.backend_pid
    first.close()
    assert first._secret is None  # kept without the secret
    second = template.open(INTEGRATION, connection, Secret("a"), KEY)
    try:
        assert second.conn.info.backend_pid == pid
        assert second._secret is not None and second._secret.reveal() == "a"
    finally:
        second.close()


def test_another_secret_or_label_key_or_setting_gets_a_new_connection() -> None:
    template, connection = PostgreSQLTemplate(), _connection()
    first = template.open(INTEGRATION, connection, Secret("a"), KEY)
    pid = first.conn.info.backend_pid
    first.close()
    others = [
        (connection, Secret("rotated"), KEY),
        (connection, Secret("a"), LabelKey.from_secret(LABEL_KEY + "x")),
        (_connection(connect_timeout=7), Secret("a"), KEY),
    ]
    for settings, secret, key in others:
        session = template.open(INTEGRATION, settings, secret, key)
        try:
            assert session.conn.info.backend_pid != pid
        finally:
            session.conn.close()


def _terminate(pid: int) -> None:
    """The server ends a kept connection's backend, and it is gone before the test goes on."""
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(250):  # until the backend is gone (bounded)
            if not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).rowcount:
                break
            time.sleep(0.02)


def test_a_connection_the_server_ended_while_kept_is_replaced() -> None:
    template, connection = PostgreSQLTemplate(), _connection()
    first = template.open(INTEGRATION, connection, Secret("a"), KEY)
    pid = first.conn.info.backend_pid
    first.close()
    _terminate(pid)
    second = template.open(INTEGRATION, connection, Secret("a"), KEY)
    try:
        assert second.conn.info.backend_pid != pid
        assert second.active_grants() is not None
    finally:
        second.close()


def test_kept_connections_numbered_above_what_select_can_watch_are_checked_and_reused(
    high_descriptors: None,
) -> None:
    template, connection = PostgreSQLTemplate(), _connection()
    first = template.open(INTEGRATION, connection, Secret("a"), KEY)
    assert first.conn.fileno() >= FD_SETSIZE
    pid = first.conn.info.backend_pid
    first.close()
    second = template.open(INTEGRATION, connection, Secret("a"), KEY)
    assert second.conn.info.backend_pid == pid  # healthy, so kept and handed out again
    second.close()
    _terminate(pid)
    third = template.open(INTEGRATION, connection, Secret("a"), KEY)
    try:
        assert third.conn.info.backend_pid != pid  # the ended one is seen, and replaced
    finally:
        third.close()


def test_a_session_left_in_a_transaction_is_closed_not_kept() -> None:
    template, connection = PostgreSQLTemplate(), _connection()
    first = template.open(INTEGRATION, connection, Secret("a"), KEY)
    first.conn.execute("BEGIN")
    first.close()
    assert first.conn.closed


def test_zero_keeps_nothing() -> None:
    template, connection = PostgreSQLTemplate(), _connection(keep_connection_seconds=0)
    first = template.open(INTEGRATION, connection, Secret("a"), KEY)
    first.close()
    assert first.conn.closed


def test_a_session_the_engine_discards_after_a_failure_is_closed_not_kept() -> None:
    """A batch forgets a session whose step failed: its state is unknown, so it is closed, never
    kept for a later batch (nor taken by another thread while the sweep still holds it)."""
    from jitc.engine import _Batch
    from jitc.secrets import EnvSecretStore, SecretStores

    catalog = parse_catalog(catalog_doc())
    integration = catalog.integrations[INTEGRATION]
    store = SecretStores({"mem": EnvSecretStore({"admin": "", "label": LABEL_KEY})})
    batch = _Batch(store, catalog.connector.label_key_ref)
    session: Any = batch.session(integration)
    assert session.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    batch.discard(integration)
    assert session.conn.closed
    assert len(postgresql_pool.POOL) == 0


def test_a_kept_connection_is_closed_once_idle_past_its_limit_with_no_later_batch() -> None:
    template, connection = PostgreSQLTemplate(), _connection(keep_connection_seconds=0.3)
    session = template.open(INTEGRATION, connection, Secret("a"), KEY)
    session.close()
    assert len(postgresql_pool.POOL) == 1
    assert session._key is None  # kept without the label key either
    for _ in range(200):  # bounded: the pool's timer closes it soon after 0.3 s
        if session.conn.closed:
            break
        time.sleep(0.02)
    assert session.conn.closed
    assert len(postgresql_pool.POOL) == 0
