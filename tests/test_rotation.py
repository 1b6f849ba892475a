"""Rotation of the connector's own PostgreSQL admin password (`jitc rotate`, core/rotation.py),
on a private cluster that checks passwords (the shared server trusts loopback, so an old
password would still be let in there and nothing could be shown)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgtest import private_cluster
from psycopg import sql

from jitc.catalog import Catalog, parse_catalog
from jitc.engine import Engine
from jitc.errors import AuthenticationFailed, Refused
from jitc.local import MemorySink, NullScheduler
from jitc.messages import parse_request
from jitc.rotation import (
    PostgreSQLRotator,
    rotate_local,
    set_password,
    with_password,
)
from jitc.sealing import box_keypair
from jitc.secrets import (
    EnvSecretStore,
    FileSecretStore,
    Secret,
    SecretRef,
    SecretStores,
    pending_path,
)

SUPER = "super-pw-of-the-private-cluster"
FIRST = "first-admin-pw-0123456789"
LABEL = "label-key-for-the-rotation-tests"
ADMIN = "jitc_rot_admin"
BOX_PRIVATE, BOX_PUBLIC = box_keypair()


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    with private_cluster("scram-sha-256", SUPER) as params:
        with psycopg.connect(**params, password=SUPER, autocommit=True) as conn:
            # A superuser, as the PostgreSQL template's admin usually is (a revoke's DROP OWNED
            # needs the grantee's privileges); tests/aws/test_aws_rotation.py rotates a
            # CREATEROLE admin, tests/test_rotation_mysql.py a least-privilege MariaDB account.
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                    sql.Identifier(ADMIN), sql.Literal(FIRST)
                )
            )
            conn.execute(
                sql.SQL("GRANT CREATE ON DATABASE postgres TO {}").format(sql.Identifier(ADMIN))
            )
        yield params


@pytest.fixture
def secret_file(cluster: dict[str, Any], tmp_path: Path) -> Iterator[Path]:
    """The admin's password in a JSON file secret, reset to FIRST for each test."""
    with psycopg.connect(**cluster, password=SUPER, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(ADMIN), sql.Literal(FIRST))
        )
    path = tmp_path / "pg-admin.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps({"username": ADMIN, "password": FIRST, "note": "kept"}))
    yield path


def catalog(cluster: dict[str, Any], credentials: str) -> Catalog:
    return parse_catalog(
        {
            "connector": {"label_key": "mem:label"},
            "integrations": {
                "rot": {
                    "kind": "postgresql",
                    "connection": {**cluster, "user": ADMIN, "role_prefix": "rot_"},
                    "credentials": credentials,
                    "permissions": {
                        "read-only": {"template": "read-only", "resources": ["public"]}
                    },
                }
            },
        }
    )


def engine(cat: Catalog, env: dict[str, str] | None = None) -> tuple[Engine, MemorySink]:
    stores = SecretStores(
        {"file": FileSecretStore(), "mem": EnvSecretStore({"label": LABEL, **(env or {})})}
    )
    sink = MemorySink()
    return Engine(cat, stores, NullScheduler(), sink), sink


def request(request_id: str, action: str = "grant") -> Any:
    doc: dict[str, Any] = {"request_id": request_id, "action": action, "integration": "rot"}
    if action == "grant":
        doc.update(
            permission="read-only",
            resources=["public"],
            identity={"email": "a@example.com", "username": "a", "public_key": BOX_PUBLIC},
            duration="10m",
        )
    else:
        from jitc.models import derive_grant_id

        doc = {**doc, "grant_id": derive_grant_id("rot", request_id)}
    return parse_request(json.dumps(doc))


def login(cluster: dict[str, Any], password: str) -> bool:
    try:
        psycopg.connect(**{**cluster, "user": ADMIN}, password=password, connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


def current_password(path: Path) -> str:
    return str(json.loads(path.read_text())["password"])


def test_a_group_readable_secret_keeps_its_mode_and_its_pending_file_stays_private(
    cluster: dict[str, Any], secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pending file that is not 0600 is passed over by the engine's re-read and refused by the
    # next rotation: it keeps 0600 up to its rename, and the secret gets its own mode back after.
    secret_file.chmod(0o640)
    pending = Path(pending_path(str(secret_file)))
    at_rename: list[int] = []
    rename = os.replace

    def watched(src: Any, dst: Any) -> None:
        if Path(src) == pending:
            at_rename.append(stat.S_IMODE(pending.stat().st_mode))
        rename(src, dst)

    monkeypatch.setattr(os, "replace", watched)
    done = rotate_local(catalog(cluster, f"file:{secret_file}#password"), "rot")
    assert done.changed and at_rename == [0o600]
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o640
    assert login(cluster, current_password(secret_file))


def test_a_rotation_replaces_the_file_atomically_and_the_old_password_is_refused(
    cluster: dict[str, Any], secret_file: Path
) -> None:
    cat = catalog(cluster, f"file:{secret_file}#password")
    done = rotate_local(cat, "rot")
    new = current_password(secret_file)
    assert done.changed and done.old_refused and new != FIRST
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert json.loads(secret_file.read_text())["note"] == "kept"  # other fields stay
    assert not Path(pending_path(str(secret_file))).exists()
    assert login(cluster, new) and not login(cluster, FIRST)
    leftovers = [p.name for p in secret_file.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_grants_and_revokes_in_a_loop_never_fail_across_rotations(
    cluster: dict[str, Any], secret_file: Path
) -> None:
    cat = catalog(cluster, f"file:{secret_file}#password")
    failures: list[str] = []
    stop = threading.Event()
    operations = [0]

    def loop() -> None:
        eng, _ = engine(cat)
        n = 0
        while not stop.is_set() or n < 6:
            n += 1
            for action in ("grant", "revoke"):
                outcome = eng.execute(request(f"loop-{n}", action))
                operations[0] += 1
                if outcome.status not in ("granted", "revoked"):
                    failures.append(f"{action} {n}: {outcome.status} {outcome.message}")

    worker = threading.Thread(target=loop)
    worker.start()
    seen = [FIRST]
    try:
        for _ in range(4):
            rotate_local(cat, "rot")
            seen.append(current_password(secret_file))
    finally:
        stop.set()
        worker.join(timeout=120)
    assert failures == []
    assert operations[0] >= 12
    assert len(set(seen)) == 5
    assert [login(cluster, pw) for pw in seen] == [False] * 4 + [True]


def test_a_rotation_killed_after_setting_the_password_is_finished_by_the_next(
    cluster: dict[str, Any], secret_file: Path
) -> None:
    """The crash between set and finish: the target takes only the pending value, the file
    still holds the old one. The engine logs in with the pending value meanwhile, and the
    next rotation finishes without changing the password again."""
    cat = catalog(cluster, f"file:{secret_file}#password")
    integration = cat.integrations["rot"]
    pending = Path(pending_path(str(secret_file)))
    raw = secret_file.read_text()
    ref = SecretRef(f"file:{secret_file}#password")
    pending.write_text(with_password(ref, raw, "pending-pw-abcdefghijklmnop"))
    pending.chmod(0o600)
    rotator = PostgreSQLRotator()
    assert set_password(
        rotator, integration, Secret("pending-pw-abcdefghijklmnop"), [Secret(FIRST)]
    )
    # A replayed set step changes nothing: the target already takes the pending value.
    assert not set_password(rotator, integration, Secret("pending-pw-abcdefghijklmnop"), [])
    assert not login(cluster, FIRST)

    eng, sink = engine(cat)
    assert eng.execute(request("mid-1")).status == "granted"
    assert eng.execute(request("mid-1", "revoke")).status == "revoked"
    text = json.dumps([e.model_dump(mode="json") for e in sink.events])
    assert "pending-pw" not in text and FIRST not in text

    done = rotate_local(cat, "rot")
    assert not done.changed and done.old_refused
    assert current_password(secret_file) == "pending-pw-abcdefghijklmnop"
    assert not pending.exists()
    again = rotate_local(cat, "rot")  # a fresh rotation after the finished one
    assert again.changed and current_password(secret_file) != "pending-pw-abcdefghijklmnop"


def test_two_rotations_racing_leave_one_working_password(
    cluster: dict[str, Any], secret_file: Path
) -> None:
    cat = catalog(cluster, f"file:{secret_file}#password")
    errors: list[BaseException] = []

    def rotate() -> None:
        try:
            rotate_local(cat, "rot")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=rotate) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert login(cluster, current_password(secret_file))
    eng, _ = engine(cat)
    assert eng.execute(request("after-race")).status == "granted"


def test_a_refused_credential_is_retried_once_and_then_reported_without_it(
    cluster: dict[str, Any], secret_file: Path
) -> None:
    """Another process rotated and the file says so: one re-read. A credential the target
    refuses after the re-read fails the request, and the message names no password."""
    secret_file.write_text(json.dumps({"password": "WRONG-canary-value-123"}))
    cat = catalog(cluster, f"file:{secret_file}#password")
    eng, sink = engine(cat)
    outcome = eng.execute(request("wrong-1"))
    assert outcome.status == "failed" and "refused" in str(outcome.message)
    assert "WRONG-canary" not in json.dumps([e.model_dump(mode="json") for e in sink.events])
    with pytest.raises(AuthenticationFailed):
        PostgreSQLRotator().check(cat.integrations["rot"], Secret("WRONG-canary-value-123"))


def test_an_env_secret_is_refused_and_nothing_changes(cluster: dict[str, Any]) -> None:
    cat = catalog(cluster, "env:JITC_ROT_ADMIN")
    with pytest.raises(Refused) as caught:
        rotate_local(cat, "rot")
    assert caught.value.field == "integration" and "environment" in caught.value.message
    assert login(cluster, FIRST)


def test_jitc_rotate_on_the_command_line(
    cluster: dict[str, Any], secret_file: Path, tmp_path: Path
) -> None:
    doc = {
        "connector": {"label_key": f"file:{tmp_path / 'label'}"},
        "integrations": {
            "rot": {
                "kind": "postgresql",
                "connection": {**cluster, "user": ADMIN, "role_prefix": "rot_"},
                "credentials": f"file:{secret_file}#password",
                "permissions": {"read-only": {"template": "read-only", "resources": ["public"]}},
            }
        },
    }
    (tmp_path / "label").write_text(LABEL)
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc))
    run = subprocess.run(
        [sys.executable, "-m", "jitc.cli", "rotate", "rot", "--catalog", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report == {
        "integration": "rot",
        "reference": f"file:{secret_file}#password",
        "changed": True,
        "old_refused": True,
    }
    new = current_password(secret_file)
    assert new not in run.stdout + run.stderr and FIRST not in run.stdout + run.stderr
    assert login(cluster, new) and not login(cluster, FIRST)
    unknown = subprocess.run(
        [sys.executable, "-m", "jitc.cli", "rotate", "nope", "--catalog", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2 and json.loads(unknown.stdout)["field"] == "integration"


def test_a_pending_file_others_could_have_written_is_refused(
    cluster: dict[str, Any], secret_file: Path
) -> None:
    """Whoever can plant `<file>.pending` would choose the admin's next password: a pending file
    with group or other access is refused, and the engine does not try it either."""
    cat = catalog(cluster, f"file:{secret_file}#password")
    pending = Path(pending_path(str(secret_file)))
    pending.write_text(json.dumps({"password": "planted-by-a-neighbour-123"}))
    pending.chmod(0o644)
    with pytest.raises(Refused) as caught:
        rotate_local(cat, "rot")
    assert "0600" in caught.value.message
    assert login(cluster, FIRST) and not login(cluster, "planted-by-a-neighbour-123")
    ref = SecretRef(f"file:{secret_file}#password")
    assert [s.reveal() for s in FileSecretStore().candidates(ref)] == [FIRST]
    pending.chmod(0o600)
    assert [s.reveal() for s in FileSecretStore().candidates(ref)][-1] == (
        "planted-by-a-neighbour-123"
    )


def test_a_secret_shared_by_two_admin_accounts_is_not_rotated(
    cluster: dict[str, Any], secret_file: Path
) -> None:
    # (Integrations on one account may share its secret: tests/test_adv13_rotation.py.)
    doc = {
        "connector": {"label_key": "mem:label"},
        "integrations": {
            name: {
                "kind": "postgresql",
                "connection": {**cluster, "user": user, "role_prefix": f"{name}_"},
                "credentials": f"file:{secret_file}#password",
                "permissions": {"read-only": {"template": "read-only", "resources": ["public"]}},
            }
            for name, user in (("one", ADMIN), ("two", f"{ADMIN}_other"))
        },
    }
    with pytest.raises(Refused) as caught:
        rotate_local(parse_catalog(doc), "one")
    assert "two" in caught.value.message
    assert login(cluster, FIRST) and current_password(secret_file) == FIRST


def test_a_revoke_refused_mid_way_by_a_rotation_runs_again_and_completes(
    cluster: dict[str, Any], secret_file: Path
) -> None:
    """What an in-flight batch holds: an open admin session (kept by the server through the
    change) and the old password, which the revoke needs again to drop what the grantee owns in
    another database. That login is refused; the engine reads the secret again and reruns the
    revoke, which completes: no failed operation."""
    with psycopg.connect(**cluster, password=SUPER, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS rot_other")
        conn.execute("CREATE DATABASE rot_other")
    cat = catalog(cluster, f"file:{secret_file}#password")
    eng, _ = engine(cat)
    granted = [eng.execute(request(f"mw-{n}")) for n in (1, 2)]
    assert [o.status for o in granted] == ["granted", "granted"]
    with psycopg.connect(
        **{**cluster, "dbname": "rot_other"}, password=SUPER, autocommit=True
    ) as other:
        other.execute("CREATE TABLE left_behind (id int)")
        other.execute(
            sql.SQL("ALTER TABLE left_behind OWNER TO {}").format(
                sql.Identifier(str(granted[1].principal))
            )
        )
    from jitc.messages import Work
    from jitc.models import utcnow

    asked = [0]

    def proceed() -> bool:
        asked[0] += 1
        if asked[0] == 3:  # before the second revoke: the session is open, the password old
            rotate_local(cat, "rot")
        return True

    items = [Work(request(f"mw-{n}", "revoke"), utcnow()) for n in (1, 2)]
    outcomes = eng.execute_batch(items, proceed=proceed)
    assert [(o.status, o.residual) for o in outcomes] == [("revoked", []), ("revoked", [])]
    assert asked[0] == 3 and not login(cluster, FIRST)
    with psycopg.connect(**cluster, password=SUPER, autocommit=True) as conn:
        conn.execute("DROP DATABASE rot_other")
