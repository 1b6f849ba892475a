"""Password and VALID UNTIL enforcement, on a private PostgreSQL cluster that checks passwords.

The machine's server trusts loopback, which would let any password (and an expired role) in,
so these tests start their own cluster with scram-sha-256 authentication from the same
PostgreSQL binaries (the system's, else the ones the `pgserver` package ships).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pgtest import private_cluster
from psycopg import sql

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.local import MemorySink, NullScheduler
from jitc.messages import parse_request
from jitc.sealing import box_keypair, unseal
from jitc.secrets import EnvSecretStore, SecretStores
from jitc.templates.postgresql_scram import scram_verifier

ADMIN_PASSWORD = "admin-pw-for-private-cluster"


@pytest.fixture(scope="module")
def scram_pg() -> Iterator[dict[str, Any]]:
    with private_cluster("scram-sha-256", ADMIN_PASSWORD) as params:
        yield params


@pytest.fixture
def scram_engine(scram_pg: dict[str, Any]) -> tuple[Engine, str, str]:
    private, public = box_keypair()
    catalog = parse_catalog(
        {
            "connector": {"label_key": "mem:label"},
            "integrations": {
                "scram": {
                    "kind": "postgresql",
                    "connection": {**scram_pg, "role_prefix": "s_"},
                    "credentials": "mem:admin",
                    "permissions": {
                        "read-only": {"template": "read-only", "resources": ["public"]}
                    },
                }
            },
        }
    )
    store = {"admin": ADMIN_PASSWORD, "label": "label-key-for-private-cluster"}
    secrets = SecretStores({"mem": EnvSecretStore(store)})
    return Engine(catalog, secrets, NullScheduler(), MemorySink()), private, public


def _grant(engine: Engine, public: str, request_id: str, duration: str) -> Any:
    return engine.execute(
        parse_request(
            json.dumps(
                {
                    "request_id": request_id,
                    "action": "grant",
                    "integration": "scram",
                    "permission": "read-only",
                    "resources": ["public"],
                    "identity": {"email": "a@example.com", "public_key": public},
                    "duration": duration,
                }
            )
        )
    )


def _login(pg: dict[str, Any], user: str, password: str) -> psycopg.Connection[Any]:
    return psycopg.connect(**{**pg, "user": user, "password": password}, connect_timeout=3)


def test_wrong_admin_secret_fails_without_leaking_it(scram_pg: dict[str, Any]) -> None:
    catalog = parse_catalog(
        {
            "connector": {"label_key": "mem:label"},
            "integrations": {
                "scram": {
                    "kind": "postgresql",
                    "connection": scram_pg,
                    "credentials": "mem:admin",
                    "permissions": {
                        "read-only": {"template": "read-only", "resources": ["public"]}
                    },
                }
            },
        }
    )
    wrong = "WRONG-canary-password"
    engine = Engine(
        catalog,
        SecretStores(
            {"mem": EnvSecretStore({"admin": wrong, "label": "label-key-for-private-cluster"})}
        ),
        NullScheduler(),
        MemorySink(),
    )
    outcome = _grant(engine, box_keypair()[1], "wrong-1", "5m")
    assert outcome.status == "failed" and wrong not in outcome.model_dump_json()


def test_generated_password_works_and_others_do_not(
    scram_engine: Any, scram_pg: dict[str, Any]
) -> None:
    engine, private, public = scram_engine
    creds = unseal(_grant(engine, public, "pw-1", "10m").sealed_credentials, private)
    _login(scram_pg, creds["username"], creds["password"]).close()
    with pytest.raises(psycopg.OperationalError):
        _login(scram_pg, creds["username"], creds["password"] + "x")


def test_a_replayed_grant_never_changes_the_live_password(
    scram_engine: Any, scram_pg: dict[str, Any]
) -> None:
    engine, private, public = scram_engine
    first = unseal(_grant(engine, public, "re-1", "10m").sealed_credentials, private)
    held = _login(scram_pg, first["username"], first["password"])
    replayed = unseal(_grant(engine, public, "re-1", "10m").sealed_credentials, private)
    assert replayed == first  # the same credentials again, so a replay locks nobody out
    _login(scram_pg, first["username"], first["password"]).close()
    assert held.execute("SELECT 1").fetchone() == (1,)
    held.close()


def test_in_process_verifier_matches_libpq_and_the_server_accepts_it(
    scram_pg: dict[str, Any],
) -> None:
    params = {**scram_pg, "password": ADMIN_PASSWORD}
    with psycopg.connect(**params, autocommit=True) as conn:
        theirs = conn.pgconn.encrypt_password(b"pw-Z9_x", b"u", b"scram-sha-256").decode()
        iterations, salt = theirs.split("$")[1].split(":")
        ours = scram_verifier("pw-Z9_x", int(iterations), base64.b64decode(salt))
        assert ours == theirs  # byte for byte, given libpq's salt and rounds
        conn.execute(
            sql.SQL("CREATE ROLE verifier_check LOGIN PASSWORD {}").format(
                sql.Literal(scram_verifier("one-round-pw"))
            )
        )
        try:
            _login(scram_pg, "verifier_check", "one-round-pw").close()
            with pytest.raises(psycopg.OperationalError):
                _login(scram_pg, "verifier_check", "one-round-px")
        finally:
            conn.execute("DROP ROLE verifier_check")


def test_valid_until_ends_access_with_the_connector_stopped(
    scram_engine: Any, scram_pg: dict[str, Any]
) -> None:
    engine, private, public = scram_engine
    outcome = _grant(engine, public, "vu-1", "3s")
    creds = unseal(outcome.sealed_credentials, private)
    _login(scram_pg, creds["username"], creds["password"]).close()
    del engine  # no revoke, no sweep: only the server's own clock is left
    time.sleep(max(0.0, (outcome.expires_at.timestamp() - time.time())) + 0.5)
    with pytest.raises(psycopg.OperationalError):
        _login(scram_pg, creds["username"], creds["password"])
