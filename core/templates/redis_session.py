"""The Redis template's connection-side half, imported only when a connection is opened."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from jitc import labels
from jitc.errors import Refused, TargetError
from jitc.labels import LabelKey
from jitc.models import Grant, utcnow
from jitc.secrets import Secret
from jitc.templates.base import GrantResult, GrantSpec, InventoryRecord, RevokeResult
from jitc.templates.redis import (
    Connection,
    Permission,
    RedisTemplate,
    acl_rules,
    tombstone_name,
    user_name,
)
from jitc.templates.redis_label import Label, decode_label, encode_label, spec_digest

KIND = RedisTemplate.kind
_NO_ACLFILE = "not configured to use an ACL file"
User = dict[str, Any] | None


class RedisSession:
    """One admin connection for a batch. A grant or a revoke is two pipelined round trips: read
    the users it concerns, then change them and read them back. Every decision reads the
    server, never a cache."""

    def __init__(
        self,
        integration: str,
        connection: Connection,
        secret: Secret | None,
        label_key: LabelKey | None = None,
    ) -> None:
        self.integration = integration
        self.settings = connection
        self.key = labels.required(label_key)
        self._save: bool | None = {"always": True, "never": False}.get(connection.acl_save)
        try:
            self.client: redis.Redis = redis.Redis(
                host=connection.host,
                port=connection.port,
                username=connection.user,
                password=secret.reveal() if secret is not None else None,
                ssl=connection.tls,
                ssl_ca_certs=connection.tls_ca_file,
                ssl_cert_reqs="required",
                ssl_check_hostname=connection.tls,
                socket_connect_timeout=connection.connect_timeout,
                socket_timeout=max(connection.connect_timeout, 10.0),
                client_name="jit-connector",
                decode_responses=True,
                protocol=2,
                # A failed message is retried by the queue; a wrong password is not retried here.
                retry=Retry(NoBackoff(), 0),
            )
            self.client.ping()
        except redis.RedisError as exc:
            raise TargetError(
                f"cannot connect to Redis {connection.host}:{connection.port} as "
                f"{connection.user}: {type(exc).__name__}"
            ) from None

    def close(self) -> None:
        self.client.close()

    # -- the ledger ------------------------------------------------------------------------

    def _run(self, commands: Sequence[tuple[str, ...]]) -> list[Any]:
        """One round trip. ACL SAVE is appended when the server keeps an ACL file and any
        command changes users, so a restart keeps grants and tombstones. (Without an ACL file a
        restart forgets every user made at run time: access ends, and tombstones are lost.)"""
        changes = any(c[:2] in (("ACL", "SETUSER"), ("ACL", "DELUSER")) for c in commands)
        save = changes and self._save is not False
        pipe: Any = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        if save:
            pipe.execute_command("ACL", "SAVE")
        try:
            replies: list[Any] = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            raise TargetError(f"Redis: {type(exc).__name__}: {_first_line(exc)}") from None
        if save:
            self._saved(replies.pop())
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(reply, Exception):
                raise TargetError(f"Redis {' '.join(command[:2])} failed: {_first_line(reply)}")
        return replies

    def _saved(self, reply: object) -> None:
        if isinstance(reply, Exception):
            if self._save is None and _NO_ACLFILE in str(reply):
                self._save = False
                return
            raise TargetError(f"ACL SAVE failed: {_first_line(reply)}")
        self._save = True

    def _persistent(self) -> None:
        """With `acl_save: auto` a grant is made only on a server that saves its users: without
        an ACL file a restart forgets the grant's tombstone once it is revoked, and a late
        delivery of the revoked grant would then be made again. A catalog that accepts this
        says `acl_save: never`. (Revokes never ask: they end access either way.)"""
        if self._save is None:
            try:
                self.client.acl_save()
            except redis.ResponseError as exc:
                self._saved(exc)
            except redis.RedisError as exc:
                raise TargetError(f"Redis: {type(exc).__name__}: {_first_line(exc)}") from None
            else:
                self._save = True
        if self._save is False and self.settings.acl_save == "auto":
            raise Refused(
                "acl_save",
                "the server has no ACL file, so a restart would forget revokes; grants are "
                "refused until the catalog sets acl_save: never",
            )

    def _label(self, name: str, user: User) -> Label | None:
        """The user's label if the user is ours: a `&jitc1:...` channel whose MAC verifies for
        this user name. Anything else belongs to someone else and is never changed."""
        if not user:
            return None
        channels = user.get("channels") or ""
        tokens = channels.split() if isinstance(channels, str) else [str(c) for c in channels]
        return self._label_in(name, tokens)

    def _label_in(self, name: str, tokens: Sequence[str]) -> Label | None:
        for token in tokens:
            if not token.startswith("&jitc1:"):
                continue
            label = decode_label(self.key, KIND, name, token[1:])
            if label is None or label.integration != self.integration:
                continue
            expected = (
                tombstone_name(self.settings, label.grant_id)
                if label.state == "tombstone"
                else user_name(self.settings, label.grant_id)
            )
            if expected == name:
                return label
        return None

    def _get(self, *names: str) -> list[User]:
        return [_user(r) for r in self._run([("ACL", "GETUSER", name) for name in names])]

    # -- grant -----------------------------------------------------------------------------

    def grant(self, spec: GrantSpec) -> GrantResult:
        permission = spec.permission
        assert isinstance(permission, Permission)
        digest = spec_digest(spec)
        name = user_name(self.settings, spec.grant_id)
        stone_name = tombstone_name(self.settings, spec.grant_id)
        self._persistent()
        user, stone = self._get(name, stone_name)
        label = self._label(name, user)
        if user is not None and label is None:
            raise Refused(
                "request_id", f"user {name!r} exists and was not created by this connector"
            )
        if self._label(stone_name, stone) is not None:
            raise Refused("request_id", "this grant was already revoked; it will not be made again")
        if label is not None and label.digest != digest:
            raise Refused(
                "request_id", "another request with this request id was granted; refusing this one"
            )
        # With a connector label key every delivery computes the same password, so a
        # redelivery hands out the same credentials; without one it adds a password, which
        # leaves the first delivery's credentials working.
        password = self.key.password(KIND, self.integration, spec.grant_id, digest)
        password = password or secrets.token_urlsafe(24)
        mine = Label(
            self.integration, spec.grant_id, "active", spec.expires_at, spec.permission_name, digest
        )
        rules = acl_rules(
            permission,
            spec.resources,
            hashlib.sha256(password.encode()).hexdigest(),
            encode_label(self.key, KIND, name, mine),
        )
        _, after, stone_after = map(
            _user,
            self._run(
                [
                    ("ACL", "SETUSER", name, *rules),
                    ("ACL", "GETUSER", name),
                    ("ACL", "GETUSER", stone_name),
                ]
            ),
        )
        # A revoke, or another body under this grant id, may have run between our read and our
        # write (ACL has no conditional write): then the user goes, and a retry decides afresh.
        after_label = self._label(name, after)
        if stone_after is not None or after_label is None or after_label.digest != digest:
            self._run([("ACL", "DELUSER", name)])
            if self._label(stone_name, stone_after) is not None:
                raise Refused("request_id", "this grant was revoked while it was being made")
            raise TargetError("a concurrent delivery of this grant id changed the user; retry")
        return GrantResult(
            principal=name,
            credentials=self._credentials(name, password, spec),
            reissued=label is not None,
        )

    def _credentials(self, name: str, password: str, spec: GrantSpec) -> dict[str, str]:
        return {
            "username": name,
            "password": password,
            "host": self.settings.login_host or self.settings.host,
            "port": str(self.settings.port),
            "tls": "true" if self.settings.tls else "false",
            "expires_at": spec.expires_at.isoformat(),
        }

    # -- revoke ----------------------------------------------------------------------------

    def revoke(self, grant_id: str, tombstone_until: datetime) -> RevokeResult:
        return self.revoke_many([grant_id], tombstone_until)[grant_id]

    def revoke_many(
        self, grant_ids: Sequence[str], tombstone_until: datetime
    ) -> dict[str, RevokeResult]:
        """Tombstone first, then delete (which also closes the user's connections), then read
        back. Nothing here reads the catalog: what a revoke removes was fixed at grant time.

        A grant writes its user and then looks for the tombstone; so a user absent from the
        first read is looked for again after the tombstone is written, in the same round trip.
        A delivery racing this revoke either sees the tombstone and deletes its own user, or
        wrote the user before the tombstone, and then the second look finds it."""
        names = [user_name(self.settings, g) for g in grant_ids]
        stones = [tombstone_name(self.settings, g) for g in grant_ids]
        found = self._get(*names, *stones)
        now = utcnow()
        changes: list[tuple[str, ...]] = []
        live: dict[str, tuple[str, Label]] = {}
        unseen: list[str] = []
        for index, grant_id in enumerate(grant_ids):
            label = self._label(names[index], found[index])
            has_stone = self._label(stones[index], found[len(grant_ids) + index]) is not None
            if label is not None:
                live[grant_id] = (names[index], label)
            if has_stone:
                continue
            if label is None:
                changes.append(self._tombstone(grant_id, tombstone_until, None))
                unseen.append(grant_id)
            elif label.expires_at > now:
                # Remembered until the grant's own expiry: a later delivery has expired anyway.
                changes.append(self._tombstone(grant_id, label.expires_at, label))
        doomed = [name for name, _ in live.values()]
        if doomed:
            changes.append(("ACL", "DELUSER", *doomed))
        looks = [*doomed, *(user_name(self.settings, g) for g in unseen)]
        replies = self._run([*changes, *(("ACL", "GETUSER", n) for n in looks)])
        remaining = dict(zip(looks, map(_user, replies[len(changes) :]), strict=True))
        late: list[str] = []
        for grant_id in unseen:
            name = user_name(self.settings, grant_id)
            label = self._label(name, remaining.pop(name))
            if label is not None:
                live[grant_id] = (name, label)
                late.append(name)
        if late:
            replies = self._run([("ACL", "DELUSER", *late), *(("ACL", "GETUSER", n) for n in late)])
            remaining.update(zip(late, map(_user, replies[1:]), strict=True))
            doomed += late
        sessions = self._sessions_of(doomed)
        results: dict[str, RevokeResult] = {}
        for grant_id in grant_ids:
            if grant_id not in live:
                results[grant_id] = RevokeResult(found=False)
                continue
            name, label = live[grant_id]
            residual = [f"user {name} still exists"] if remaining[name] is not None else []
            if sessions.get(name):
                residual.append(f"{sessions[name]} connection(s) of {name} still open")
            results[grant_id] = RevokeResult(
                found=True,
                principal=name,
                expires_at=label.expires_at,
                residual=residual,
                verified=not residual,
            )
        return results

    def _tombstone(self, grant_id: str, until: datetime, live: Label | None) -> tuple[str, ...]:
        """A user that cannot log in and may run nothing, whose label remembers the revoke
        until `until`, so a late or repeated grant is refused until then."""
        name = tombstone_name(self.settings, grant_id)
        stone = Label(
            self.integration,
            grant_id,
            "tombstone",
            until,
            live.permission if live else "-",
            live.digest if live else "-" * 8,
        )
        return ("ACL", "SETUSER", name, "reset", f"&{encode_label(self.key, KIND, name, stone)}")

    def _sessions_of(self, names: list[str]) -> dict[str, int]:
        """Connections still authenticated as these users, waited on (bounded). The server
        closes a deleted user's connections itself, so this normally finds none at once."""
        if not names:
            return {}
        wanted = set(names)
        deadline = time.monotonic() + self.settings.terminate_wait_seconds
        while True:
            counts: dict[str, int] = {}
            for client in self.client.client_list():
                user = str(client.get("user", ""))
                if user in wanted:
                    counts[user] = counts.get(user, 0) + 1
            if not counts or time.monotonic() >= deadline:
                return counts
            time.sleep(0.02)

    def forget(self, grant_id: str) -> None:
        name = tombstone_name(self.settings, grant_id)
        (stone,) = self._get(name)
        label = self._label(name, stone)
        if label is not None and label.state == "tombstone":
            self._run([("ACL", "DELUSER", name)])

    # -- sweep and inventory ---------------------------------------------------------------

    def _listing(self) -> list[tuple[str, Label]]:
        """Our users, from one ACL LIST: `user <name> <rules...>` per line."""
        found = []
        for line in self._run([("ACL", "LIST")])[0]:
            parts = str(line).split()
            if len(parts) < 2 or not parts[1].startswith(self.settings.user_prefix):
                continue
            label = self._label_in(parts[1], parts[2:])
            if label is not None:
                found.append((parts[1], label))
        return found

    def active_grants(self) -> list[Grant]:
        return [
            Grant(
                grant_id=label.grant_id,
                request_id="",
                integration=label.integration,
                permission=label.permission,
                kind=KIND,
                principal=name,
                identity="",
                expires_at=label.expires_at,
                state=label.state,
                detail={"digest": label.digest},
            )
            for name, label in self._listing()
        ]

    def inventory_records(self) -> Iterator[InventoryRecord]:
        """ACL users and the logical databases that hold keys; never a key's name or value."""
        for name in sorted(_name(u) for u in self._run([("ACL", "USERS")])[0]):
            yield InventoryRecord("user", name)
        for db in sorted(str(d) for d in self.client.info("keyspace")):
            yield InventoryRecord("database", db)

    def inventory(self) -> dict[str, list[str]]:
        users = [str(u) for u in self._run([("ACL", "USERS")])[0]]
        return {"users": sorted(users), "databases": sorted(self.client.info("keyspace"))}


def _user(reply: Any) -> User:
    """ACL GETUSER's reply: a dict from the client, or the raw flat list from a pipeline."""
    if reply is None or isinstance(reply, dict):
        return reply
    items = list(reply)
    return {str(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _first_line(exc: object) -> str:
    """Error texts keep to their first line: some Redis errors echo arguments."""
    text = str(exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _name(value: Any) -> str:
    """A user name as text, whatever bytes a user was created with."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)
