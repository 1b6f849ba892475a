"""Rotation of the connector's own admin credential for an integration (single-user strategy).

One admin account per integration keeps one password, changed in place: every role, event and
bundle the connector made stays owned and administered by the account that made it, and the
sessions a batch already holds stay logged in (a server checks a password only at login).
A batch that logs in between the change and the secret store's switch is refused once, reads
the secret again (the pending value included) and goes on: see `Engine` and `reread`.

The steps follow Secrets Manager's rotation contract, so the AWS function and `jitc rotate`
share them: make a pending value, set it in the target, log in with it, make it current.
Each step is safe to repeat and to resume after a crash: `set_password` first tries the pending
value, so a step that already ran changes nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets as random
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from jitc.catalog import Catalog, Integration
from jitc.errors import AuthenticationFailed, Refused, SecretError, TargetError
from jitc.secrets import (
    FileSecretStore,
    Secret,
    SecretRef,
    pending_path,
    pending_ref,
    pick_field,
)


def new_password() -> str:
    """256 random bits as base64url: printable ASCII that no driver or shell quotes."""
    return random.token_urlsafe(32)


def with_password(ref: SecretRef, current_raw: str, password: str) -> str:
    """The secret's text with the password replaced: the whole value, or one field of a JSON
    object (every other field is kept as it is)."""
    if ref.field is None:
        return password
    try:
        doc = json.loads(current_raw)
    except ValueError:
        raise SecretError(f"secret {ref} is not a JSON object, so it has no field") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(ref.field), str):
        raise SecretError(f"secret {ref} has no string field {ref.field!r}")
    return json.dumps({**doc, ref.field: password})


class Rotator(Protocol):
    """How one kind of target changes its admin's own password and checks a login."""

    def change(self, integration: Integration, current: Secret, new: Secret) -> None: ...

    def check(self, integration: Integration, secret: Secret) -> None: ...


class PostgreSQLRotator:
    """`ALTER ROLE CURRENT_USER PASSWORD '<SCRAM verifier>'`: a role may change its own password
    without CREATEROLE, and the verifier is computed here, so the clear password never reaches
    the server, its log or pg_stat_statements."""

    def _connect(self, integration: Integration, secret: Secret) -> Any:
        from jitc.templates.postgresql import Connection
        from jitc.templates.postgresql_session import admin_connect

        settings = integration.connection
        assert isinstance(settings, Connection)
        return admin_connect(settings, settings.dbname, secret)

    def change(self, integration: Integration, current: Secret, new: Secret) -> None:
        import psycopg
        from psycopg import sql

        from jitc.templates.postgresql_scram import scram_verifier

        statement = sql.SQL("ALTER ROLE CURRENT_USER PASSWORD {}").format(
            sql.Literal(scram_verifier(new.reveal(), 4096))
        )
        with self._connect(integration, current) as conn:
            try:
                conn.execute(statement)
            except psycopg.Error as exc:
                raise TargetError(
                    f"changing the admin password failed: {type(exc).__name__}"
                ) from None

    def check(self, integration: Integration, secret: Secret) -> None:
        import psycopg

        with self._connect(integration, secret) as conn:
            try:
                row = conn.execute("SELECT pg_catalog.current_user()::pg_catalog.text").fetchone()
            except psycopg.Error as exc:
                raise TargetError(
                    f"checking the admin login failed: {type(exc).__name__}"
                ) from None
        if row is None or row[0] != getattr(integration.connection, "user", None):
            raise TargetError("the login did not land on the catalog's admin role")


class MySQLRotator:
    """The admin account changes its own password to a hash computed here, so the clear password
    never reaches the server or its logs. MariaDB: `SET PASSWORD = '<hash>'` (its `ALTER USER
    CURRENT_USER() ... AS` answers OK and changes nothing, on 10.11); MySQL: `ALTER USER
    CURRENT_USER() IDENTIFIED WITH mysql_native_password AS '<hash>'` (its `SET PASSWORD` takes
    the text as a clear password). The test step proves the change either way."""

    def _connect(self, integration: Integration, secret: Secret) -> Any:
        from jitc.templates.mysql import Connection
        from jitc.templates.mysql_session import admin_connect

        assert isinstance(integration.connection, Connection)
        return admin_connect(integration.connection, secret)

    def change(self, integration: Integration, current: Secret, new: Secret) -> None:
        import pymysql

        from jitc.templates.mysql import literal
        from jitc.templates.mysql_session import native_password_hash

        stored = literal(native_password_hash(new.reveal()))  # a hex digest, driver-quoted
        user = str(getattr(integration.connection, "user", ""))
        conn = self._connect(integration, current)
        try:
            with conn.cursor() as cursor:
                # A password belongs to one host entry (user@host): another entry of the name,
                # often given the same password, would keep taking the old one after this.
                cursor.execute(
                    "SELECT COUNT(*) FROM mysql.user WHERE User = %s "
                    "AND Host <> SUBSTRING_INDEX(CURRENT_USER(), '@', -1)",
                    (user,),
                )
                others = cursor.fetchone()
                if others is not None and int(others[0]) > 0:
                    raise Refused(
                        "integration",
                        f"{integration.name}: the admin account {user!r} has other host "
                        "entries, which would keep their passwords; rotate an account with "
                        "one host entry",
                    )
                cursor.execute("SELECT VERSION()")
                row = cursor.fetchone()
                if row is not None and "mariadb" in str(row[0]).lower():
                    cursor.execute("SET PASSWORD = " + stored)
                else:
                    cursor.execute(
                        "ALTER USER CURRENT_USER() IDENTIFIED WITH mysql_native_password AS "
                        + stored
                    )
        except pymysql.Error as exc:
            raise TargetError(f"changing the admin password failed: {type(exc).__name__}") from None
        finally:
            conn.close()

    def check(self, integration: Integration, secret: Secret) -> None:
        import pymysql

        conn = self._connect(integration, secret)
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)")
                row = cursor.fetchone()
        except pymysql.Error as exc:
            raise TargetError(f"checking the admin login failed: {type(exc).__name__}") from None
        finally:
            conn.close()
        if row is None or row[0] != getattr(integration.connection, "user", None):
            raise TargetError("the login did not land on the catalog's admin account")


class RedisRotator:
    """`ACL SETUSER <admin> resetpass #<sha256>`: the admin user (which holds +acl) changes its
    own passwords to the one hash computed here, so the clear password never reaches the server
    or its slow log; `on` and every rule stay as they are. Connections already logged in stay so
    (Redis checks a password only at AUTH). Without an ACL file the change lives in memory only:
    see `persist`."""

    def _client(self, integration: Integration, secret: Secret) -> Any:
        from jitc.templates.redis import Connection
        from jitc.templates.redis_session import admin_client

        assert isinstance(integration.connection, Connection)
        return admin_client(integration.connection, secret)

    def _run(self, integration: Integration, secret: Secret, *command: str) -> Any:
        import redis

        client = self._client(integration, secret)
        try:
            return client.execute_command(*command)
        except redis.AuthenticationError:
            raise AuthenticationFailed(
                f"{integration.name}: the admin credential was refused"
            ) from None
        except redis.RedisError as exc:
            raise TargetError(
                f"Redis {' '.join(command[:2])} failed: {type(exc).__name__}"
            ) from None
        finally:
            client.close()

    def change(self, integration: Integration, current: Secret, new: Secret) -> None:
        import hashlib

        digest = hashlib.sha256(new.reveal().encode()).hexdigest()
        user = str(getattr(integration.connection, "user", ""))
        self._run(integration, current, "ACL", "SETUSER", user, "resetpass", f"#{digest}")

    def check(self, integration: Integration, secret: Secret) -> None:
        whoami = self._run(integration, secret, "ACL", "WHOAMI")
        if whoami != getattr(integration.connection, "user", None):
            raise TargetError("the login did not land on the catalog's admin user")

    def persist(self, integration: Integration, secret: Secret) -> str | None:
        """`ACL SAVE` as the template does (`acl_save`), so a restart keeps the new password;
        run after every set step, a replayed one too, so a crash between the change and the save
        is repaired. A note when the server cannot keep it."""
        import redis

        from jitc.templates.redis import Connection
        from jitc.templates.redis_session import _NO_ACLFILE

        settings = integration.connection
        assert isinstance(settings, Connection)
        revert = (
            "a restart of the Redis server would bring the old admin password back: it has no "
            "ACL file"
        )
        if settings.acl_save == "never":
            return (
                "acl_save is never, so the new admin password is not saved: a restart of the "
                "Redis server may bring the old one back"
            )
        client = self._client(integration, secret)
        try:
            client.execute_command("ACL", "SAVE")
        except redis.ResponseError as exc:
            if settings.acl_save == "auto" and _NO_ACLFILE in str(exc):
                return revert
            raise TargetError("Redis ACL SAVE failed: the new password is not saved") from None
        except redis.AuthenticationError:
            raise AuthenticationFailed(
                f"{integration.name}: the admin credential was refused"
            ) from None
        except redis.RedisError as exc:
            raise TargetError(f"Redis ACL SAVE failed: {type(exc).__name__}") from None
        finally:
            client.close()
        return None


class RabbitMQRotator:
    """`PUT /api/users/<admin>` with a salted SHA-256 `password_hash` computed here (the clear
    password never reaches the broker) and the admin's own tags, read first: a PUT replaces
    them, and an admin without `administrator` could no longer run the connector."""

    def _client(self, integration: Integration, secret: Secret) -> Any:
        import httpx

        from jitc.templates.rabbitmq import Connection

        settings = integration.connection
        assert isinstance(settings, Connection)
        return httpx.Client(
            base_url=settings.api_url.rstrip("/"),
            auth=(settings.user, secret.reveal()),
            verify=settings.verify_tls,
            timeout=settings.timeout,
            follow_redirects=False,
        )

    def _call(
        self, integration: Integration, client: Any, method: str, path: str, body: Any = None
    ) -> Any:
        import httpx

        # Raised outside the `except`: httpx's exception holds the request (the admin
        # credential in its headers, the new password in its body) as `__context__` would.
        failure = ""
        try:
            response = client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            failure = type(exc).__name__
        if failure:
            raise TargetError(f"RabbitMQ API unreachable: {failure}")
        if response.status_code == 401:
            raise AuthenticationFailed(f"{integration.name}: the admin credential was refused")
        if response.status_code >= 300:  # no body in the text: a request's holds a hash
            raise TargetError(f"RabbitMQ API {method} {path}: {response.status_code}")
        return response

    def _path(self, integration: Integration) -> str:
        from urllib.parse import quote

        return "/api/users/" + quote(str(getattr(integration.connection, "user", "")), safe="")

    def change(self, integration: Integration, current: Secret, new: Secret) -> None:
        from jitc.templates.rabbitmq_session import password_hash

        with self._client(integration, current) as client:
            me = self._call(integration, client, "GET", self._path(integration)).json()
            tags = me.get("tags") or []
            if isinstance(tags, str):  # older servers answer a comma-separated string
                tags = [t for t in tags.split(",") if t]
            body = {
                "password_hash": password_hash(new.reveal()),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ",".join(str(t) for t in tags),
            }
            self._call(integration, client, "PUT", self._path(integration), body)

    def check(self, integration: Integration, secret: Secret) -> None:
        with self._client(integration, secret) as client:
            me = self._call(integration, client, "GET", "/api/whoami").json()
        if me.get("name") != getattr(integration.connection, "user", None):
            raise TargetError("the login did not land on the catalog's admin user")


ROTATORS: dict[str, Rotator] = {
    "postgresql": PostgreSQLRotator(),
    "mysql": MySQLRotator(),
    "redis": RedisRotator(),
    "rabbitmq": RabbitMQRotator(),
}


def persist(rotator: Rotator, integration: Integration, secret: Secret) -> str | None:
    """Make a target that keeps its users in memory write the new password down (Redis's ACL
    file); a note when it cannot, so the caller can say a restart would revert it."""
    step = getattr(rotator, "persist", None)
    return None if step is None else step(integration, secret)


def rotator_for(integration: Integration) -> Rotator:
    rotator = ROTATORS.get(integration.template.kind)
    if rotator is None:
        raise Refused(
            "integration",
            f"{integration.name}: rotating a {integration.template.kind} admin credential is not "
            f"supported (supported: {', '.join(sorted(ROTATORS))})",
        )
    if integration.template.kind == "redis" and getattr(integration.connection, "user", "") in (
        "default",
    ):
        # `default` is the user of every client that sends AUTH <password> alone (requirepass):
        # a new password would lock all of them out, not just the connector.
        raise Refused(
            "integration",
            f"{integration.name}: the Redis user `default` is shared with every client that "
            "logs in without a user name; give the connector an ACL user of its own to rotate it",
        )
    return rotator


def account_of(integration: Integration) -> tuple[object, ...]:
    """The admin account an integration logs in as: its kind, server and user name (a
    RabbitMQ server is its API URL; PostgreSQL's databases share the cluster's roles)."""
    settings = integration.connection
    where = ("host", "port", "api_url", "user")
    return (integration.template.kind, *(getattr(settings, key, None) for key in where))


def credential_ref(integration: Integration) -> SecretRef:
    if integration.credentials is None:
        raise Refused("integration", f"{integration.name}: has no credentials to rotate")
    return integration.credentials


def set_password(
    rotator: Rotator, integration: Integration, pending: Secret, logins: Sequence[Secret]
) -> bool:
    """Make the target take `pending`. If it already does (a repeated or resumed step), nothing
    is changed; otherwise the first of `logins` (current, then previous) that logs in changes it.
    True when it was changed now."""
    try:
        rotator.check(integration, pending)
        return False
    except AuthenticationFailed:
        pass
    for login in logins:
        try:
            rotator.change(integration, login, pending)
        except AuthenticationFailed:
            continue
        return True
    raise AuthenticationFailed(
        f"{integration.name}: the target takes neither the pending nor the current credential"
    )


def old_refused(rotator: Rotator, integration: Integration, old: Secret) -> bool:
    """Whether the target now refuses the credential it took before (False on a server that
    checks no passwords, such as one trusting loopback)."""
    try:
        rotator.check(integration, old)
    except AuthenticationFailed:
        return True
    return False


# -- the local store: `jitc rotate INTEGRATION` --------------------------------------------------


@dataclass
class LocalRotation:
    integration: str
    reference: str
    changed: bool  # False: a rotation stopped after setting the password was finished
    old_refused: bool
    note: str | None = None  # e.g. a server that cannot keep the change across a restart


def _write_private(path: Path, text: str, owner: os.stat_result | None = None) -> None:
    """Write `path` atomically with mode 0600: a new file beside it, synced, renamed over.
    With `owner`, the file gets its user and group: the connector may run as an account other
    than the one rotating (root, an operator), and must still read its secret."""
    tmp = path.with_name(f".{path.name}.{random.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            if owner is not None and (owner.st_uid, owner.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(out.fileno(), owner.st_uid, owner.st_gid)
            out.write(text + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path)


def _sync_folder(path: Path) -> None:
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_to(path: Path, owner: int) -> bool:
    """A regular file (not a link) of this user's or of `owner` (the secret's), mode 0600."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return (
        stat.S_ISREG(info.st_mode)
        and info.st_uid in (os.geteuid(), owner)
        and not info.st_mode & 0o077
    )


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One rotation of a file at a time: a second waits for the first, then finds it done."""
    fd = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def rotate_local(catalog: Catalog, name: str) -> LocalRotation:
    """Rotate an integration's admin password held in a `file:` secret.

    The new value is written to `<file>.pending` (0600) before the target is touched, so a
    rotation killed at any point is finished by the next one, and the engine, refused with
    the current value, logs in with the pending one meanwhile. The file is replaced last, by
    a rename: a reader sees the old value or the new one, never part of either.
    An `env:` secret is refused: the connector cannot change its own process's environment,
    let alone the one that starts it next, so the new password would be lost.
    """
    integration = catalog.integrations.get(name)
    if integration is None:
        raise Refused("integration", f"no integration {name!r} in the catalog")
    rotator = rotator_for(integration)
    ref = credential_ref(integration)
    if ref.scheme == "env":
        raise Refused(
            "integration",
            f"{name}: {ref} is an environment variable, which jitc cannot rewrite for the next "
            "start; keep the credential in a file: (or aws-sm:) secret to rotate it",
        )
    if ref.scheme != "file":
        raise Refused(
            "integration",
            f"{name}: {ref} is rotated by its secret store's own rotation (the AWS rotation "
            "function for aws-sm:), not by jitc rotate",
        )
    mine = (ref.scheme, ref.location)
    shared, elsewhere = [], []
    for other in catalog.integrations.values():
        theirs = other.credentials
        if other.name == name or theirs is None:
            continue
        same_account = account_of(other) == account_of(integration)
        if (theirs.scheme, theirs.location) == mine:
            if not same_account or theirs.field != ref.field:
                shared.append(other.name)
        elif same_account:
            elsewhere.append(f"{other.name} ({theirs})")
    if shared:
        # One account's new password in a file others read for their own accounts would lock
        # them out at their next login.
        raise Refused(
            "integration",
            f"{name}: {ref} is also the credential of {', '.join(sorted(shared))}; give each "
            "admin account a secret of its own to rotate it",
        )
    if elsewhere:
        # The account's new password would reach only this secret: the others' old one is
        # refused from then on.
        raise Refused(
            "integration",
            f"{name}: the same admin account is also reached by {', '.join(sorted(elsewhere))}; "
            f"name {ref} in all of them to rotate it",
        )
    path = Path(ref.location)
    pending = Path(pending_path(ref.location))
    store = FileSecretStore()
    with _exclusive(path):
        try:
            current_raw = path.read_text(encoding="utf-8").rstrip("\n")
        except OSError as exc:
            raise SecretError(f"secret {ref}: cannot read file ({exc.strerror})") from None
        kept = path.stat()
        old = pick_field(ref, current_raw)
        if pending.exists():  # a rotation stopped part way: finish it with its value
            if not _private_to(pending, kept.st_uid):
                # Anyone else able to plant or change it would choose the admin's password.
                raise Refused(
                    "integration",
                    f"{name}: {pending} is not a regular file of this user's or the secret's "
                    "owner's with mode 0600; "
                    "remove it if no rotation of ours is under way",
                )
            new = store.resolve(pending_ref(ref))
        else:
            new = Secret(new_password())
            _write_private(pending, with_password(ref, current_raw, new.reveal()), kept)
        changed = set_password(rotator, integration, new, [old])
        rotator.check(integration, new)
        note = persist(rotator, integration, new)
        os.replace(pending, path)
        # The secret's own mode back (e.g. group-readable) only once renamed: a pending file
        # that is not 0600 is passed over by the engine's re-read and refused by the next
        # rotation, so widened first it would fail a batch that raced the rename, or, left by
        # a rotation killed just then, stop every later rotation.
        os.chmod(path, stat.S_IMODE(kept.st_mode))
        _sync_folder(path)
        return LocalRotation(name, str(ref), changed, old_refused(rotator, integration, old), note)
