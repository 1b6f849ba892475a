"""The Redis template's connection-side half, imported only when a connection is opened."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from jitc.errors import Refused, TargetError
from jitc.labels import LabelKey
from jitc.models import Grant, utcnow
from jitc.secrets import Secret
from jitc.templates.base import GrantResult, GrantSpec, RevokeResult
from jitc.templates.redis import Connection, Permission, RedisTemplate, acl_rules
from jitc.templates.redis_label import (
    Label,
    decode_label,
    encode_label,
    label_prefix,
    spec_digest,
)

KIND = RedisTemplate.kind
_NO_ACLFILE = "not configured to use an ACL file"


class RedisSession:
    """One admin connection for a batch. Each change is one pipelined round trip where the
    server allows it, and every decision reads the users from the server, never a cache."""

    def __init__(
        self,
        integration: str,
        connection: Connection,
        secret: Secret | None,
        label_key: LabelKey | None = None,
    ) -> None:
        self.integration = integration
        self.settings = connection
        self.key = label_key or LabelKey.from_secret(None)
        self._save: bool | None = {"always": True, "never": False}.get(connection.acl_save)
        try:
            self.client: redis.Redis = redis.Redis(
                host=connection.host,
                port=connection.port,
                username=connection.user,
                password=secret.reveal() if secret is not None else None,
                ssl=connection.tls,
                ssl_ca_certs=connection.tls_ca_file,
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

    def _ours(self, names: Sequence[str], grant_id: str | None = None) -> list[tuple[str, Label]]:
        """Our users among `names`: the integration's prefix, then a valid MAC. Anything else is
        somebody else's user and is never changed."""
        start = label_prefix(self.integration, grant_id)
        found = []
        for name in names:
            if not name.startswith(start):
                continue
            label = decode_label(self.key, KIND, None, name)
            if label is not None and label.integration == self.integration:
                found.append((name, label))
        return found

    def _acl(self, *args: str) -> Any:
        command: Any = self.client.execute_command  # untyped in redis-py
        return command("ACL", *args)

    def _users(self) -> list[str]:
        return [str(name) for name in self._acl("USERS")]

    def _name(self, label: Label) -> str:
        return encode_label(self.key, KIND, None, label)

    def _saving(self, pipe: Any) -> None:
        """Queue ACL SAVE when the server keeps its users in an ACL file, so a restart keeps
        grants and tombstones. Without an ACL file a restart forgets every grant (access ends)
        and every tombstone."""
        if self._save is not False:
            pipe.execute_command("ACL", "SAVE")

    def _saved(self, reply: object) -> None:
        if isinstance(reply, Exception):
            if self._save is None and _NO_ACLFILE in str(reply):
                self._save = False
                return
            raise TargetError(f"ACL SAVE failed: {type(reply).__name__}")
        if self._save is None:
            self._save = True

    # -- grant -----------------------------------------------------------------------------

    def grant(self, spec: GrantSpec) -> GrantResult:
        permission = spec.permission
        assert isinstance(permission, Permission)
        digest = spec_digest(spec)
        try:
            mine = self._ours(self._users(), spec.grant_id)
            self._refuse_conflicts(mine, digest)
            # With a connector label key every delivery of a grant computes one password, so a
            # redelivery hands out the same credentials instead of changing them.
            password = self.key.password(KIND, self.integration, spec.grant_id, digest)
            if mine and password is None:
                return GrantResult(principal=mine[0][0], reissued=True)
            password = password or secrets.token_urlsafe(24)
            label = Label(
                self.integration,
                spec.grant_id,
                "active",
                spec.expires_at,
                spec.permission_name,
                digest,
            )
            # A redelivery re-applies the rules to the user it made, under the name it has.
            name = mine[0][0] if mine else self._name(label)
            verifier = hashlib.sha256(password.encode()).hexdigest()
            pipe: Any = self.client.pipeline(transaction=False)
            rules = acl_rules(permission, spec.resources, verifier)
            pipe.execute_command("ACL", "SETUSER", name, *rules)
            pipe.execute_command("ACL", "USERS")
            self._saving(pipe)
            replies = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            raise TargetError(f"Redis grant failed: {type(exc).__name__}: {_scrub(exc)}") from None
        if isinstance(replies[0], Exception):
            raise TargetError(f"ACL SETUSER refused: {_scrub(replies[0])}")
        # Another delivery of this grant id with another body, or a revoke, may have run between
        # our read and our write: then ours goes, and the next delivery decides afresh.
        after = self._ours([str(n) for n in replies[1]], spec.grant_id)
        others = [item for item in after if item[0] != name]
        if others:
            self._acl("DELUSER", name)
            self._refuse_conflicts(others, digest)
            raise TargetError("a concurrent delivery of this grant won; retry")
        if len(replies) > 2:
            self._saved(replies[2])
        return GrantResult(
            principal=name,
            credentials=self._credentials(name, password, spec),
            reissued=bool(mine),
        )

    def _refuse_conflicts(self, mine: list[tuple[str, Label]], digest: str) -> None:
        if any(label.state == "tombstone" for _, label in mine):
            raise Refused("request_id", "this grant was already revoked; it will not be made again")
        if any(label.digest != digest for _, label in mine):
            raise Refused(
                "request_id", "another request with this request id was granted; refusing this one"
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
        """Tombstone first, then delete: a crash in between leaves a tombstone next to a live
        user, which the next revoke or sweep deletes, and a late grant is refused meanwhile.
        Nothing here reads the catalog: what a revoke removes was fixed when the grant was made."""
        wanted = set(grant_ids)
        by_grant: dict[str, list[tuple[str, Label]]] = {g: [] for g in grant_ids}
        try:
            for item in self._ours(self._users()):
                if item[1].grant_id in wanted:
                    by_grant[item[1].grant_id].append(item)
            now = utcnow()
            changes: list[tuple[str, ...]] = []
            live_names: list[str] = []
            for grant_id, items in by_grant.items():
                live = [item for item in items if item[1].state == "active"]
                live_names += [name for name, _ in live]
                if any(label.state == "tombstone" for _, label in items):
                    continue
                if live:
                    # Remembered until the grant's own expiry: a delivery later than that is
                    # refused for being expired anyway.
                    if live[0][1].expires_at > now:
                        changes.append(("SETUSER", self._tombstone(live[0][1]), "reset"))
                else:
                    changes.append(
                        ("SETUSER", self._tombstone_for(grant_id, tombstone_until), "reset")
                    )
            if live_names:
                # Deleting a user also closes every connection authenticated as it.
                changes.append(("DELUSER", *live_names))
            pipe: Any = self.client.pipeline(transaction=False)
            for change in changes:
                pipe.execute_command("ACL", *change)
            pipe.execute_command("ACL", "USERS")
            self._saving(pipe)
            replies = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            raise TargetError(f"Redis revoke failed: {type(exc).__name__}: {_scrub(exc)}") from None
        for reply in replies[: len(changes)]:
            if isinstance(reply, Exception):
                raise TargetError(f"Redis revoke failed: {_scrub(reply)}")
        listing = replies[len(changes)]
        if len(replies) > len(changes) + 1:
            self._saved(replies[-1])
        remaining = {name for name, _ in self._ours([str(n) for n in listing])}
        sessions = self._sessions_of(live_names)
        results: dict[str, RevokeResult] = {}
        for grant_id, items in by_grant.items():
            live = [item for item in items if item[1].state == "active"]
            if not live:
                results[grant_id] = RevokeResult(found=False)
                continue
            residual = [f"user {name} still exists" for name, _ in live if name in remaining]
            residual += [
                f"{sessions[name]} connection(s) of {name} still open"
                for name, _ in live
                if sessions.get(name)
            ]
            results[grant_id] = RevokeResult(
                found=True,
                principal=live[0][0],
                expires_at=live[0][1].expires_at,
                residual=residual,
                verified=not residual,
            )
        return results

    def _tombstone(self, label: Label) -> str:
        stone = Label(
            label.integration,
            label.grant_id,
            "tombstone",
            label.expires_at,
            label.permission,
            label.digest,
        )
        return self._name(stone)

    def _tombstone_for(self, grant_id: str, until: datetime) -> str:
        return self._name(Label(self.integration, grant_id, "tombstone", until, "-", "-" * 8))

    def _sessions_of(self, names: list[str]) -> dict[str, int]:
        """Connections still authenticated as these users, waited on (bounded): the server closes
        a deleted user's connections itself, asynchronously."""
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
        stones = [n for n, lab in self._ours(self._users(), grant_id) if lab.state == "tombstone"]
        if stones:
            self._acl("DELUSER", *stones)

    # -- sweep and inventory ---------------------------------------------------------------

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
            for name, label in self._ours(self._users())
        ]

    def inventory(self) -> dict[str, list[str]]:
        keyspace = self.client.info("keyspace")
        return {"users": sorted(self._users()), "databases": sorted(str(k) for k in keyspace)}


def _scrub(exc: object) -> str:
    """Redis echoes arguments in some errors; a password verifier is not a secret, but keep
    error texts to their first line, without arguments."""
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
