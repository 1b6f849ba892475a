"""Adversarial checks of the admin credential rotation: a rotation that says the old password
is refused must leave it working nowhere, and a step run out of order must never lock the
connector out. Shared servers, under names of this run's own."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis
from contract_mysql import HOST, PORT, root, run

from jitc.catalog import Catalog, parse_catalog
from jitc.errors import AuthenticationFailed, Refused
from jitc.rotation import RedisRotator, rotate_local
from jitc.secrets import FileSecretStore, SecretRef

RUN = secrets.token_hex(3)
PREFIX = f"a13{RUN}_"
ADMIN = f"{PREFIX}admin"
FIRST = f"first-{secrets.token_hex(8)}"
SOCKET = os.environ.get("JITC_TEST_MYSQL_SOCKET", "/run/mysqld/mysqld.sock")


@pytest.fixture
def two_host_admin() -> Iterator[Any]:
    """One admin name with two host entries and the same password, as operators often make
    (`'%'` for the network, `'localhost'` for the socket)."""
    conn = root()
    run(conn, "CREATE USER %s@'%%' IDENTIFIED BY %s", ADMIN, FIRST)
    run(conn, "CREATE USER %s@'localhost' IDENTIFIED BY %s", ADMIN, FIRST)
    run(conn, "GRANT SELECT ON mysql.* TO %s@'%%'", ADMIN)  # as the README asks of the admin
    yield conn
    for host in ("%", "localhost"):
        run(conn, "DROP USER IF EXISTS %s@%s", ADMIN, host)
    conn.close()


def _mysql_catalog(path: Path) -> Catalog:
    return parse_catalog(
        {
            "connector": {"label_key": "env:A13_UNUSED"},
            "integrations": {
                "rot": {
                    "kind": "mysql",
                    "connection": {
                        "host": HOST,
                        "port": PORT,
                        "user": ADMIN,
                        "user_prefix": PREFIX,
                        "ledger_database": f"{PREFIX}ledger",
                        "expiry_event": "off",
                    },
                    "credentials": f"file:{path}",
                    "permissions": {"r": {"template": "read-only", "resources": ["test"]}},
                }
            },
        }
    )


def _socket_login(password: str) -> bool:
    try:
        conn = pymysql.connect(unix_socket=SOCKET, user=ADMIN, password=password)
    except pymysql.err.OperationalError as exc:
        if exc.args[0] == 1045:  # access denied
            return False
        raise
    conn.close()
    return True


def test_an_admin_with_another_host_entry_is_refused_before_any_change(
    two_host_admin: Any, tmp_path: Path
) -> None:
    """Changed in one entry only, the old password would keep logging in through the other
    (here the socket's `localhost`) while `jitc rotate` reported it refused."""
    if not os.path.exists(SOCKET):
        pytest.skip(f"no MariaDB socket at {SOCKET}")
    path = _private(tmp_path / "admin", FIRST)
    assert _socket_login(FIRST)  # the second host entry takes the same password
    with pytest.raises(Refused, match="other host entries"):
        rotate_local(_mysql_catalog(path), "rot")
    assert _socket_login(FIRST) and _tcp_login(FIRST)  # nothing changed
    assert path.read_text() == FIRST


def _tcp_login(password: str) -> bool:
    try:
        pymysql.connect(host=HOST, port=PORT, user=ADMIN, password=password).close()
    except pymysql.err.OperationalError:
        return False
    return True


REDIS_HOST = os.environ.get("JITC_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("JITC_TEST_REDIS_PORT", "6379"))
REDIS_ADMIN = f"a13{RUN}-redisadmin"
REDIS_RULES = ("resetkeys", "resetchannels", "-@all", "+acl", "+client|kill")
REDIS_RULES += ("+client|setname", "+ping", "+info")


@pytest.fixture
def redis_admin() -> Iterator[redis.Redis]:
    root_client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, decode_responses=True)
    try:
        root_client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable: {exc}")
    command: Any = root_client.execute_command
    command("ACL", "SETUSER", REDIS_ADMIN, "reset", "on", f">{FIRST}", *REDIS_RULES)
    yield root_client
    command("ACL", "DELUSER", REDIS_ADMIN)
    root_client.close()


def _private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


def _redis_integration(prefix: str, path: Path) -> dict[str, Any]:
    return {
        "kind": "redis",
        "connection": {
            "host": REDIS_HOST,
            "port": REDIS_PORT,
            "tls": False,
            "user": REDIS_ADMIN,
            "user_prefix": prefix,
            "acl_save": "never",
        },
        "credentials": f"file:{path}",
        "permissions": {"r": {"template": "read-only", "resources": [f"{prefix}*"]}},
    }


def _two_caches(first: Path, second: Path) -> Catalog:
    return parse_catalog(
        {
            "connector": {"label_key": "env:A13_UNUSED"},
            "integrations": {
                "cache-a": _redis_integration(f"a13{RUN}a-", first),
                "cache-b": _redis_integration(f"a13{RUN}b-", second),
            },
        }
    )


def _logs_in(cat: Catalog, name: str, path: Path) -> bool:
    """What the engine does: read the secret (again, after a refusal) and log in."""
    for candidate in FileSecretStore().candidates(SecretRef(f"file:{path}")):
        with contextlib.suppress(AuthenticationFailed):
            RedisRotator().check(cat.integrations[name], candidate)
            return True
    return False


def test_an_admin_account_another_secret_also_holds_is_refused_before_any_change(
    redis_admin: redis.Redis, tmp_path: Path
) -> None:
    """Two integrations on one Redis admin (one per key space), each with a secret file:
    rotated through one, the other's old password would be refused from then on."""
    first = _private(tmp_path / "a", FIRST)
    second = _private(tmp_path / "b", FIRST)
    cat = _two_caches(first, second)
    with pytest.raises(Refused, match="same admin account"):
        rotate_local(cat, "cache-a")
    assert _logs_in(cat, "cache-a", first) and _logs_in(cat, "cache-b", second)
    assert not Path(f"{first}.pending").exists()


def test_one_secret_for_one_admin_account_rotates_for_every_integration_on_it(
    redis_admin: redis.Redis, tmp_path: Path
) -> None:
    shared = _private(tmp_path / "admin", FIRST)
    cat = _two_caches(shared, shared)
    done = rotate_local(cat, "cache-a")
    assert done.changed and done.old_refused
    assert shared.read_text() != FIRST
    assert _logs_in(cat, "cache-a", shared) and _logs_in(cat, "cache-b", shared)


SERVICE_UID = 65534  # `nobody`: the account a service runs the connector as


def _service_reads(path: Path) -> bool:
    """Whether the connector, running as its own account, can still read its secret."""
    code = (
        "import os, sys\n"
        f"os.setgid({SERVICE_UID}); os.setgroups([]); os.setuid({SERVICE_UID})\n"
        "try:\n"
        f"    open({str(path)!r}, encoding='utf-8').read()\n"
        "except PermissionError:\n"
        "    sys.exit(3)\n"
    )
    done = subprocess.run(["/usr/bin/python3", "-I", "-c", code], check=False, timeout=60)
    assert done.returncode in (0, 3), done
    return done.returncode == 0


def test_a_rotation_run_by_an_operator_leaves_the_secret_readable_by_the_connector(
    redis_admin: redis.Redis,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to play the operator and the service account")
    folder = Path(tempfile.mkdtemp(prefix="a13-"))
    try:
        folder.chmod(0o755)
        path = _private(folder / "admin", FIRST)
        os.chown(path, SERVICE_UID, SERVICE_UID)  # the connector's own file, mode 0600
        assert _service_reads(path)
        cat = parse_catalog(
            {
                "connector": {"label_key": "env:A13_UNUSED"},
                "integrations": {"rot": _redis_integration(f"a13{RUN}r-", path)},
            }
        )
        done = rotate_local(cat, "rot")  # `sudo jitc rotate rot`
        assert done.changed and done.old_refused
        assert _service_reads(path), "the connector can no longer read its admin secret"
        info = path.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (
            SERVICE_UID,
            SERVICE_UID,
            0o600,
        )
        # A rotation stopped part way left the service's own pending file: the next finishes it.
        pending = _private(folder / "admin.pending", "resumed-" + secrets.token_hex(8))
        os.chown(pending, SERVICE_UID, SERVICE_UID)
        again = rotate_local(cat, "rot")
        assert again.changed and path.read_text().startswith("resumed-")
        assert _service_reads(path)
    finally:
        shutil.rmtree(folder)
