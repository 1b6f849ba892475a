"""What the tests of the one-user-per-grant templates (Redis, RabbitMQ) share: a one-integration
catalog, an engine on it with a clock the test moves, the grant requests and the sealed
credentials. Each test module adds how to reach its server and how to log in.

Also what every rotation test shares, whatever its target: grants and revokes run in a loop
beside the rotation (`grant_revoke_loop`), each a grant or revoke of one permission
(`grant_or_revoke`)."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.local import MemorySink, NullScheduler
from jitc.messages import parse_request
from jitc.models import AccessRequest, derive_grant_id
from jitc.sealing import box_keypair, unseal
from jitc.secrets import EnvSecretStore, SecretStores

BOX_PRIVATE, BOX_PUBLIC = box_keypair()
LABEL_KEY = secrets.token_urlsafe(32)


def catalog_doc(
    integration: str, kind: str, connection: dict[str, Any], permissions: dict[str, Any]
) -> dict[str, Any]:
    """One integration whose admin secret is `mem:admin`, under the run's label key."""
    return {
        "connector": {"label_key": "mem:label"},
        "integrations": {
            integration: {
                "kind": kind,
                "connection": connection,
                "credentials": "mem:admin",
                "max_duration": "8h",
                "permissions": permissions,
            }
        },
    }


@dataclass
class UserEnv:
    """An engine on the test's catalog; grants default to `read-only` on `resource`."""

    engine: Engine
    sink: MemorySink
    now: list[datetime]
    integration: str
    resource: str

    def request(self, action: str = "grant", **fields: Any) -> AccessRequest:
        doc: dict[str, Any] = {
            "request_id": fields.pop("request_id", f"r-{secrets.token_hex(4)}"),
            "action": action,
            "integration": self.integration,
        }
        if action == "grant":
            doc.update(
                permission="read-only",
                resources=[self.resource],
                identity={"email": "alice@example.com", "public_key": BOX_PUBLIC},
                duration="15m",
            )
        doc.update(fields)
        return parse_request(json.dumps(doc))

    def credentials(self, sealed: str | None) -> dict[str, str]:
        assert sealed is not None
        return unseal(sealed, BOX_PRIVATE)


def engine_parts(
    doc: dict[str, Any], secret: str, sink: MemorySink | None = None
) -> dict[str, Any]:
    """The engine, sink and clock of a `UserEnv` on `doc`, with `secret` as the admin's."""
    now = [datetime.now(UTC)]
    sink = sink or MemorySink()
    clock: Callable[[], datetime] = lambda: now[0]  # noqa: E731
    engine = Engine(
        parse_catalog(doc),
        SecretStores({"mem": EnvSecretStore({"admin": secret, "label": LABEL_KEY})}),
        NullScheduler(),
        sink,
        clock=clock,
    )
    return {"engine": engine, "sink": sink, "now": now}


def assert_secrets_stay_out(env: UserEnv, doc: dict[str, Any], admin_password: str) -> None:
    """Grant, revoke, then fail to log in with a wrong admin password: neither the admin's
    password, nor the one tried, nor the grantee's, reaches any event or outcome."""
    outcome = env.engine.execute(env.request(request_id="canary-1"))
    creds = env.credentials(outcome.sealed_credentials)
    env.engine.execute(env.request("revoke", request_id="canary-1"))
    wrong = engine_parts(doc, admin_password + "-wrong", env.sink)["engine"]
    assert wrong.execute(env.request()).status == "failed"
    text = json.dumps(
        [e.model_dump(mode="json") for e in env.sink.events]
        + [o.model_dump(mode="json") for o in env.sink.outcomes]
    )
    assert admin_password not in text and creds["password"] not in text


def assert_taken_tombstone_names_are_left_alone(
    env: UserEnv,
    prefix: str,
    make_user: Callable[[str], None],
    read: Callable[[tuple[str, ...]], Any],
    can_login: Callable[[dict[str, str]], bool],
) -> None:
    """A user the connector did not make, under the name a grant's tombstone would take: the
    revoke ends the grant's access but never overwrites that user, and stays unverified (no
    tombstone could be written); a grant whose tombstone name is taken is refused."""
    grant = env.engine.execute(env.request(request_id="stone-1"))
    creds = env.credentials(grant.sealed_credentials)
    taken = f"{prefix}x-{grant.grant_id}"
    early = f"{prefix}x-{derive_grant_id(env.integration, 'stone-2')}"
    for name in (taken, early):
        make_user(name)
    before = read((taken, early))
    revoke = env.engine.execute(env.request("revoke", request_id="stone-1"))
    assert revoke.status == "failed" and not revoke.verified, revoke
    assert any(taken in line for line in revoke.residual), revoke.residual
    assert not can_login(creds)
    refused = env.engine.execute(env.request(request_id="stone-2"))
    assert refused.status == "refused" and "tombstone" in str(refused.message), refused
    assert env.engine.execute(env.request("revoke", request_id="stone-2")).status == "failed"
    assert read((taken, early)) == before


def grant_or_revoke(
    integration: str, permission: str, resource: str
) -> Callable[[str, str], AccessRequest]:
    """The request for `action` ("grant" or "revoke") under `request_id`: a grant of
    `permission` on `resource`, or the revoke of the grant that request id made."""

    def build(request_id: str, action: str) -> AccessRequest:
        doc: dict[str, Any] = {
            "request_id": request_id,
            "action": action,
            "integration": integration,
        }
        if action == "grant":
            doc.update(
                permission=permission,
                resources=[resource],
                identity={"email": "a@example.com", "username": "a", "public_key": BOX_PUBLIC},
                duration="10m",
            )
        else:
            doc["grant_id"] = derive_grant_id(integration, request_id)
        return parse_request(json.dumps(doc))

    return build


@dataclass
class GrantRevokeLoop:
    """What the worker of `grant_revoke_loop` saw: every grant or revoke that did not succeed
    (and the worker's own death, or that it did not stop), and how many rounds it started."""

    failures: list[str] = field(default_factory=list)
    rounds: int = 0
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_rounds(self, count: int, timeout: float = 60) -> bool:
        """Until `count` more rounds have started than had when called."""
        with self._changed:
            target = self.rounds + count
            return self._changed.wait_for(lambda: self.rounds >= target, timeout)

    def _started(self) -> None:
        with self._changed:
            self.rounds += 1
            self._changed.notify_all()


@contextmanager
def grant_revoke_loop(
    engine: Callable[[], Engine],
    request: Callable[[str, str], AccessRequest],
    prefix: str,
    within: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> Iterator[GrantRevokeLoop]:
    """A worker thread that grants and revokes (`request(f"{prefix}{n}", action)`) in a loop
    for as long as the block runs, and for four rounds at least. The engine is made by
    `engine()` in the worker, inside `within()` (context variables do not cross threads).
    Once the block is left the worker has stopped and `failures` is complete."""
    seen = GrantRevokeLoop()
    stop = threading.Event()

    def loop() -> None:
        try:
            with within():
                worker = engine()
                n = 0
                while not stop.is_set() or n < 4:
                    n += 1
                    seen._started()
                    for action in ("grant", "revoke"):
                        outcome = worker.execute(request(f"{prefix}{n}", action))
                        if outcome.status not in ("granted", "revoked"):
                            seen.failures.append(
                                f"{action} {n}: {outcome.status} {outcome.message}"
                            )
        except Exception as exc:
            # A worker that dies must fail the test, not leave its failures empty.
            seen.failures.append(f"worker died: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=120)
        if thread.is_alive():
            seen.failures.append("worker did not stop within 120s")
