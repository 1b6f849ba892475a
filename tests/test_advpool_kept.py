"""Adversarial tests against admin sessions kept across batches after the one-pool rework
(jitc.templates.kept, postgresql_pool, redis_session) and the engine's lean path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pgtest import private_cluster
from psycopg import sql

from jitc.catalog import Catalog, parse_catalog
from jitc.engine import _Batch
from jitc.errors import AuthenticationFailed
from jitc.secrets import EnvSecretStore, SecretStores
from jitc.templates import postgresql_pool

ADMIN_PASSWORD = "admin-pw-for-advpool-cluster"
CHANGED = "changed-on-the-server-alone"


@pytest.fixture(scope="module")
def scram_pg() -> Iterator[dict[str, Any]]:
    with private_cluster("scram-sha-256", ADMIN_PASSWORD) as params:
        yield params


@pytest.fixture(autouse=True)
def _empty_pool() -> Iterator[None]:
    postgresql_pool.close_all()
    yield
    postgresql_pool.close_all()


def _catalog(params: dict[str, Any]) -> Catalog:
    return parse_catalog(
        {
            "connector": {"label_key": "mem:label"},
            "integrations": {
                "scram": {
                    "kind": "postgresql",
                    "connection": {**params, "role_prefix": "ap_"},
                    "credentials": "mem:admin",
                    "permissions": {
                        "read-only": {"template": "read-only", "resources": ["public"]}
                    },
                }
            },
        }
    )


def _set_password(params: dict[str, Any], current: str, new: str) -> None:
    with psycopg.connect(**params, password=current, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE admin PASSWORD {}").format(sql.Literal(new)))


def test_a_refused_credential_is_not_rerun_on_another_kept_connection(
    scram_pg: dict[str, Any],
) -> None:
    catalog = _catalog(scram_pg)
    integration = catalog.integrations["scram"]
    store = SecretStores(
        {"mem": EnvSecretStore({"admin": ADMIN_PASSWORD, "label": "label-key-for-advpool-xx"})}
    )
    # Two batches at once (two `jitc serve` workers) leave two sessions kept under one key.
    first, second = (_Batch(store, catalog.connector.label_key_ref) for _ in range(2))
    one: Any = first.session(integration)
    two: Any = second.session(integration)
    assert one.conn.info.backend_pid != two.conn.info.backend_pid
    first.close()
    second.close()
    assert len(postgresql_pool.POOL) == 2
    # The operator changes the admin's password on the server (the store is not yet updated).
    _set_password(scram_pg, ADMIN_PASSWORD, CHANGED)
    try:
        batch = _Batch(store, catalog.connector.label_key_ref)
        session: Any = batch.session(integration)  # a kept one: no login, no refusal
        # A revoke opens a second connection (its blockers' watcher, another database): the
        # server refuses the credential there, and the session is marked refused.
        with pytest.raises(AuthenticationFailed):
            session._connect(scram_pg["dbname"])
        assert session.refused
        # What Engine._run does on AuthenticationFailed mid-operation: read the secret again and
        # rerun, which the code describes as logging in afresh.
        assert batch.reread(integration)
        # The server refuses this password now: the rerun must not get a connection.
        with pytest.raises(AuthenticationFailed):
            rerun: Any = batch.session(integration)
            rerun.conn.execute("SELECT 1")
        batch.close()
    finally:
        _set_password(scram_pg, CHANGED, ADMIN_PASSWORD)
