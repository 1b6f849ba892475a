"""The Redis template's connection-side half, imported only when a connection is opened."""

from __future__ import annotations

import copy
import hashlib
import inspect
import itertools
import operator
import secrets
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from jitc import labels
from jitc.errors import AuthenticationFailed, Refused, TargetError
from jitc.labels import (
    CompactLabel,
    LabelKey,
    encode_compact_label,
    spec_digest,
)
from jitc.models import Grant
from jitc.secrets import Secret
from jitc.templates import userledger
from jitc.templates.base import GrantResult, GrantSpec, InventoryRecord, RevokeResult
from jitc.templates.kept import KeptSession, PoolKey, SessionPool, ended_by_peer
from jitc.templates.redis import (
    Connection,
    Permission,
    RedisTemplate,
    acl_rules,
    tombstone_name,
    user_name,
)

KIND = RedisTemplate.kind
_NO_ACLFILE = "not configured to use an ACL file"
User = dict[str, Any] | None
# No CLIENT SETINFO: two round trips more per connection, and a package metadata lookup per
# client made; CLIENT SETNAME already names the connection. (redis-py 7 says so with
# `driver_info=None`; 5 and 6 with `lib_name=None`, which 7 and later deprecate.)
NO_SETINFO: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)


class AdminCredential(redis.CredentialProvider):
    """The admin user and the secret of the batch that holds the client, read at each login. A
    kept client holds none: it cannot log in again until a batch hands it that batch's own."""

    def __init__(self, user: str, secret: Secret | None) -> None:
        self.user = user
        self.secret = secret
        self.held = True

    def get_credentials(self) -> tuple[str, str]:
        if not self.held:
            raise redis.AuthenticationError("a kept client logs in only for a batch")
        return self.user, self.secret.reveal() if self.secret is not None else ""


def admin_client(connection: Connection, secret: Secret | AdminCredential | None) -> redis.Redis:
    """A client logged in as the catalog's admin user at its first command."""
    credential = (
        secret if isinstance(secret, AdminCredential) else AdminCredential(connection.user, secret)
    )
    return redis.Redis(
        host=connection.host,
        port=connection.port,
        credential_provider=credential,
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
        **NO_SETINFO,
    )


# One client per distinct connection settings, never used to connect: its pool's connection
# arguments are what `admin_client` gives redis-py for those settings.
_PROTOTYPES: dict[Connection, Any] = {}


def admin_pool(connection: Connection, credential: AdminCredential) -> Any:
    """A pool of connections made with the very arguments `admin_client`'s client would make
    them with, logging in with `credential`. A client (`redis.Redis`) per session cost 230 us,
    most of it a table of reply callbacks that the session's raw round trips never use: a
    fifth of a grant+revoke's client time when each has its own session."""
    proto = _PROTOTYPES.get(connection)
    if proto is None:
        proto = _PROTOTYPES[connection] = admin_client(connection, None).connection_pool
    kwargs = dict(proto.connection_kwargs)
    # redis-py 8's pool adds a registry of its own to the arguments; each pool makes its own.
    kwargs.pop("himport_registry", None)
    kwargs["credential_provider"] = credential
    if "retry" in kwargs:
        kwargs["retry"] = copy.deepcopy(kwargs["retry"])  # as redis.Redis does, per client
    return type(proto)(
        connection_class=proto.connection_class, max_connections=proto.max_connections, **kwargs
    )


POOL: SessionPool[RedisSession] = SessionPool()
_CHANGES = frozenset({("ACL", "SETUSER"), ("ACL", "DELUSER")})
_VERB = operator.itemgetter(slice(2))


def _changes(commands: Sequence[tuple[str, ...]]) -> bool:
    """Whether any command changes users. (Iterated in C: a generator's frame per round trip
    cost more than the test.)"""
    return any(map(_CHANGES.__contains__, map(_VERB, commands)))


def _any_error(replies: list[Any]) -> bool:
    return any(map(isinstance, replies, itertools.repeat(Exception)))


def take(
    integration: str, connection: Connection, secret: Secret | None, label_key: LabelKey | None
) -> RedisSession:
    """A session kept from an earlier batch of the same integration, settings, secret and label
    key (`jitc.templates.kept`), or a new one."""
    session, _ = POOL.session(
        integration,
        connection,
        secret,
        labels.required(label_key),
        connection.keep_connection_seconds,
        lambda: RedisSession(integration, connection, secret, label_key),
    )
    return session


class RedisSession(KeptSession):
    """One admin connection for a batch. A grant or a revoke is two pipelined round trips: read
    the users it concerns, then change them and look for what a concurrent delivery may have
    written. Every decision reads the server, never a cache. (`ACL GETUSER` of an existing user
    is the dearest command here, 0.2-0.6 ms of server time on Redis 7.0, so no round trip reads
    back a user it has just written.)"""

    def __init__(
        self,
        integration: str,
        connection: Connection,
        secret: Secret | None,
        label_key: LabelKey | None = None,
    ) -> None:
        self.integration = integration
        self.settings = connection
        self._key: LabelKey | None = labels.required(label_key)
        # Kept with a kept session: a server's ACL file is set only when it starts, and a
        # restart ends the connection, so the next session asks again.
        self._save: bool | None = {"always": True, "never": False}.get(connection.acl_save)
        # Users the last ACL LIST showed as ours, until a revoke of this batch uses them.
        self._listed: dict[str, User] = {}
        self._credential = AdminCredential(connection.user, secret)
        # No PING: the connection opens with the first pipeline, which reports a failure to
        # connect or to log in like any other (one round trip fewer per batch).
        self.pool = admin_pool(connection, self._credential)
        # The pool's connection this session sends its round trips on, taken (connected,
        # logged in, checked) at the first of them and held, kept with the session, until the
        # pool is closed: not taken from the pool and given back at every round trip.
        self._conn: Any = None
        self.pool_key: PoolKey | None = None
        self.refused = False
        # Set when a round trip failed (the connection's state is then unknown): not kept.
        self._failed = False
        # Set while the connection is one kept from an earlier batch and has not yet answered
        # this one: the server may have closed it meanwhile, so it may be reconnected once.
        self._kept = False

    def close(self) -> None:
        """Kept for the next batch (`POOL`) when idle and healthy, else closed."""
        POOL.give_back(self, self.settings.keep_connection_seconds)

    # -- kept across batches (jitc.templates.kept) -----------------------------------------

    def reusable(self) -> bool:
        if self._failed or self.refused:
            return False
        pool = self.pool
        held = self._conn
        in_use = getattr(pool, "_in_use_connections", ())
        if len(in_use) > (held in in_use):
            return False  # a connection other than the session's own is out
        socks = []
        for conn in [held, *getattr(pool, "_available_connections", ())]:
            sock = getattr(conn, "_sock", None)
            # One not connected connects, and logs in, at its next command.
            if sock is not None:
                socks.append(sock)
        if not socks:
            return True
        # An idle connection the server has ended (CLIENT KILL, timeout, restart) has
        # something to read, the end of the stream; a healthy one has nothing to say.
        try:
            return not ended_by_peer(sock.fileno() for sock in socks)
        except (OSError, ValueError):  # closed under us: fileno() is -1
            return False

    def hand_over(self, secret: Secret | None, key: LabelKey) -> None:
        self._key = key
        self._credential.secret = secret
        self._credential.held = True
        self._kept = True

    def drop_secret(self) -> None:
        self._key = None
        self._credential.secret = None
        self._credential.held = False
        # Batch-scoped: a later batch reads every user it decides on again.
        self._listed.clear()

    def discard(self) -> None:
        self.pool.disconnect()

    def login(self) -> None:
        """Log in now (a session otherwise logs in with its first pipeline): the engine proves
        each credential it read again after a refusal, while a rotation is under way. Always on
        a new connection: one logged in earlier (a kept one) proves nothing about it now."""
        self._kept = False
        self.pool.disconnect()
        self._send([("PING",)])

    # -- the ledger ------------------------------------------------------------------------

    def _send(
        self, commands: Sequence[tuple[str, ...]], meanwhile: Callable[[], None] | None = None
    ) -> list[Any]:
        """One round trip; each reply or the error it gave; `meanwhile` runs once the commands
        are sent, before their replies are read. The first of a batch on a kept
        connection logs in again ahead of its commands: the server checks a password, and
        whether the user is `on`, only at a login, so one logged in before this batch proves
        nothing about the admin now (an operator may have disabled it or changed its password).
        Commands that change users wait for that login's answer; reads ride with it."""
        if self._kept and _changes(commands):
            self._send(())  # a login on its own first: a refused one must stop the writes
        check = self._kept
        login = [("AUTH", *self._credential.get_credentials())] if check else []
        try:
            if self._conn is None:
                self._conn = self.pool.get_connection()
            replies = _pipelined(self._conn, [*login, *commands], meanwhile)
            if check and isinstance(replies.pop(0), Exception):
                raise redis.AuthenticationError
        except redis.AuthenticationError:
            self._failed = self.refused = True
            # A rotation may have changed the password since it was read: the engine reads the
            # secret again (the pending value included) on this error, once.
            raise AuthenticationFailed(
                f"Redis {self.settings.host}:{self.settings.port}: the admin credential of "
                f"{self.settings.user} was refused"
            ) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if self._kept and isinstance(exc, redis.ConnectionError):
                # The server ended the kept connection after it was last checked (a restart, a
                # timeout, CLIENT KILL): once more on a new one. Every command here resets and
                # sets a state or reads one, so sending them again is harmless.
                self._kept = False
                self.pool.disconnect()
                return self._send(commands, meanwhile)
            self._failed = True
            raise TargetError(
                f"cannot reach Redis {self.settings.host}:{self.settings.port} as "
                f"{self.settings.user}: {type(exc).__name__}"
            ) from None
        except redis.RedisError as exc:
            self._failed = True
            raise TargetError(f"Redis: {type(exc).__name__}: {_first_line(exc)}") from None
        self._kept = False
        return replies

    def _run(
        self,
        commands: Sequence[tuple[str, ...]],
        meanwhile: Callable[[], None] | None = None,
        persist: bool = False,
    ) -> list[Any]:
        """One round trip. ACL SAVE is appended when the server keeps an ACL file and any
        command changes users, or `persist` asks, so a restart keeps grants and tombstones.
        (Without an ACL file a restart forgets every user made at run time: access ends, and
        tombstones are lost.)"""
        save = self._save is not False and (persist or _changes(commands))
        replies = self._send([*commands, ("ACL", "SAVE")] if save else commands, meanwhile)
        if save:
            self._saved(replies.pop())
        if _any_error(replies) or len(replies) != len(commands):
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

    def _read_for_grant(
        self, *names: str, meanwhile: Callable[[], None] | None = None
    ) -> list[User]:
        """The users a grant decides on, in one round trip. With `acl_save: auto` and a server
        not yet asked, the same round trip tries ACL SAVE: a grant is made only on a server that
        saves its users, since without an ACL file a restart forgets the grant's tombstone once
        it is revoked, and a late delivery of the revoked grant would then be made again. A
        catalog that accepts this says `acl_save: never`. (Revokes never ask: they end access
        either way.)"""
        probe = self._save is None
        commands = [("ACL", "GETUSER", name) for name in names]
        replies = self._send([*commands, ("ACL", "SAVE")] if probe else commands, meanwhile)
        if probe:
            self._saved(replies.pop())
        for reply in replies:
            if isinstance(reply, Exception):
                raise TargetError(f"Redis ACL GETUSER failed: {_first_line(reply)}")
        if self._save is False and self.settings.acl_save == "auto":
            raise Refused(
                "acl_save",
                "the server has no ACL file, so a restart would forget revokes; grants are "
                "refused until the catalog sets acl_save: never",
            )
        return [_user(reply) for reply in replies]

    def _label(self, name: str, user: User, tombstone: bool | None = None) -> CompactLabel | None:
        """The user's label if the user is ours: a `&jitc1:...` channel whose MAC verifies for
        this user name (`tombstone`: `owned_label`'s). Anything else belongs to someone else and
        is never changed."""
        if not user:
            return None
        channels = user.get("channels") or ""
        tokens = channels.split() if isinstance(channels, str) else [str(c) for c in channels]
        return self._label_in(name, tokens, tombstone)

    def _label_in(
        self, name: str, tokens: Sequence[str], tombstone: bool | None = None
    ) -> CompactLabel | None:
        texts = (token[1:] for token in tokens if token.startswith("&"))
        return userledger.owned_label(self.key, KIND, self.integration, name, texts, tombstone)

    def _get(self, *names: str) -> list[User]:
        return [_user(r) for r in self._run([("ACL", "GETUSER", name) for name in names])]

    # -- grant -----------------------------------------------------------------------------

    def grant(self, spec: GrantSpec) -> GrantResult:
        digest = spec_digest(spec)
        name = user_name(self.settings, spec.grant_id)
        stone_name = tombstone_name(self.settings, spec.grant_id)
        # A new grant's user, password and credentials need nothing the read answers (only a
        # redelivery's label can change the expiry): rendered while the server reads.
        fresh: list[tuple[list[str], dict[str, str]]] = []
        user, stone = self._read_for_grant(
            name,
            stone_name,
            meanwhile=lambda: fresh.append(self._render(spec, name, digest, spec.expires_at)),
        )
        label = self._label(name, user, tombstone=False)
        tombstoned = self._label(stone_name, stone, tombstone=True) is not None
        if tombstoned and label is not None:
            # Our user under our tombstone: a delivery that wrote it after a revoke and stopped
            # before its own look for the tombstone (a lost connection, a stopped worker). It
            # would live, with the first password, until the sweep at its expiry.
            self._run([("ACL", "DELUSER", name)])
        userledger.check_grantable(
            name, user is not None, label, stone_name, stone is not None, tombstoned, digest
        )
        # A redelivery keeps the first delivery's expiry: one signed later asks for a later one
        # (a duration counts from the signature), which must never lengthen access.
        expires_at = spec.expires_at if label is None else label.expires_at
        rules, credentials = (
            fresh[0]
            if fresh and expires_at == spec.expires_at
            else self._render(spec, name, digest, expires_at)
        )
        # The user is not read back: ACL SETUSER is atomic and resets the passwords, so the
        # only password that logs in is the one written with these rules and this label. A
        # delivery of another request under this grant id racing this one may overwrite it; then
        # the loser's credentials never log in, and no credentials ever carry rules other than
        # their own. The tombstone is looked for after the write, in the same round trip: a
        # revoke that ran between our read and our write wrote it before its own last look.
        # The credentials are sealed while the server writes.
        _, stone_after = self._run(
            [("ACL", "SETUSER", name, *rules), ("ACL", "GETUSER", stone_name)],
            lambda: spec.seal_ahead(credentials),
        )
        if self._label(stone_name, _user(stone_after), tombstone=True) is not None:
            self._run([("ACL", "DELUSER", name)])
            raise Refused("request_id", "this grant was revoked while it was being made")
        return GrantResult(
            principal=name,
            credentials=credentials,
            reissued=label is not None,
            expires_at=expires_at,
        )

    def _render(
        self, spec: GrantSpec, name: str, digest: str, expires_at: datetime
    ) -> tuple[list[str], dict[str, str]]:
        """The user's ACL rules (its password's hash, its permission, its label) and the
        credentials they let in. Every delivery computes the same password from the
        connector's label key, so a redelivery hands out the same credentials and `resetpass`
        changes nothing."""
        permission = spec.permission
        assert isinstance(permission, Permission)
        password = self.key.password(KIND, self.integration, spec.grant_id, digest)
        password = password or secrets.token_urlsafe(24)
        mine = CompactLabel(
            self.integration, spec.grant_id, "active", expires_at, spec.permission_name, digest
        )
        rules = acl_rules(
            permission,
            spec.resources,
            hashlib.sha256(password.encode()).hexdigest(),
            encode_compact_label(self.key, KIND, name, mine),
        )
        return rules, self._credentials(name, password, expires_at)

    def _credentials(self, name: str, password: str, expires_at: datetime) -> dict[str, str]:
        return {
            "username": name,
            "password": password,
            "host": self.settings.login_host or self.settings.host,
            "port": str(self.settings.port),
            "tls": "true" if self.settings.tls else "false",
            "expires_at": expires_at.isoformat(),
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
        # The sweep revokes what the ACL LIST of this same session found due, a moment ago: the
        # users it listed are not read again (each `ACL GETUSER` of a user costs Redis 7.0 a
        # description of its rules). Only an ACL administrator could change them in between.
        if self._listed:
            listed = {n: self._listed.pop(n) for n in names if n in self._listed}
            unread = [n for n in names if n not in listed]
            reads = dict(zip([*unread, *stones], self._get(*unread, *stones), strict=True))
            reads.update(listed)
            found = [reads[n] for n in (*names, *stones)]
        else:
            found = self._get(*names, *stones)
        count = len(grant_ids)
        # No live user under today's name: a revoke before its grant, or a grant made under an
        # earlier prefix. Past today's tombstone (a repeated revoke) only in the sweep, which
        # has just listed every user: a grant made again under today's name after the prefix
        # changed leaves its first user live under that tombstone, and the sweep ends it.
        labels = [self._label(names[i], found[i], tombstone=False) for i in range(count)]
        gone = [
            g
            for i, g in enumerate(grant_ids)
            if labels[i] is None and (found[count + i] is None or self._listed)
        ]
        elsewhere = self._elsewhere(gone) if gone else {}
        changes: list[tuple[str, ...]] = []
        live: dict[str, tuple[str, CompactLabel]] = {}
        unseen: list[str] = []
        taken: dict[str, str] = {}
        # Grants whose own user holds their tombstone's name: the tombstone is written there
        # once the user is deleted, in the same round trip.
        in_place: dict[str, tuple[str, ...]] = {}
        for index, grant_id in enumerate(grant_ids):
            label = labels[index]
            stone_user = found[count + index]
            has_stone = self._label(stones[index], stone_user, tombstone=True) is not None
            # The grant's own user, made under a prefix `x-` longer than today's, may hold the
            # tombstone's name (its name ends with this grant's id: this grant's). It goes,
            # the tombstone takes its name, and a user under today's name goes too (below).
            mine = None if has_stone else self._label(stones[index], stone_user, tombstone=False)
            if mine is not None:
                live[grant_id] = (stones[index], mine)
                in_place[grant_id] = self._tombstone(
                    grant_id, max(tombstone_until, mine.expires_at), mine
                )
                continue
            if label is not None:
                live[grant_id] = (names[index], label)
            elif grant_id in elsewhere:
                live[grant_id] = elsewhere[grant_id]
                label = live[grant_id][1]
            if has_stone:
                continue
            if stone_user is not None:
                # Someone else's user holds the tombstone's name: it is never overwritten.
                # Grants are refused while it is there; the revoke says so until it is gone.
                taken[grant_id] = stones[index]
                continue
            if label is None:
                changes.append(self._tombstone(grant_id, tombstone_until, None))
                unseen.append(grant_id)
            else:
                # Not only until the grant's own expiry: a copy of the request signed later (a
                # retried publish) asks for a later one, and once the tombstone is forgotten it
                # would make the grant again, with the same password. `tombstone_until` outlasts
                # every copy signed before now.
                until = max(tombstone_until, label.expires_at)
                changes.append(self._tombstone(grant_id, until, label))
        doomed = [name for name, _ in live.values()]
        changes += [*_ending(doomed), *in_place.values()]
        # Today's names of the grants ended in place too: a delivery under today's prefix that
        # ran before the tombstone was there is found there.
        looks = [*doomed, *(user_name(self.settings, g) for g in (*unseen, *in_place))]
        # Saved even when nothing changes: a revoke whose ACL SAVE failed has changed the users
        # in memory only, and its retry, which finds nothing left to change, must still write
        # the file, or a restart would bring the user back.
        replies = self._run([*changes, *(("ACL", "GETUSER", n) for n in looks)], persist=True)
        remaining = dict(zip(looks, map(_user, replies[len(changes) :]), strict=True))
        late: list[str] = []
        for grant_id in unseen:
            name = user_name(self.settings, grant_id)
            label = self._label(name, remaining.pop(name), tombstone=False)
            if label is not None:
                live[grant_id] = (name, label)
                late.append(name)
        for grant_id in in_place:
            name = user_name(self.settings, grant_id)
            if self._label(name, remaining[name], tombstone=False) is not None:
                late.append(name)
        if late:
            ending = _ending(late)
            replies = self._run([*ending, *(("ACL", "GETUSER", n) for n in late)])
            remaining.update(zip(late, map(_user, replies[len(ending) :]), strict=True))
        results: dict[str, RevokeResult] = {}
        for grant_id in grant_ids:
            blocked = (
                [f"user {taken[grant_id]} holds this grant's tombstone name; no tombstone written"]
                if grant_id in taken
                else []
            )
            if grant_id not in live:
                results[grant_id] = (
                    RevokeResult(found=True, residual=blocked, verified=False)
                    if blocked
                    else RevokeResult(found=False)
                )
                continue
            name, label = live[grant_id]
            if grant_id in in_place:
                today = user_name(self.settings, grant_id)
                ended = (
                    self._label(name, remaining[name], tombstone=True) is not None
                    and self._label(today, remaining[today], tombstone=False) is None
                )
            else:
                ended = remaining[name] is None
            residual = [] if ended else [f"user {name} still exists"]
            residual += blocked
            results[grant_id] = RevokeResult(
                found=True,
                principal=name,
                expires_at=label.expires_at,
                residual=residual,
                verified=not residual,
            )
        return results

    def _elsewhere(self, grant_ids: Sequence[str]) -> dict[str, tuple[str, CompactLabel]]:
        """Users of these grants under another name than today's settings give them: made
        before `user_prefix` changed. Looked for only when a grant has no live user under
        today's name: in the sweep's own ACL LIST when it just read one, else in one ACL USERS;
        then the label of each user whose name ends in the grant id is read."""
        wanted = set(grant_ids)
        current = {user_name(self.settings, g) for g in grant_ids}
        every = list(self._listed) or map(_name, self._run([("ACL", "USERS")])[0])
        names = [
            name
            for name in every
            if userledger.grant_of_name(name) in wanted and name not in current
        ]
        # The sweep's listing already holds each listed user's labels: not read again.
        unread = [name for name in names if name not in self._listed]
        read = dict(zip(unread, self._get(*unread), strict=True)) if unread else {}
        found: dict[str, tuple[str, CompactLabel]] = {}
        for name in names:
            user = read[name] if name in read else self._listed[name]
            label = self._label(name, user, tombstone=False)
            if label is not None and label.grant_id in wanted:
                found[label.grant_id] = (name, label)
        return found

    def _tombstone(
        self, grant_id: str, until: datetime, live: CompactLabel | None
    ) -> tuple[str, ...]:
        """A user that cannot log in and may run nothing, whose label remembers the revoke
        until `until`, so a late or repeated grant is refused until then."""
        name = tombstone_name(self.settings, grant_id)
        stone = userledger.tombstone_label(self.integration, grant_id, until, live)
        # `reset` gives every channel on a server whose acl-pubsub-default is allchannels (the
        # 6.x default, kept by upgraded servers), and Redis then refuses any channel pattern:
        # `resetchannels` first, as a grant's rules do.
        return (
            "ACL",
            "SETUSER",
            name,
            "reset",
            "resetchannels",
            f"&{encode_compact_label(self.key, KIND, name, stone)}",
        )

    def forget(self, grant_id: str, principal: str | None = None) -> None:
        name = principal or tombstone_name(self.settings, grant_id)
        (stone,) = self._get(name)
        label = self._label(name, stone, tombstone=True)
        if label is not None and label.grant_id == grant_id:
            self._run([("ACL", "DELUSER", name)])

    # -- sweep and inventory ---------------------------------------------------------------

    def _listing(self) -> list[tuple[str, CompactLabel]]:
        """Our users, from one ACL LIST: `user <name> <rules...>` per line. Under any prefix: a
        grant made before `user_prefix` changed still ends on time."""
        found = []
        for line in self._run([("ACL", "LIST")])[0]:
            parts = str(line).split()
            if len(parts) < 2 or userledger.grant_of_name(parts[1]) is None:
                continue
            label = self._label_in(parts[1], parts[2:])
            if label is not None:
                found.append((parts[1], label))
                self._listed[parts[1]] = {"channels": [p for p in parts[2:] if p[:1] == "&"]}
        return found

    def active_grants(self) -> list[Grant]:
        return [userledger.grant_of(KIND, name, label) for name, label in self._listing()]

    def inventory_records(self) -> Iterator[InventoryRecord]:
        """ACL users and the logical databases that hold keys; never a key's name or value."""
        for name in sorted(_name(u) for u in self._run([("ACL", "USERS")])[0]):
            yield InventoryRecord("user", name)
        for db in self._databases():
            yield InventoryRecord("database", db)

    def inventory(self) -> dict[str, list[str]]:
        users = [str(u) for u in self._run([("ACL", "USERS")])[0]]
        return {"users": sorted(users), "databases": self._databases()}

    def _databases(self) -> list[str]:
        """The logical databases that hold keys, from INFO keyspace (`db0:keys=1,...` per line),
        on the session's own connection: another would have to connect, and log in."""
        text = str(self._run([("INFO", "keyspace")])[0])
        return sorted(
            line.partition(":")[0]
            for line in text.splitlines()
            if line.startswith("db") and ":" in line
        )


def _pipelined(
    conn: Any, commands: Sequence[tuple[str, ...]], meanwhile: Callable[[], None] | None = None
) -> list[Any]:
    """The commands in one write, then each reply or the error it gave: what redis-py's
    `pipeline(transaction=False).execute(raise_on_error=False)` sends and reads for them (no
    command here has a response callback), without the pipeline object, its retry wrapper and
    its bookkeeping, ~20 us of Python per round trip. A connection that failed in any way is
    disconnected, as redis-py does: its state is unknown (the next send connects again)."""
    try:
        conn.send_packed_command(conn.pack_commands(commands))
        if meanwhile is not None:
            meanwhile()
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        conn.disconnect()
        raise


def _user(reply: Any) -> User:
    """ACL GETUSER's reply: a dict from the client, or the raw flat list from a pipeline."""
    if reply is None or isinstance(reply, dict):
        return reply
    items = list(reply)
    return {str(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _ending(names: Sequence[str]) -> list[tuple[str, ...]]:
    """End users, in one round trip with whatever comes before: each user's connections killed
    while it still exists (CLIENT KILL USER refuses a user that does not), then the users
    deleted, which closes any connection that authenticated in between (Redis's own promise,
    which the tests check with connections held open in every mode). Nothing reads the server's
    whole client list: a connection's name is in it, which any client may set with HELLO, of
    any length."""
    if not names:
        return []
    return [*(("CLIENT", "KILL", "USER", name) for name in names), ("ACL", "DELUSER", *names)]


def _first_line(exc: object) -> str:
    """Error texts keep to their first line: some Redis errors echo arguments."""
    text = str(exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _name(value: Any) -> str:
    """A user name as text, whatever bytes a user was created with."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)
