"""The RabbitMQ template's connection-side half: the management API client, imported only when
a connection is opened."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Generator, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

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
from jitc.templates.kept import KeptSession, PoolKey, SessionPool
from jitc.templates.rabbitmq import (
    Call,
    Connection,
    Permission,
    RabbitMQTemplate,
    grant_calls,
    label_calls,
    tombstone_name,
    user_name,
)

KIND = RabbitMQTemplate.kind
# How long the sweep waits before it takes a user of ours without a label for one nothing will
# label: a delivery writes its user's label in the call after the user.
UNLABELLED_WAIT_SECONDS = 2.0
EPOCH = datetime.fromtimestamp(0, UTC)
ORPHAN_DIGEST = "-" * 8  # as a tombstone of no live grant has (`userledger.tombstone_label`)
POOL: SessionPool[RabbitMQSession] = SessionPool()


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256 format: base64(salt + sha256(salt + password)),
    the 4-byte salt random unless given."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _stored(user: dict[str, Any] | None) -> tuple[bytes, bytes] | None:
    """The user's stored hash as (4-byte salt, SHA-256 digest), if it is one of that scheme."""
    if user is None or user.get("hashing_algorithm") != "rabbit_password_hashing_sha256":
        return None
    try:
        raw = base64.b64decode(str(user.get("password_hash") or ""), validate=True)
    except ValueError:
        return None
    return (raw[:4], raw[4:]) if len(raw) == 36 else None


def _hashes(user: dict[str, Any] | None, password: str) -> bool:
    """The user's stored hash is of `password`."""
    stored = _stored(user)
    return stored is not None and hmac.compare_digest(
        stored[1], hashlib.sha256(stored[0] + password.encode()).digest()
    )


class _NoCredential(httpx.Auth):
    """A kept client's auth: it sends nothing until a batch hands it that batch's credential."""

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise TargetError("a kept RabbitMQ client sends only for a batch")
        yield request  # a generator, as httpx.Auth's flow is


def take(
    integration: str, connection: Connection, secret: Secret | None, label_key: LabelKey | None
) -> RabbitMQSession:
    """A session kept from an earlier batch of the same integration, settings, secret and label
    key (`jitc.templates.kept`), or a new one. Either proves the admin first (`/api/whoami`)."""
    session, kept = POOL.session(
        integration,
        connection,
        secret,
        labels.required(label_key),
        connection.keep_connection_seconds,
        lambda: RabbitMQSession(integration, connection, secret, label_key),
    )
    if kept:
        try:
            session.check_admin()
        except TargetError:
            session.close()  # refused or failed: not kept again
            raise
    return session


class RabbitMQSession(KeptSession):
    """One HTTP client (kept alive, and kept across batches: `take`) for a batch."""

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
        self.pool_key: PoolKey | None = None
        self.refused = False
        # Set when a call failed in transport (the connection's state is then unknown).
        self._failed = False
        self.client = httpx.Client(
            base_url=connection.api_url.rstrip("/"),
            auth=(connection.user, secret.reveal() if secret is not None else ""),
            verify=connection.verify_tls,
            timeout=connection.timeout,
            follow_redirects=False,
        )
        try:
            self.check_admin()
        except TargetError:  # a refused login included: the engine may try another value
            self.client.close()
            raise

    def check_admin(self) -> None:
        """Every batch, kept client or not: the credential logs in and is an administrator."""
        me = self._call("GET", "/api/whoami")
        if "administrator" not in (me.json().get("tags") or []):
            self._failed = True
            raise TargetError(f"RabbitMQ user {self.settings.user} is not an administrator")

    def close(self) -> None:
        """Kept for the next batch (`POOL`) when healthy, else closed."""
        POOL.give_back(self, self.settings.keep_connection_seconds)

    # -- kept across batches (jitc.templates.kept) -----------------------------------------

    def reusable(self) -> bool:
        # httpx itself drops a kept-alive connection the broker closed before reusing it, and
        # `_call` sends an idempotent call once more when the broker closes one mid-request.
        return not (self._failed or self.refused or self.client.is_closed)

    def hand_over(self, secret: Secret | None, key: LabelKey) -> None:
        self._key = key
        self.client.auth = (self.settings.user, secret.reveal() if secret is not None else "")

    def drop_secret(self) -> None:
        self._key = None
        # The client's auth holds the encoded credential: replaced by none while kept.
        self.client.auth = _NoCredential()

    def discard(self) -> None:
        self.client.close()

    # -- HTTP ------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, object] | None = None,
        missing: bool = False,
        accept: tuple[int, ...] = (),
    ) -> httpx.Response:
        """One API call; a 404 is an answer when `missing` is allowed, and so is any status in
        `accept`. Error texts carry the method, path and status, never a request body (it may
        hold a password hash)."""
        # The error is raised outside the `except`: httpx's exception holds the request, whose
        # headers hold the admin credential, and it would stay reachable as `__context__`.
        failure = ""
        response = None
        for _ in (1, 2):
            try:
                response = self.client.request(method, path, json=body)
                break
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                # The broker closed a kept-alive connection (idle, or after an error answer).
                # Every call here is idempotent (GET, PUT, DELETE), so it is sent once more.
                failure = "closed the connection"
            except httpx.HTTPError as exc:
                failure = f"unreachable: {type(exc).__name__}"
                break
        if response is None:
            self._failed = True
            raise TargetError(f"RabbitMQ API {self.settings.api_url} {failure}")
        if (response.status_code == 404 and missing) or response.status_code in accept:
            return response
        if response.status_code == 401:
            self.refused = True
            # A rotation may have changed the password since it was read: the engine reads the
            # secret again (the pending value included) on this error, once.
            raise AuthenticationFailed(
                f"RabbitMQ API {self.settings.api_url}: the admin credential of "
                f"{self.settings.user} was refused"
            )
        if response.status_code >= 300:
            reason = ""
            with contextlib.suppress(ValueError):
                reason = str(response.json().get("reason", ""))[:200]
            raise TargetError(f"RabbitMQ API {method} {path}: {response.status_code} {reason}")
        return response

    def _user(self, name: str) -> dict[str, Any] | None:
        """The user as the ledger needs it: `ledger`, the exchange names of its topic permissions
        in the ledger vhost (the labels); the user itself is read only when they hold none (a
        label of an earlier version is a tag; the mark of `_unlabelled` is in its hash)."""
        quoted = quote(name, safe="")
        response = self._call("GET", f"/api/users/{quoted}/topic-permissions", missing=True)
        if response.status_code == 404:
            return None
        rows = response.json()
        ledger = [str(r["exchange"]) for r in rows if r.get("vhost") == self.settings.ledger_vhost]
        if ledger:
            return {"name": name, "ledger": ledger}
        answer = self._call("GET", f"/api/users/{quoted}", missing=True)
        return None if answer.status_code == 404 else {**answer.json(), "ledger": []}

    def _salt(self, name: str) -> bytes:
        return self.key.salt(KIND, self.integration, name)

    def _hash(self, name: str, password: str | None = None) -> str:
        """A password hash marked as the connector's for user `name` (`_unlabelled`); of a
        password nobody knows when none is given."""
        return password_hash(password or secrets.token_urlsafe(24), self._salt(name))

    def _unlabelled(self, user: dict[str, Any] | None) -> bool:
        """A user of ours with no label: its password hash carries the salt only the connector's
        key gives this integration and user name. RabbitMQ has no call that writes a user and a
        topic permission at once, and writes a user whether it exists or not: a delivery or a
        revoke stopped between its user and its label leaves one, and a grant's password write
        that lands after a racing revoke deleted the user makes it again without its label. So
        does a ledger that lost its labels (its vhost deleted, `ledger_vhost` changed)."""
        if user is None or user.get("ledger") or self._label(user) is not None:
            return False
        stored = _stored(user)
        return stored is not None and hmac.compare_digest(stored[0], self._salt(str(user["name"])))

    def _orphan(
        self, users: dict[str, dict[str, Any] | None], name: str, grant_id: str, until: datetime
    ) -> CompactLabel | None:
        """A label for the grant's user under `name` when it is ours and has none (the revoke
        ends it as if it had)."""
        if not self._unlabelled(users.get(name)):
            return None
        return CompactLabel(self.integration, grant_id, "active", until, "-", ORPHAN_DIGEST)

    def _listing(self) -> dict[str, dict[str, Any] | None]:
        """Every user by name, each with its labels (`_user`'s `ledger`): two reads."""
        users: dict[str, dict[str, Any] | None] = {}
        for row in self._call("GET", "/api/users").json():
            users[str(row["name"])] = {**row, "ledger": []}
        for row in self._call("GET", "/api/topic-permissions").json():
            user = users.get(str(row.get("user", "")))
            if user is not None and row.get("vhost") == self.settings.ledger_vhost:
                user["ledger"].append(str(row["exchange"]))
        return users

    def _write(self, calls: Sequence[Call]) -> None:
        """Send `calls` in order; the ledger vhost is made the first time a label needs it."""
        for method, path, body in calls:
            labelled = path.startswith("/api/topic-permissions/")
            response = self._call(method, path, body, accept=(400,) if labelled else ())
            if response.status_code == 400:
                self._ledger_vhost()
                self._call(method, path, body)

    def _ledger_vhost(self) -> None:
        vhost = f"/api/vhosts/{quote(self.settings.ledger_vhost, safe='')}"
        if self._call("GET", vhost, missing=True).status_code == 404:
            description = "jit-connector ledger: deleting it forgets which users are grants"
            self._call("PUT", vhost, {"description": description})

    # -- the ledger ------------------------------------------------------------------------

    def _label(
        self, user: dict[str, Any] | None, tombstone: bool | None = None
    ) -> CompactLabel | None:
        """The user's label if the user is ours: a tag whose MAC verifies for this user name,
        named for its grant (under any prefix; `tombstone`: `owned_label`'s); anything else
        belongs to someone else and is never changed."""
        if user is None:
            return None
        tags = user.get("tags") or []
        if isinstance(tags, str):  # older servers answer a comma-separated string
            tags = tags.split(",")
        return userledger.owned_label(
            self.key,
            KIND,
            self.integration,
            str(user.get("name", "")),
            [*user.get("ledger", ()), *(str(t) for t in tags)],
            tombstone,
        )

    def _encode(self, name: str, label: CompactLabel) -> str:
        return encode_compact_label(self.key, KIND, name, label)

    # -- grant -----------------------------------------------------------------------------

    def grant(self, spec: GrantSpec) -> GrantResult:
        permission = spec.permission
        assert isinstance(permission, Permission)
        digest = spec_digest(spec)
        name = user_name(self.settings, spec.grant_id)
        existing = self._user(name)
        label = self._label(existing, tombstone=False)
        # Ours without a label (`_unlabelled`): this delivery writes it afresh, label first.
        unlabelled = self._unlabelled(existing)
        stone_name = tombstone_name(self.settings, spec.grant_id)
        stone_user = self._user(stone_name)
        stone = self._label(stone_user, tombstone=True)
        if self._unlabelled(stone_user):
            raise TargetError(f"a revoke of this grant stopped writing {stone_name}; retry")
        password = self.key.password(KIND, self.integration, spec.grant_id, digest)
        if unlabelled and stone is None and _hashes(existing, password):
            # A copy of this request running now writes its label before its password: read
            # after its password, the label is there (`_user` read the labels first).
            existing = self._user(name)
            label = self._label(existing, tombstone=False)
            unlabelled = self._unlabelled(existing)
        if unlabelled and stone is None and _hashes(existing, password):
            # Made before, with this request's password, and its label gone since (the ledger
            # vhost deleted or changed, a racing delivery): the expiry it had is lost with it,
            # and this copy's may be later. Ended, not made again.
            self._call("DELETE", f"/api/users/{quote(name, safe='')}", missing=True)
            raise Refused(
                "request_id",
                "this grant's user had lost its label (and with it its expiry): it was ended "
                "and is not made again",
            )
        if unlabelled:
            existing = None
        if stone is not None and (label is not None or unlabelled):
            # Our user under our tombstone: a delivery that wrote it after a revoke and stopped
            # before its check (a lost connection, a stopped worker). It would live, with the
            # first password, until the sweep at its expiry. Deleting it closes its connections.
            self._call("DELETE", f"/api/users/{quote(name, safe='')}", missing=True)
        userledger.check_grantable(
            name,
            existing is not None,
            label,
            stone_name,
            stone_user is not None and stone is None,
            stone is not None,
            digest,
        )
        # Every delivery computes the same password (above), so a redelivery completes the
        # grant and hands out the same credentials.
        # A redelivery keeps the first delivery's expiry: one signed later asks for a later one
        # (a duration counts from the signature), which must never lengthen access.
        expires_at = spec.expires_at if label is None else label.expires_at
        mine = CompactLabel(
            self.integration, spec.grant_id, "active", expires_at, spec.permission_name, digest
        )
        text = self._encode(name, mine)
        held = existing is not None and text in existing.get("ledger", ())
        calls = grant_calls(
            self.settings,
            spec,
            None if held else text,
            self._hash(name, password),
            None if existing is not None else self._hash(name),
        )
        self._write(calls)
        self._check_after_grant(spec, name, digest)
        return GrantResult(
            principal=name,
            credentials=self._credentials(name, password, spec, expires_at),
            reissued=label is not None,
            expires_at=expires_at,
        )

    def _check_after_grant(self, spec: GrantSpec, name: str, digest: str) -> None:
        """A revoke or another body under this grant id may have run between our reads and our
        writes (the API has no conditional write). Then the user we wrote goes."""
        stone = self._label(self._user(tombstone_name(self.settings, spec.grant_id)), True)
        user = self._user(name)
        label = self._label(user, tombstone=False)
        # The label, the password and each vhost's permissions are separate calls: a racing
        # delivery of another request under this grant id may have left its own label or
        # permissions on the user, which our password would then reach. Exactly ours (one
        # label, this request's), or the user goes.
        if (
            stone is None
            and user is not None
            and len(user["ledger"]) == 1
            and label is not None
            and label.digest == digest
            and self._permissions(name) == self._expected_permissions(spec)
        ):
            return
        self._call("DELETE", f"/api/users/{quote(name, safe='')}", missing=True)
        if stone is not None:
            raise Refused("request_id", "this grant was revoked while it was being made")
        raise TargetError("a concurrent delivery of this grant id changed the user; retry")

    def _permissions(self, name: str) -> dict[str, tuple[str, str, str]]:
        response = self._call("GET", f"/api/users/{quote(name, safe='')}/permissions", missing=True)
        rows = [] if response.status_code == 404 else response.json()
        return {
            str(row["vhost"]): (str(row["configure"]), str(row["write"]), str(row["read"]))
            for row in rows
        }

    def _expected_permissions(self, spec: GrantSpec) -> dict[str, tuple[str, str, str]]:
        permission = spec.permission
        assert isinstance(permission, Permission)
        patterns = permission.patterns()
        return {permission.vhost(resource): patterns for resource in spec.resources}

    def _credentials(
        self, name: str, password: str, spec: GrantSpec, expires_at: datetime
    ) -> dict[str, str]:
        host = self.settings.amqp_host or (httpx.URL(self.settings.api_url).host or "")
        permission = spec.permission
        assert isinstance(permission, Permission)
        return {
            "username": name,
            "password": password,
            "host": host,
            "port": str(self.settings.amqp_port),
            "vhosts": ",".join(permission.vhost(r) for r in spec.resources),
            "expires_at": expires_at.isoformat(),
        }

    # -- revoke ----------------------------------------------------------------------------

    def revoke(self, grant_id: str, tombstone_until: datetime) -> RevokeResult:
        """Tombstone, then delete (which closes the user's connections), then verify. Nothing
        here reads the catalog: what a revoke removes was fixed when the grant was made."""
        return self._revoke_one(grant_id, tombstone_until, swept=False)

    def _revoke_one(self, grant_id: str, tombstone_until: datetime, swept: bool) -> RevokeResult:
        name = user_name(self.settings, grant_id)
        stone_name = tombstone_name(self.settings, grant_id)
        users = {name: self._user(name), stone_name: self._user(stone_name)}
        return self._revoke([grant_id], tombstone_until, users, listed=False, swept=swept)[grant_id]

    def revoke_many(
        self, grant_ids: Sequence[str], tombstone_until: datetime
    ) -> dict[str, RevokeResult]:
        """The sweep's path: one listing of the users and their labels, and one of the
        connections, for the whole chunk, instead of three reads per grant."""
        if len(grant_ids) < 3:
            return {g: self._revoke_one(g, tombstone_until, swept=True) for g in grant_ids}
        return self._revoke(grant_ids, tombstone_until, self._listing(), listed=True, swept=True)

    def _revoke(
        self,
        grant_ids: Sequence[str],
        tombstone_until: datetime,
        users: dict[str, dict[str, Any] | None],
        listed: bool,
        swept: bool,
    ) -> dict[str, RevokeResult]:
        """`users`: the grants' users and tombstones by name, or (`listed`) every user.
        `swept`: the sweep's revoke, which also looks past today's tombstone."""
        results: dict[str, RevokeResult] = {}
        deleted: dict[str, tuple[str, CompactLabel]] = {}
        for grant_id in grant_ids:
            name = user_name(self.settings, grant_id)
            stone_name = tombstone_name(self.settings, grant_id)
            live = self._label(users.get(name), tombstone=False)
            stone = self._label(users.get(stone_name), tombstone=True)
            mine = self._label(users.get(stone_name), tombstone=False)
            if mine is not None and mine.grant_id == grant_id:
                results[grant_id] = self._end_in_place(stone_name, mine, tombstone_until)
                continue
            held = users.get(stone_name)
            if self._unlabelled(held):
                # A revoke stopped before its tombstone's label: this one writes it there.
                held = users[stone_name] = None
            if stone is None and held is not None:
                # Someone else's user holds the tombstone's name: never overwritten. Grants
                # are refused while it is there; the revoke says so until it is gone.
                blocked = f"user {stone_name} holds this grant's tombstone name; none written"
                if live is not None:
                    self._call("DELETE", f"/api/users/{quote(name, safe='')}", missing=True)
                gone = live is None or self._user(name) is None
                results[grant_id] = RevokeResult(
                    found=True,
                    principal=name,
                    expires_at=live.expires_at if live else None,
                    residual=[blocked] if gone else [blocked, f"user {name} still exists"],
                    verified=False,
                )
                continue
            if live is None:
                until = stone.expires_at if stone is not None else tombstone_until
                live = self._orphan(users, name, grant_id, until)
            # No live user under today's name: a revoke before its grant, or a grant made under
            # an earlier prefix. Past today's tombstone (a repeated revoke) only in the sweep:
            # a grant made again under today's name after the prefix changed leaves its first
            # user live under that tombstone, and the sweep finds it so.
            look = live is None and (stone is None or swept)
            other = self._elsewhere(grant_id, users if listed else None) if look else None
            if other is not None:
                name, live = other
            elif live is None and stone is None:
                # A grant writes its user and then looks for the tombstone, so the user is
                # looked for again once the tombstone is there: a delivery racing this revoke
                # either sees the tombstone and deletes its own user, or is found here.
                self._put_tombstone(stone_name, grant_id, tombstone_until, None)
                live = self._label(self._user(name), tombstone=False)
            if live is None:
                results[grant_id] = RevokeResult(found=False)
                continue
            if stone is None:
                # Not only until the grant's own expiry: a copy of the request signed later (a
                # retried publish) asks for a later one, and once the tombstone is forgotten it
                # would make the grant again, with the same password. `tombstone_until`
                # outlasts every copy signed before now.
                until = max(tombstone_until, live.expires_at)
                self._put_tombstone(stone_name, grant_id, until, live)
            self._call("DELETE", f"/api/users/{quote(name, safe='')}", missing=True)
            deleted[grant_id] = (name, live)
        if not deleted:
            return results
        names = [name for name, _ in deleted.values()]
        if len(names) == 1:
            remaining = {n for n in names if self._user(n) is not None}
        else:
            listing = self._call("GET", "/api/users").json()
            remaining = {str(u["name"]) for u in listing} & set(names)
        left = self._connections_left(names)
        for grant_id, (name, live) in deleted.items():
            residual = [f"user {name} still exists"] if name in remaining else []
            if left.get(name):
                residual.append(f"{left[name]} connection(s) of {name} still open")
            results[grant_id] = RevokeResult(
                found=True,
                principal=name,
                # An unlabelled user's expiry is not known (`_orphan`).
                expires_at=None if live.digest == ORPHAN_DIGEST else live.expires_at,
                residual=residual,
                verified=not residual,
            )
        return results

    def _end_in_place(self, name: str, live: CompactLabel, until: datetime) -> RevokeResult:
        """The grant's own user holds its tombstone's name (made under a prefix `x-` longer
        than today's): deleted, which closes its connections, then the tombstone written under
        the name it frees."""
        self._call("DELETE", f"/api/users/{quote(name, safe='')}", missing=True)
        self._put_tombstone(name, live.grant_id, max(until, live.expires_at), live)
        residual = []
        if self._label(self._user(name), tombstone=True) is None:
            residual.append(f"user {name} is not this grant's tombstone")
        # A delivery under today's prefix that ran before the tombstone was there: found here.
        today = user_name(self.settings, live.grant_id)
        ended = [name]
        if self._label(self._user(today), tombstone=False) is not None:
            self._call("DELETE", f"/api/users/{quote(today, safe='')}", missing=True)
            ended.append(today)
            if self._user(today) is not None:
                residual.append(f"user {today} still exists")
        for user, left in self._connections_left(ended).items():
            residual.append(f"{left} connection(s) of {user} still open")
        return RevokeResult(
            found=True,
            principal=name,
            expires_at=live.expires_at,
            residual=residual,
            verified=not residual,
        )

    def _elsewhere(
        self, grant_id: str, users: dict[str, dict[str, Any] | None] | None
    ) -> tuple[str, CompactLabel] | None:
        """The grant's user under another name than today's settings give it: made before
        `user_prefix` changed. Looked for only when a grant has no live user under today's
        name, in `users` when it lists every user, else in a listing read now."""
        if users is None:
            users = self._listing()
        for name, user in users.items():
            if userledger.grant_of_name(name) == grant_id:
                label = self._label(user, tombstone=False)
                if label is not None:
                    return name, label
        return None

    def _put_tombstone(
        self, stone_name: str, grant_id: str, until: datetime, live: CompactLabel | None
    ) -> None:
        """A user that cannot log in (no password, no permissions) whose label remembers the
        revoke until `until`, so a late or repeated grant is refused until then."""
        stone = userledger.tombstone_label(self.integration, grant_id, until, live)
        text = self._encode(stone_name, stone)
        quoted = quote(stone_name, safe="")
        self._write(label_calls(self.settings, quoted, text, self._hash(stone_name)))

    def _connections_left(self, names: list[str]) -> dict[str, int]:
        """Connections of deleted users, waited on (bounded); any still listed after the first
        look are closed by user name. The broker closes them itself when a user is deleted."""
        one = len(names) == 1
        path = (
            f"/api/connections/username/{quote(names[0], safe='')}" if one else "/api/connections"
        )
        wanted = set(names)
        deadline = time.monotonic() + self.settings.terminate_wait_seconds
        closed = False
        while True:
            response = self._call("GET", path, missing=True)
            rows = [] if response.status_code == 404 else response.json()
            counts: dict[str, int] = {}
            for row in rows:
                user = str(row.get("user", ""))
                if user in wanted:
                    counts[user] = counts.get(user, 0) + 1
            if not counts:
                return {}
            if not closed:
                for user in counts:
                    path_user = f"/api/connections/username/{quote(user, safe='')}"
                    self._call("DELETE", path_user, missing=True)
                closed = True
            if time.monotonic() >= deadline:
                return counts
            time.sleep(0.05)

    def forget(self, grant_id: str, principal: str | None = None) -> None:
        stone_name = principal or tombstone_name(self.settings, grant_id)
        label = self._label(self._user(stone_name), tombstone=True)
        if label is not None and label.grant_id == grant_id:
            self._call("DELETE", f"/api/users/{quote(stone_name, safe='')}", missing=True)

    # -- sweep and inventory ---------------------------------------------------------------

    def active_grants(self) -> list[Grant]:
        """Every labelled user, and every user of ours without a label (`_unlabelled`): under
        its grant's tombstone, live there as a label would say (the sweep ends it now); under
        today's name of a grant without one, as expired if it can reach anything (permissions
        or tags: a user made again by a password write after a revoke); and a tombstone a revoke
        left without its label, as an expired grant, whose revoke completes it. Those two only
        if still so a moment later: a delivery or a revoke labels its new user within
        milliseconds, and a user without permissions or tags reaches nothing and is the retry's
        to finish."""
        grants = []
        users = self._listing()
        stoned: set[str] = set()
        for name, user in users.items():
            label = self._label(user)
            if label is None:
                continue
            grants.append(userledger.grant_of(KIND, name, label))
            ending = userledger.tombstone_name("", label.grant_id)
            if label.state == "tombstone" and name.endswith(ending):
                live_name = userledger.user_name(name.removesuffix(ending), label.grant_id)
                orphan = self._orphan(users, live_name, label.grant_id, label.expires_at)
                if orphan is not None:
                    grants.append(userledger.grant_of(KIND, live_name, orphan))
                    stoned.add(live_name)
        waiting = self._unfinished(users, stoned)
        if not waiting:
            return grants
        time.sleep(UNLABELLED_WAIT_SECONDS)
        users = self._listing()
        reaching = {str(row["user"]) for row in self._call("GET", "/api/permissions").json()}
        for name in self._unfinished(users, stoned) & waiting:
            grant_id = str(userledger.grant_of_name(name))
            live_name = user_name(self.settings, grant_id)
            user = users[name] or {}
            if name == live_name and name not in reaching and not user.get("tags"):
                continue
            expired = CompactLabel(self.integration, grant_id, "active", EPOCH, "-", ORPHAN_DIGEST)
            grants.append(userledger.grant_of(KIND, live_name, expired))
        return grants

    def _unfinished(self, users: dict[str, dict[str, Any] | None], stoned: set[str]) -> set[str]:
        """Today's user and tombstone names of grants, held by users of ours without a label
        (those under a tombstone, `stoned`, aside)."""
        found = set()
        for name, user in users.items():
            grant_id = userledger.grant_of_name(name)
            if grant_id is None or name in stoned:
                continue
            if name not in (
                user_name(self.settings, grant_id),
                tombstone_name(self.settings, grant_id),
            ):
                continue
            if self._unlabelled(user):
                found.add(name)
        return found

    def inventory_records(self) -> Iterator[InventoryRecord]:
        """Users and virtual hosts by name: the user list also carries password hashes and
        tags, which are read here and never passed on."""
        for name in sorted(str(u["name"]) for u in self._call("GET", "/api/users").json()):
            yield InventoryRecord("user", name)
        for name in sorted(str(v["name"]) for v in self._call("GET", "/api/vhosts").json()):
            yield InventoryRecord("vhost", name)

    def inventory(self) -> dict[str, list[str]]:
        users = [str(u["name"]) for u in self._call("GET", "/api/users").json()]
        vhosts = [str(v["name"]) for v in self._call("GET", "/api/vhosts").json()]
        return {"users": sorted(users), "vhosts": sorted(vhosts)}
