"""Password and VALID UNTIL enforcement, on a private PostgreSQL cluster that checks passwords.

The machine's server trusts loopback, which would let any password (and an expired role) in,
so these tests start their own cluster with scram-sha-256 authentication from the same
PostgreSQL binaries (the system's, else the ones the `pgserver` package ships).
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.local import MemorySink, NullScheduler
from jitc.messages import parse_request
from jitc.sealing import box_keypair, unseal
from jitc.secrets import EnvSecretStore, SecretStores

ADMIN_PASSWORD = "admin-pw-for-private-cluster"


def _bindir() -> Path:
    configured = os.environ.get("JITC_TEST_PG_BINDIR")
    candidates = [configured] if configured else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    try:
        from pgserver._commands import POSTGRES_BIN_PATH  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        return Path(POSTGRES_BIN_PATH)
    pytest.fail(
        "no PostgreSQL binaries: set JITC_TEST_PG_BINDIR or install the demo extra (pgserver)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def scram_pg() -> Iterator[dict[str, Any]]:
    bindir = _bindir()
    folder = Path(tempfile.mkdtemp(prefix="jitc-scram-"))
    data = folder / "data"
    run_as: list[str] = []
    (folder / "pw").write_text(ADMIN_PASSWORD)
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as an unprivileged account
        user = next(u for u in ("postgres", "pgserver", "nobody") if _has_user(u))
        shutil.chown(folder, user)
        shutil.chown(folder / "pw", user)
        run_as = ["runuser", "-u", user, "--"]
    subprocess.run(
        [
            *run_as,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "admin",
            "--auth=scram-sha-256",
            f"--pwfile={folder / 'pw'}",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    subprocess.run(
        [
            *run_as,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "log"),
            "-w",
            "-o",
            f"-h 127.0.0.1 -p {port} -k {folder}",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield {"host": "127.0.0.1", "port": port, "dbname": "postgres", "user": "admin"}
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def scram_engine(scram_pg: dict[str, Any]) -> tuple[Engine, str, str]:
    private, public = box_keypair()
    catalog = parse_catalog(
        {
            "integrations": {
                "scram": {
                    "kind": "postgresql",
                    "connection": {**scram_pg, "role_prefix": "s_"},
                    "credentials": "mem:admin",
                    "permissions": {
                        "read-only": {"template": "read-only", "resources": ["public"]}
                    },
                }
            }
        }
    )
    secrets = SecretStores({"mem": EnvSecretStore({"admin": ADMIN_PASSWORD})})
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
            "integrations": {
                "scram": {
                    "kind": "postgresql",
                    "connection": scram_pg,
                    "credentials": "mem:admin",
                    "permissions": {
                        "read-only": {"template": "read-only", "resources": ["public"]}
                    },
                }
            }
        }
    )
    wrong = "WRONG-canary-password"
    engine = Engine(
        catalog,
        SecretStores({"mem": EnvSecretStore({"admin": wrong})}),
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


def test_redelivery_reissues_and_retires_the_old_password(
    scram_engine: Any, scram_pg: dict[str, Any]
) -> None:
    engine, private, public = scram_engine
    old = unseal(_grant(engine, public, "re-1", "10m").sealed_credentials, private)
    new = unseal(_grant(engine, public, "re-1", "10m").sealed_credentials, private)
    assert old["username"] == new["username"] and old["password"] != new["password"]
    _login(scram_pg, new["username"], new["password"]).close()
    with pytest.raises(psycopg.OperationalError):
        _login(scram_pg, old["username"], old["password"])


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
