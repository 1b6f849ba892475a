"""Rotation of the connector's own MariaDB/MySQL admin password, on the shared server (which
checks passwords), under an admin account, database and ledger of this run's own."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from contract_mysql import HOST, PORT, admin_grants, drop_run, root, run
from userenv import grant_or_revoke, grant_revoke_loop

from jitc.catalog import Catalog, parse_catalog
from jitc.engine import Engine
from jitc.local import MemorySink, NullScheduler
from jitc.rotation import MySQLRotator, rotate_local, set_password
from jitc.secrets import EnvSecretStore, FileSecretStore, Secret, SecretStores

RUN = secrets.token_hex(3)
PREFIX = f"r{RUN}_"
ADMIN = f"{PREFIX}admin"
DATABASE = f"jr{RUN}_db"
LEDGER = f"jr{RUN}_ledger"
FIRST = f"first-{secrets.token_hex(8)}"
LABEL = "label-key-for-the-mysql-rotation-tests"


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    conn = root()
    run(conn, f"CREATE DATABASE `{DATABASE}`")
    run(conn, "CREATE USER %s@'%%' IDENTIFIED BY %s", ADMIN, FIRST)
    for text in admin_grants(DATABASE, LEDGER):
        run(conn, text.format(admin=f"'{ADMIN}'@'%'"))
    yield conn
    drop_run(conn, PREFIX, LEDGER, DATABASE)
    conn.close()


@pytest.fixture
def secret_file(server: Any, tmp_path: Path) -> Path:
    run(server, "ALTER USER %s@'%%' IDENTIFIED BY %s", ADMIN, FIRST)
    path = tmp_path / "mysql-admin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(FIRST)  # a whole-file secret: no field
    return path


def catalog(path: Path) -> Catalog:
    return parse_catalog(
        {
            "connector": {"label_key": "mem:label"},
            "integrations": {
                "rot": {
                    "kind": "mysql",
                    "connection": {
                        "host": HOST,
                        "port": PORT,
                        "user": ADMIN,
                        "user_prefix": PREFIX,
                        "ledger_database": LEDGER,
                        "expiry_event": "off",
                    },
                    "credentials": f"file:{path}",
                    "permissions": {
                        "read-only": {"template": "read-only", "resources": [DATABASE]}
                    },
                }
            },
        }
    )


request = grant_or_revoke("rot", "read-only", DATABASE)


def login(password: str) -> bool:
    try:
        pymysql.connect(
            host=HOST, port=PORT, user=ADMIN, password=password, connect_timeout=3
        ).close()
    except pymysql.Error:
        return False
    return True


def test_grants_and_revokes_in_a_loop_never_fail_across_rotations(secret_file: Path) -> None:
    cat = catalog(secret_file)
    sink = MemorySink()

    def engine() -> Engine:
        stores = SecretStores({"file": FileSecretStore(), "mem": EnvSecretStore({"label": LABEL})})
        return Engine(cat, stores, NullScheduler(), sink)

    seen = [FIRST]
    with grant_revoke_loop(engine, request, "m-") as loop:
        for _ in range(3):
            # Some grants and revokes between rotations: the engine reads the secret again once
            # per batch, so a batch spanning two rotations (back to back, on a loaded machine)
            # is refused again and retried by the queue. Rotations are hours apart in use.
            assert loop.wait_rounds(2)
            done = rotate_local(cat, "rot")
            assert done.changed and done.old_refused
            seen.append(secret_file.read_text().strip())
    assert loop.failures == []
    assert [login(pw) for pw in seen] == [False, False, False, True]
    text = json.dumps([e.model_dump(mode="json") for e in sink.events])
    assert not any(pw in text for pw in seen)


def test_a_replayed_set_step_changes_nothing(secret_file: Path) -> None:
    integration = catalog(secret_file).integrations["rot"]
    new = Secret(f"next-{secrets.token_hex(8)}")
    assert set_password(MySQLRotator(), integration, new, [Secret(FIRST)])
    assert not set_password(MySQLRotator(), integration, new, [Secret(FIRST)])
    assert login(new.reveal()) and not login(FIRST)
