"""Rotation of the connector's own Redis and RabbitMQ admin passwords, on the shared servers
(both check passwords), under admin users of this run's own (never `default` or `guest`), while
grants and revokes run; and on a private Redis with an ACL file, that a restart keeps it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
from test_redis_aclfile import Private
from userenv import grant_or_revoke, grant_revoke_loop

from jitc.catalog import Catalog, parse_catalog
from jitc.engine import Engine
from jitc.errors import Refused
from jitc.local import MemorySink, NullScheduler
from jitc.rotation import RabbitMQRotator, RedisRotator, rotate_local, set_password
from jitc.secrets import EnvSecretStore, FileSecretStore, Secret, SecretStores

RUN = secrets.token_hex(3)
REDIS_HOST = os.environ.get("JITC_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("JITC_TEST_REDIS_PORT", "6379"))
API = os.environ.get("JITC_TEST_RABBITMQ_API", "http://127.0.0.1:15672")
PREFIX = f"k{RUN}-"
REDIS_ADMIN = f"k{RUN}-redisadmin"  # not under PREFIX: the template never touches it
RABBIT_ADMIN = f"k{RUN}rabbitadmin"
VHOST = f"k{RUN}"
KEYS = f"k{RUN}:*"
FIRST = f"first-{secrets.token_hex(8)}"
LABEL = "label-key-for-the-kv-rotation-tests"
# What the README says the Redis admin needs; `on` and these must survive a rotation.
REDIS_RULES = ("resetkeys", "resetchannels", "-@all", "+acl", "+client|kill")
REDIS_RULES += ("+client|setname", "+ping", "+info")
RABBIT_TAGS = "administrator,monitoring"


def _redis_root() -> redis.Redis:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, decode_responses=True, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable: {exc}")
    return client


def _acl(client: redis.Redis, *args: str) -> Any:
    command: Any = client.execute_command
    return command("ACL", *args)


@pytest.fixture(scope="module")
def redis_root() -> Iterator[redis.Redis]:
    root = _redis_root()
    yield root
    for name in _acl(root, "USERS"):
        if name.startswith(PREFIX):
            _acl(root, "DELUSER", name)
    root.close()


@pytest.fixture(scope="module")
def rabbit_root() -> Iterator[httpx.Client]:
    client = httpx.Client(base_url=API, auth=("guest", "guest"), timeout=10)
    try:
        client.get("/api/overview").raise_for_status()
    except httpx.HTTPError as exc:
        pytest.skip(f"RabbitMQ management API is not reachable at {API}: {exc}")
    client.put(f"/api/vhosts/{VHOST}").raise_for_status()
    yield client
    for user in client.get("/api/users").json():
        if user["name"].startswith(PREFIX):
            client.delete(f"/api/users/{quote(user['name'], safe='')}")
    client.delete(f"/api/users/{RABBIT_ADMIN}")
    client.delete(f"/api/vhosts/{VHOST}")
    client.close()


def _secret_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps({"username": "x", "password": FIRST}))  # one field of a JSON object
    return path


@pytest.fixture
def redis_secret(redis_root: redis.Redis, tmp_path: Path) -> Iterator[Path]:
    _acl(redis_root, "SETUSER", REDIS_ADMIN, "reset", "on", f">{FIRST}", *REDIS_RULES)
    yield _secret_file(tmp_path, "redis-admin")
    _acl(redis_root, "DELUSER", REDIS_ADMIN)


@pytest.fixture
def rabbit_secret(rabbit_root: httpx.Client, tmp_path: Path) -> Path:
    rabbit_root.put(
        f"/api/users/{RABBIT_ADMIN}", json={"password": FIRST, "tags": RABBIT_TAGS}
    ).raise_for_status()
    rabbit_root.put(
        f"/api/permissions/{VHOST}/{RABBIT_ADMIN}",
        json={"configure": ".*", "write": ".*", "read": ".*"},
    ).raise_for_status()
    return _secret_file(tmp_path, "rabbit-admin")


def redis_catalog(
    path: Path, port: int = REDIS_PORT, acl_save: str = "never", user: str = REDIS_ADMIN
) -> Catalog:
    connection = {
        "host": REDIS_HOST,
        "port": port,
        "tls": False,
        "user": user,
        "user_prefix": PREFIX,
        "acl_save": acl_save,
    }
    permission = {"template": "read-only", "resources": [KEYS]}
    return _catalog("redis", connection, permission, path)


def rabbit_catalog(path: Path) -> Catalog:
    connection = {
        "api_url": API,
        "user": RABBIT_ADMIN,
        "user_prefix": PREFIX,
        "terminate_wait_seconds": 0,
    }
    permission = {"template": "read-only", "resources": [VHOST]}
    return _catalog("rabbitmq", connection, permission, path)


def _catalog(kind: str, connection: dict[str, Any], permission: Any, path: Path) -> Catalog:
    return parse_catalog(
        {
            "connector": {"label_key": "mem:label"},
            "integrations": {
                "rot": {
                    "kind": kind,
                    "connection": connection,
                    "credentials": f"file:{path}#password",
                    "permissions": {"read-only": permission},
                }
            },
        }
    )


def redis_login(password: str, port: int = REDIS_PORT) -> bool:
    client = redis.Redis(
        host=REDIS_HOST, port=port, username=REDIS_ADMIN, password=password, socket_timeout=5
    )
    try:
        client.ping()
    except redis.AuthenticationError:
        return False
    finally:
        client.close()
    return True


def rabbit_login(password: str) -> bool:
    status = httpx.get(f"{API}/api/whoami", auth=(RABBIT_ADMIN, password), timeout=10)
    assert status.status_code in (200, 401)
    return status.status_code == 200


def password_of(path: Path) -> str:
    value: str = json.loads(path.read_text())["password"]
    return value


def rotate_under_load(cat: Catalog, path: Path, resource: str) -> tuple[list[str], list[str]]:
    """Three rotations while one engine grants and revokes in a loop: its failures, and every
    password the admin had, oldest first."""
    sink = MemorySink()

    def engine() -> Engine:
        stores = SecretStores({"file": FileSecretStore(), "mem": EnvSecretStore({"label": LABEL})})
        return Engine(cat, stores, NullScheduler(), sink)

    request = grant_or_revoke("rot", "read-only", resource)
    seen = [FIRST]
    with grant_revoke_loop(engine, request, "m-") as loop:
        for _ in range(3):
            # Some grants and revokes between rotations: RabbitMQ checks the password on every
            # API call, and the engine re-reads the secret once per batch, so a batch spanning
            # two rotations would be refused again (and retried by the queue). Secrets Manager
            # rotates at most every four hours. Only rounds started after the last rotation count.
            assert loop.wait_rounds(2)
            done = rotate_local(cat, "rot")
            assert done.changed and done.old_refused
            seen.append(password_of(path))
    text = json.dumps([e.model_dump(mode="json") for e in sink.events])
    assert not any(pw in text for pw in seen)
    return loop.failures, seen


def _admin_rules(root: redis.Redis) -> dict[str, Any]:
    user = dict(_acl(root, "GETUSER", REDIS_ADMIN))
    user.pop("passwords")
    return user


def test_redis_grants_and_revokes_never_fail_across_rotations(
    redis_root: redis.Redis, redis_secret: Path
) -> None:
    before = _admin_rules(redis_root)
    failures, seen = rotate_under_load(redis_catalog(redis_secret), redis_secret, KEYS)
    assert failures == []
    assert [redis_login(pw) for pw in seen] == [False, False, False, True]
    assert _admin_rules(redis_root) == before  # `on` and every rule kept
    # Only the hash went to the server, and it is the only password left.
    (stored,) = _acl(redis_root, "GETUSER", REDIS_ADMIN)["passwords"]
    assert stored == __import__("hashlib").sha256(seen[-1].encode()).hexdigest()
    assert json.loads(redis_secret.read_text())["username"] == "x"  # other fields kept


def test_redis_without_an_acl_file_says_a_restart_reverts_it(redis_secret: Path) -> None:
    done = rotate_local(redis_catalog(redis_secret), "rot")
    assert done.note is not None and "restart" in done.note
    auto = rotate_local(redis_catalog(redis_secret, acl_save="auto"), "rot")
    assert auto.note is not None and "no ACL file" in auto.note


def test_redis_with_an_acl_file_keeps_the_new_password_across_a_restart(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed here")
    server = Private(tmp_path, True)
    server.start()
    try:
        _acl(server.client(), "SETUSER", REDIS_ADMIN, "on", f">{FIRST}", *REDIS_RULES)
        _acl(server.client(), "SAVE")
        path = _secret_file(tmp_path, "admin")
        done = rotate_local(redis_catalog(path, server.port, "auto"), "rot")
        assert done.note is None
        server.stop()
        server.start()  # the same ACL file
        assert redis_login(password_of(path), server.port)
        assert not redis_login(FIRST, server.port)
    finally:
        server.stop()


def test_redis_open_sessions_stay_logged_in(redis_secret: Path) -> None:
    held = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, username=REDIS_ADMIN, password=FIRST)
    held.ping()
    rotate_local(redis_catalog(redis_secret), "rot")
    assert held.ping()
    held.close()


def test_rabbitmq_grants_and_revokes_never_fail_across_rotations(
    rabbit_root: httpx.Client, rabbit_secret: Path
) -> None:
    failures, seen = rotate_under_load(rabbit_catalog(rabbit_secret), rabbit_secret, VHOST)
    assert failures == []
    assert [rabbit_login(pw) for pw in seen] == [False, False, False, True]
    user = rabbit_root.get(f"/api/users/{RABBIT_ADMIN}").json()
    assert sorted(user["tags"]) == sorted(RABBIT_TAGS.split(","))  # the PUT kept them
    assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_a_replayed_set_step_changes_nothing(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if kind == "redis":
        path = request.getfixturevalue("redis_secret")
        integration = redis_catalog(path).integrations["rot"]
        rotator: Any = RedisRotator()
        login: Callable[[str], bool] = redis_login
    else:
        path = request.getfixturevalue("rabbit_secret")
        integration = rabbit_catalog(path).integrations["rot"]
        rotator, login = RabbitMQRotator(), rabbit_login
    new = Secret(f"next-{secrets.token_hex(8)}")
    assert set_password(rotator, integration, new, [Secret(FIRST)])
    assert not set_password(rotator, integration, new, [Secret(FIRST)])
    assert login(new.reveal()) and not login(FIRST)


def test_the_redis_default_user_is_never_rotated(redis_root: redis.Redis, tmp_path: Path) -> None:
    path = _secret_file(tmp_path, "default")
    before = _acl(redis_root, "GETUSER", "default")
    with pytest.raises(Refused, match="default"):
        rotate_local(redis_catalog(path, user="default"), "rot")
    assert _acl(redis_root, "GETUSER", "default") == before
    assert not Path(f"{path}.pending").exists()
