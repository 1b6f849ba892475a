"""The RabbitMQ template through the engine, against the real broker on this machine: the
management API (JITC_TEST_RABBITMQ_API, default http://127.0.0.1:15672, guest/guest) and AMQP on
5672 through pika for live connections."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pika
import pika.exceptions
import pytest
import userenv
from userenv import BOX_PUBLIC, LABEL_KEY, UserEnv, engine_parts

from jitc.catalog import catalog_warnings, parse_catalog
from jitc.errors import CatalogError, Refused, TargetError
from jitc.labels import CompactLabel, LabelKey, encode_compact_label
from jitc.models import Identity, derive_grant_id
from jitc.secrets import Secret
from jitc.templates.base import GrantSpec
from jitc.templates.rabbitmq import Permission as RabbitMQPermission
from jitc.templates.rabbitmq_session import RabbitMQSession

API = os.environ.get("JITC_TEST_RABBITMQ_API", "http://127.0.0.1:15672")
AMQP_PORT = int(os.environ.get("JITC_TEST_RABBITMQ_PORT", "5672"))
RUN = secrets.token_hex(3)
PREFIX = f"t{RUN}-"
INTEGRATION = f"rmq-{RUN}"
VHOST = f"t{RUN}"
OTHER_VHOST = f"t{RUN}-b"
ADMIN = f"t{RUN}admin"
ADMIN_PASSWORD = secrets.token_urlsafe(18)
LEDGER = f"t{RUN}-ledger"


def users(root: httpx.Client) -> dict[str, dict[str, Any]]:
    """Every user, each with its topic permissions (`topic`: the labels are there)."""
    found = {u["name"]: {**u, "topic": []} for u in root.get("/api/users").json()}
    for row in root.get("/api/topic-permissions").json():
        if row["user"] in found:
            found[row["user"]]["topic"].append((row["vhost"], row["exchange"]))
    return found


def labels(root: httpx.Client, name: str) -> list[str]:
    return [e for v, e in users(root)[name]["topic"] if v == LEDGER]


def put_label(root: httpx.Client, name: str, label: str) -> None:
    root.put(
        f"/api/topic-permissions/{LEDGER}/{quote(name, safe='')}",
        json={"exchange": label, "write": "^$", "read": "^$"},
    ).raise_for_status()


def watched(root: httpx.Client) -> dict[str, dict[str, Any]]:
    """Every user this test run can be held to: guest, the run's admin and the run's prefix.
    Other runs on the shared broker add and remove their own users meanwhile."""
    return {n: u for n, u in users(root).items() if n in ("guest", ADMIN) or n.startswith(PREFIX)}


def ours(root: httpx.Client) -> list[str]:
    return sorted(n for n in users(root) if n.startswith(PREFIX))


def catalog_doc(**permissions: dict[str, Any]) -> dict[str, Any]:
    perms: dict[str, Any] = {
        "read-only": {"template": "read-only", "resources": [VHOST, OTHER_VHOST]},
        "read-write": {"template": "read-write", "resources": [VHOST], "tags": ["management"]},
        "admin": {
            "template": "full",
            "resources": [VHOST],
            "tags": ["administrator"],
            "privileged": True,
        },
    }
    perms.update(permissions)
    connection = {
        "api_url": API,
        "user": ADMIN,
        "user_prefix": PREFIX,
        "ledger_vhost": LEDGER,
        "amqp_port": AMQP_PORT,
        "terminate_wait_seconds": 3,
    }
    return userenv.catalog_doc(INTEGRATION, "rabbitmq", connection, perms)


@dataclass
class Env(UserEnv):
    root: httpx.Client

    def login(self, creds: dict[str, str], vhost: str = VHOST) -> pika.BlockingConnection:
        return pika.BlockingConnection(
            pika.ConnectionParameters(
                "127.0.0.1",
                AMQP_PORT,
                vhost,
                pika.PlainCredentials(creds["username"], creds["password"]),
                connection_attempts=1,
                socket_timeout=5,
            )
        )

    def can_login(self, creds: dict[str, str], vhost: str = VHOST) -> bool:
        try:
            self.login(creds, vhost).close()
        except pika.exceptions.AMQPConnectionError:
            return False
        return True


@pytest.fixture(scope="module")
def root() -> Iterator[httpx.Client]:
    client = httpx.Client(base_url=API, auth=("guest", "guest"), timeout=10)
    try:
        client.get("/api/overview").raise_for_status()
    except httpx.HTTPError as exc:
        pytest.skip(f"RabbitMQ management API is not reachable at {API}: {exc}")
    for vhost in (VHOST, OTHER_VHOST):
        client.put(f"/api/vhosts/{vhost}").raise_for_status()
    client.put(
        f"/api/users/{ADMIN}", json={"password": ADMIN_PASSWORD, "tags": "administrator"}
    ).raise_for_status()
    # The test itself uses the queue below as the admin.
    client.put(
        f"/api/permissions/{VHOST}/guest", json={"configure": ".*", "write": ".*", "read": ".*"}
    ).raise_for_status()
    yield client
    for name in ours(client):
        client.delete(f"/api/users/{quote(name, safe='')}")
    client.delete(f"/api/users/{ADMIN}")
    for vhost in (VHOST, OTHER_VHOST, LEDGER):
        client.delete(f"/api/vhosts/{vhost}")
    client.close()


@pytest.fixture
def make_env(root: httpx.Client) -> Iterator[Callable[..., Env]]:
    def make(doc: dict[str, Any] | None = None, secret: str = ADMIN_PASSWORD) -> Env:
        parts = engine_parts(doc or catalog_doc(), secret)
        return Env(**parts, integration=INTEGRATION, resource=VHOST, root=root)

    yield make
    for name in ours(root):
        root.delete(f"/api/users/{quote(name, safe='')}")


@pytest.fixture
def env(make_env: Callable[..., Env]) -> Env:
    return make_env()


def _declare(channel: Any, name: str) -> None:
    channel.queue_declare(queue=name, durable=False, auto_delete=False)


def test_grant_allows_reading_denies_writing_and_revoke_closes_the_live_connection(
    env: Env,
) -> None:
    setup = pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1", AMQP_PORT, VHOST, pika.PlainCredentials("guest", "guest")
        )
    )
    queue = f"t{RUN}-q"
    setup.channel().queue_declare(queue=queue)
    setup.channel().basic_publish("", queue, b"hello")
    setup.close()

    outcome = env.engine.execute(env.request(request_id="ro-1"))
    assert outcome.status == "granted", outcome
    creds = env.credentials(outcome.sealed_credentials)
    assert creds["username"] == outcome.principal == f"{PREFIX}{outcome.grant_id}"
    live = env.login(creds)
    channel = live.channel()
    _, _, body = channel.basic_get(queue, auto_ack=True)
    assert body == b"hello"
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as denied:
        channel.queue_declare(queue=f"t{RUN}-new")
    assert denied.value.reply_code == 403
    channel = live.channel()
    channel.basic_publish("", queue, b"sent")  # the broker refuses on the channel, async
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as denied:
        channel.basic_get(queue)
    assert denied.value.reply_code == 403
    # Not granted on the other vhost.
    assert not env.can_login(creds, OTHER_VHOST)

    revoke = env.engine.execute(env.request("revoke", request_id="ro-1"))
    assert revoke.status == "revoked" and revoke.verified is True and revoke.residual == []
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        for _ in range(50):
            live.process_data_events(time_limit=0.1)
    assert closed.value.reply_code == 320
    assert not env.can_login(creds)
    assert outcome.principal not in users(env.root)


def test_read_write_publishes_and_the_label_is_a_topic_permission_in_the_ledger(env: Env) -> None:
    outcome = env.engine.execute(env.request(permission="read-write"))
    creds = env.credentials(outcome.sealed_credentials)
    conn = env.login(creds)
    conn.channel().basic_publish("amq.topic", "x", b"ok")
    conn.close()
    user = users(env.root)[creds["username"]]
    # The label is no tag (an Erlang atom, never freed): only the catalog's tags are there.
    assert user["tags"] in (["management"], "management")
    (label,) = labels(env.root, creds["username"])
    assert label.startswith(f"jitc1:{INTEGRATION}:{outcome.grant_id}:a:")
    assert user["topic"] == [(LEDGER, label)] and "alice" not in label
    ledger = env.root.get(f"/api/vhosts/{LEDGER}").json()
    assert "ledger" in ledger["description"]
    limits = env.root.get(f"/api/user-limits/{creds['username']}").json()
    assert limits[0]["value"] == {"max-connections": 3, "max-channels": 32}
    # The password never reached the server in the clear: only a salted hash is stored.
    assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"


def test_connection_limit_is_enforced(env: Env) -> None:
    outcome = env.engine.execute(env.request())
    creds = env.credentials(outcome.sealed_credentials)
    held = [env.login(creds) for _ in range(3)]
    assert not env.can_login(creds)
    for conn in held:
        conn.close()


def test_plan_has_no_side_effects_and_masks_the_password(env: Env) -> None:
    before = watched(env.root)
    outcome = env.engine.plan(env.request(permission="read-write"))
    assert outcome.status == "planned"
    assert watched(env.root) == before
    first, label, password, *rest = outcome.statements
    assert first.startswith(f"PUT /api/users/{PREFIX}")
    assert '"password_hash": "********"' in first and '"tags": ""' in first
    assert label.startswith(f"PUT /api/topic-permissions/{LEDGER}/{PREFIX}")
    assert '"exchange": "jitc1:' in label and '"read": "^$"' in label
    assert password.startswith(f"PUT /api/users/{PREFIX}")
    assert '"password_hash": "********"' in password and '"tags": "management"' in password
    assert rest[-1].endswith(
        f'/{VHOST}/{PREFIX}{outcome.grant_id} {{"configure": "^$", "read": ".*", "write": ".*"}}'
    )


def test_redelivered_grant_hands_out_the_same_credentials(env: Env) -> None:
    request = env.request(request_id="dup-1")
    first = env.engine.execute(request)
    second = env.engine.execute(request)
    assert second.status == "granted" and second.reissued and second.principal == first.principal
    assert env.credentials(second.sealed_credentials) == env.credentials(first.sealed_credentials)
    assert env.can_login(env.credentials(first.sealed_credentials))
    assert ours(env.root) == [first.principal]


def test_another_body_under_the_same_request_id_is_refused(env: Env) -> None:
    assert env.engine.execute(env.request(request_id="same-1")).status == "granted"
    before = watched(env.root)
    refused = env.engine.execute(
        env.request(
            request_id="same-1",
            permission="read-write",
            identity={"email": "mallory@example.com", "public_key": BOX_PUBLIC},
        )
    )
    assert refused.status == "refused" and refused.field == "request_id"
    assert watched(env.root) == before


def test_revoke_before_grant_double_revoke_and_late_grant(env: Env) -> None:
    revoke = env.request("revoke", request_id="early-1")
    first = env.engine.execute(revoke)
    assert first.status == "revoked" and first.message and "nothing to revoke" in first.message
    late = env.engine.execute(env.request(request_id="early-1"))
    assert late.status == "refused" and late.field == "request_id"
    assert [n for n in ours(env.root) if not n.startswith(f"{PREFIX}x-")] == []
    assert env.engine.execute(revoke).status == "revoked"


def test_revoke_then_redelivered_grant_is_refused(env: Env) -> None:
    grant = env.request(request_id="again-1")
    assert env.engine.execute(grant).status == "granted"
    assert env.engine.execute(env.request("revoke", request_id="again-1")).status == "revoked"
    assert env.engine.execute(grant).status == "refused"
    assert [n for n in ours(env.root) if not n.startswith(f"{PREFIX}x-")] == []


def test_overlapping_grants_are_independent(env: Env) -> None:
    one = env.engine.execute(env.request(request_id="ov-1", duration="10m"))
    two = env.engine.execute(env.request(request_id="ov-2", duration="1h"))
    env.engine.execute(env.request("revoke", request_id="ov-1"))
    assert not env.can_login(env.credentials(one.sealed_credentials))
    assert env.can_login(env.credentials(two.sealed_credentials))


def test_revoke_is_frozen_at_grant_time_when_the_catalog_changes(
    make_env: Callable[..., Env],
) -> None:
    before = make_env()
    outcome = before.engine.execute(before.request(request_id="frozen-1", permission="read-write"))
    creds = before.credentials(outcome.sealed_credentials)
    after = make_env(
        catalog_doc(**{"read-write": {"template": "read-only", "resources": [OTHER_VHOST]}})
    )
    revoke = after.engine.execute(after.request("revoke", request_id="frozen-1"))
    assert revoke.status == "revoked" and revoke.verified
    assert not after.can_login(creds)


def test_sweep_revokes_what_expired_and_later_forgets_tombstones(env: Env) -> None:
    short = env.engine.execute(env.request(request_id="sw-1", duration="5m"))
    long = env.engine.execute(env.request(request_id="sw-2", duration="2h"))
    env.now[0] += timedelta(minutes=6)
    report = env.engine.sweep()
    assert report.revoked == [short.grant_id] and report.ok
    assert not env.can_login(env.credentials(short.sealed_credentials))
    assert env.can_login(env.credentials(long.sealed_credentials))
    assert f"{PREFIX}x-{short.grant_id}" in users(env.root)
    # A tombstone outlasts every copy of the request signed before its revoke: the
    # integration's max_duration (8h) and the margins after it.
    env.now[0] += timedelta(hours=9)
    report = env.engine.sweep()
    assert report.revoked == [long.grant_id] and short.grant_id in report.forgotten


def test_sweep_ends_a_grant_found_live_under_its_own_tombstone(env: Env) -> None:
    """A delivery cut short between its write and its look for the tombstone leaves the grant's
    user under the grant's own tombstone. The tombstone says the grant was revoked: the sweep
    ends the user at once, not at its expiry, and the tombstone stays."""
    outcome = env.engine.execute(env.request(request_id="under-1", duration="2h"))
    creds = env.credentials(outcome.sealed_credentials)
    integration = env.engine.catalog.integration(INTEGRATION)
    session = integration.template.open(
        INTEGRATION,
        integration.connection,
        Secret(ADMIN_PASSWORD),
        label_key=LabelKey.from_secret(LABEL_KEY),
    )
    assert isinstance(session, RabbitMQSession)
    grant_id = str(outcome.grant_id)
    until = datetime.now(UTC) + timedelta(hours=9)
    session._put_tombstone(f"{PREFIX}x-{grant_id}", grant_id, until, None)
    session.close()
    assert env.can_login(creds)
    report = env.engine.sweep()
    assert report.revoked == [grant_id] and report.ok, report
    assert not env.can_login(creds)
    assert f"{PREFIX}x-{grant_id}" in users(env.root)


def test_users_the_connector_did_not_create_are_never_changed(env: Env) -> None:
    grant = env.engine.execute(env.request(request_id="mine-1"))
    assert grant.grant_id is not None
    past = int((datetime.now(UTC) - timedelta(days=1)).timestamp())
    forged = f"jitc1:{INTEGRATION}:{grant.grant_id}:a:{past}:read-only:abcdefgh:forged"
    # Strangers' users under our naming scheme with a forged label, as a tag (the form of
    # earlier versions) and in the ledger, and plain ones.
    collide = derive_grant_id(INTEGRATION, "collide-1")
    strangers = {
        f"{PREFIX}gzzzzzzzzzzzzzzzzzzzzzzzz": forged,
        f"{PREFIX}gyyyyyyyyyyyyyyyyyyyyyyyy": "",
        f"{PREFIX}stranger": "management",
        # Already holds the name a grant would get, and no label of ours.
        f"{PREFIX}{collide}": "",
    }
    for name, tags in strangers.items():
        env.root.put(f"/api/users/{name}", json={"password": "x", "tags": tags}).raise_for_status()
    put_label(env.root, f"{PREFIX}gyyyyyyyyyyyyyyyyyyyyyyyy", forged)
    before = {n: u for n, u in users(env.root).items() if n in strangers}
    env.now[0] += timedelta(hours=1)
    report = env.engine.sweep()
    assert report.revoked == [grant.grant_id]
    refused = env.engine.execute(env.request(request_id="collide-1"))
    assert refused.status == "refused" and refused.field == "request_id"
    assert env.engine.execute(env.request("revoke", request_id="collide-1")).status == "revoked"
    assert {n: u for n, u in users(env.root).items() if n in strangers} == before


def test_a_label_under_another_key_or_copied_to_another_user_is_not_ours(env: Env) -> None:
    outcome = env.engine.execute(env.request())
    integration = env.engine.catalog.integration(INTEGRATION)
    other = RabbitMQSession(
        INTEGRATION,
        integration.connection,
        Secret(ADMIN_PASSWORD),
        LabelKey.from_secret("another-label-key-0123456789"),
    )
    assert outcome.grant_id not in {g.grant_id for g in other.active_grants()}
    assert other.revoke(str(outcome.grant_id), datetime.now(UTC)).found is False
    other.close()
    # The genuine label copied onto another user, in the ledger and as a tag: the MAC binds
    # it to its user name.
    (label,) = labels(env.root, str(outcome.principal))
    copy = f"{PREFIX}gaaaaaaaaaaaaaaaaaaaaaaaa"
    env.root.put(f"/api/users/{copy}", json={"password": "x", "tags": label})
    put_label(env.root, copy, label)
    mine = integration.template.open(
        INTEGRATION,
        integration.connection,
        Secret(ADMIN_PASSWORD),
        label_key=LabelKey.from_secret(LABEL_KEY),
    )
    assert copy not in {g.principal for g in mine.active_grants()}
    mine.close()
    env.root.delete(f"/api/users/{copy}")


def test_hostile_catalogs_are_refused() -> None:
    for bad in (
        {"template": "full", "tags": ["administrator"], "resources": [VHOST]},
        {"template": "full", "tags": ["monitoring"], "resources": [VHOST]},
        {"configure": "(", "write": ".*", "read": ".*", "resources": [VHOST]},
        {"template": "full", "write": ".*", "resources": [VHOST]},
        {"template": "full", "resources": [VHOST], "vhosts": {VHOST: ".."}},
    ):
        with pytest.raises(CatalogError):
            parse_catalog(catalog_doc(bad=bad))
    doc = catalog_doc()
    doc["integrations"][INTEGRATION]["connection"]["api_url"] = "http://example.com:15672"
    with pytest.raises(CatalogError, match="allow_insecure_transport"):
        parse_catalog(doc)
    doc["integrations"][INTEGRATION]["connection"]["allow_insecure_transport"] = True
    assert any("http://" in w for w in catalog_warnings(parse_catalog(doc)))


def test_hostile_requests_are_refused_with_the_broker_unchanged(env: Env) -> None:
    before = watched(env.root)
    for resources in (["../users"], ["%2F"], [f"{VHOST}/../x"], ["/"]):
        try:
            outcome = env.engine.execute(env.request(resources=resources))
        except Refused:
            continue
        assert outcome.status == "refused"
    outcome = env.engine.execute(env.request(resources=["unlisted"]))
    assert outcome.status == "refused" and outcome.field == "resources[0]"
    assert watched(env.root) == before


def test_privileged_permission_alone_gets_the_administrator_tag(env: Env) -> None:
    outcome = env.engine.execute(env.request(permission="admin"))
    creds = env.credentials(outcome.sealed_credentials)
    api = httpx.Client(base_url=API, auth=(creds["username"], creds["password"]))
    assert api.get("/api/whoami").json()["tags"][0] == "administrator"
    api.close()
    plain = env.credentials(env.engine.execute(env.request()).sealed_credentials)
    api = httpx.Client(base_url=API, auth=(plain["username"], plain["password"]))
    assert api.get("/api/users").status_code == 401
    api.close()


def test_secrets_never_reach_events_or_outcomes(env: Env) -> None:
    userenv.assert_secrets_stay_out(env, catalog_doc(), ADMIN_PASSWORD)


def test_sweep_of_many_revokes_them_in_one_pass_and_closes_their_connections(env: Env) -> None:
    outcomes = [env.engine.execute(env.request(duration="5m")) for _ in range(4)]
    keep = env.engine.execute(env.request(duration="2h"))
    live = env.login(env.credentials(outcomes[0].sealed_credentials))
    env.now[0] += timedelta(minutes=6)
    report = env.engine.sweep()
    assert sorted(report.revoked) == sorted(str(o.grant_id) for o in outcomes) and report.ok
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
        for _ in range(50):
            live.process_data_events(time_limit=0.1)
    assert [n for n in ours(env.root) if not n.startswith(f"{PREFIX}x-")] == [keep.principal]
    assert env.can_login(env.credentials(keep.sealed_credentials))


def test_a_management_grantee_cannot_change_its_own_user_or_see_others(env: Env) -> None:
    outcome = env.engine.execute(env.request(permission="read-write"))
    creds = env.credentials(outcome.sealed_credentials)
    before = users(env.root)[creds["username"]]
    auth = (creds["username"], creds["password"])
    me = httpx.get(f"{API}/api/whoami", auth=auth).json()
    assert me["name"] == creds["username"] and "administrator" not in me["tags"]
    for method, path, body in (
        ("PUT", f"/api/users/{creds['username']}", {"password": "x", "tags": "administrator"}),
        ("PUT", f"/api/user-limits/{creds['username']}/max-connections", {"value": 1000}),
        ("DELETE", f"/api/users/{ADMIN}", None),
        ("GET", "/api/users", None),
    ):
        # A client per call: the broker closes the connection after refusing one.
        assert httpx.request(method, f"{API}{path}", json=body, auth=auth).status_code in (
            401,
            403,
        ), path
    assert users(env.root)[creds["username"]] == before


def test_inventory_lists_users_and_vhosts_from_the_broker(env: Env) -> None:
    outcome = env.engine.execute(env.request())
    integration = env.engine.catalog.integration(INTEGRATION)
    session = integration.template.open(
        INTEGRATION, integration.connection, Secret(ADMIN_PASSWORD), LabelKey.from_secret(LABEL_KEY)
    )
    inventory = session.inventory()
    session.close()
    assert outcome.principal in inventory["users"] and ADMIN in inventory["users"]
    assert {VHOST, OTHER_VHOST} <= set(inventory["vhosts"])


def test_a_revoke_racing_a_delivery_of_the_same_grant_still_ends_it(env: Env) -> None:
    """The revoke reads the broker just before a concurrent delivery makes the user: the
    tombstone must be written before the revoke looks for the user, or the user outlives it."""
    integration = env.engine.catalog.integration(INTEGRATION)
    key = LabelKey.from_secret(LABEL_KEY)
    secret = Secret(ADMIN_PASSWORD)
    granter = integration.template.open(INTEGRATION, integration.connection, secret, key)
    revoker = integration.template.open(INTEGRATION, integration.connection, secret, key)
    grant_id = derive_grant_id(INTEGRATION, f"race-{secrets.token_hex(4)}")
    spec = GrantSpec(
        grant_id=grant_id,
        request_id=f"r-{grant_id}",
        integration=INTEGRATION,
        permission_name="read-only",
        permission=RabbitMQPermission(template="read-only", resources=[VHOST]),
        resources=(VHOST,),
        identity=Identity(email="alice@example.com"),
        expires_at=datetime.now(UTC) + timedelta(minutes=15),
        request_digest=f"d-{grant_id}",
    )
    first_read = revoker._user
    reads: list[str] = []
    raced = []

    def read_then_race(name: str) -> dict[str, Any] | None:
        found = first_read(name)
        reads.append(name)
        if len(reads) == 2:  # the revoke has read the user and the tombstone: none of either
            raced.append(granter.grant(spec))
        return found

    revoker._user = read_then_race  # type: ignore[method-assign]
    try:
        result = revoker.revoke(grant_id, datetime.now(UTC) + timedelta(hours=1))
        assert raced, "the concurrent delivery did not run"
        assert result.found and result.verified
        assert f"{PREFIX}{grant_id}" not in users(env.root)
    finally:
        granter.close()
        revoker.close()


def test_a_stranger_holding_a_tombstone_name_is_never_overwritten(env: Env) -> None:
    def make_user(name: str) -> None:
        env.root.put(f"/api/users/{name}", json={"password": "x", "tags": ""}).raise_for_status()

    userenv.assert_taken_tombstone_names_are_left_alone(
        env,
        PREFIX,
        make_user,
        lambda names: {n: u for n, u in users(env.root).items() if n in names},
        env.can_login,
    )


def test_the_inventory_sync_sends_user_names_never_their_password_hashes(env: Env) -> None:
    import io
    import json

    from jitc.inventory import JsonLinesTransport, MemorySyncState

    outcome = env.engine.execute(env.request())
    out = io.StringIO()
    report = env.engine.sync(JsonLinesTransport(out), MemorySyncState(), names=[INTEGRATION])
    assert report.ok, report.as_dict()
    records = [
        r for line in out.getvalue().splitlines()
        for r in json.loads(line)["inventory"].get("records", [])
    ]  # fmt: skip
    names = {(r["kind"], r["name"]) for r in records}
    assert {("user", ADMIN), ("user", str(outcome.principal)), ("vhost", VHOST)} <= names
    assert ("grant", outcome.grant_id) in names
    # The management API returns each user's password hash with its name: never passed on.
    hashes = {
        u["password_hash"]
        for u in httpx.get(f"{API}/api/users", auth=(ADMIN, ADMIN_PASSWORD)).json()
        if u.get("password_hash")
    }
    assert hashes and not any(h in out.getvalue() for h in hashes)
    assert "password_hash" not in out.getvalue() and ADMIN_PASSWORD not in out.getvalue()


def test_two_requests_racing_under_one_grant_id_never_share_permissions(env: Env) -> None:
    """Two different requests under one request id, both read before either writes: the one
    that writes last must not hand out a password that reaches the other's vhosts."""
    integration = env.engine.catalog.integration(INTEGRATION)
    key = LabelKey.from_secret(LABEL_KEY)
    first, second = (
        integration.template.open(INTEGRATION, integration.connection, Secret(ADMIN_PASSWORD), key)
        for _ in range(2)
    )
    grant_id = derive_grant_id(INTEGRATION, f"twin-{secrets.token_hex(4)}")

    def spec(permission: str, vhost: str) -> GrantSpec:
        return GrantSpec(
            grant_id=grant_id,
            request_id=f"r-{grant_id}",
            integration=INTEGRATION,
            permission_name=permission,
            permission=RabbitMQPermission(template=permission, resources=[VHOST, OTHER_VHOST]),
            resources=(vhost,),
            identity=Identity(email=f"{permission}@example.com"),
            expires_at=datetime.now(UTC) + timedelta(minutes=15),
            request_digest=f"d-{permission}-{grant_id}",
        )

    read = first._user
    raced: list[Any] = []

    def read_then_race(name: str) -> Any:
        found = read(name)
        if not raced:
            raced.append(second.grant(spec("read-write", OTHER_VHOST)))
        return found

    first._user = read_then_race  # type: ignore[method-assign]
    try:
        # The later writer finds the other's vhost on the user: the user goes, and the queue's
        # retry decides afresh. Before, it handed out a password that reached both vhosts.
        with pytest.raises(TargetError):
            first.grant(spec("read-only", VHOST))
        assert raced and raced[0].credentials is not None
        assert not env.can_login(raced[0].credentials, OTHER_VHOST)
        assert env.root.get(f"/api/users/{PREFIX}{grant_id}").status_code == 404
    finally:
        first.close()
        second.close()


def atom_count() -> int:
    """The broker node's atoms: `rabbitmqctl` on this machine, as CI's `.ci/run` starts it."""
    out = subprocess.run(
        ["rabbitmqctl", "eval", "erlang:system_info(atom_count)."],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(out.stdout.strip())


def test_grants_and_revokes_leave_no_atom_behind_in_the_broker(env: Env) -> None:
    """RabbitMQ keeps each distinct tag as an Erlang atom, never freed while the node runs, and
    the node stops when its atom table is full: a label per grant in the tags was a countdown
    to the broker's crash. Labels in topic permissions are data, freed with the user."""
    env.engine.execute(env.request(request_id="atoms-warm"))  # the first grant's one-offs
    before = atom_count()
    for index in range(30):
        request_id = f"atoms-{index}"
        assert env.engine.execute(env.request(request_id=request_id)).status == "granted"
        assert env.engine.execute(env.request("revoke", request_id=request_id)).status == "revoked"
    # 60 with a label tag on each user and on each tombstone; a few for the broker's own work.
    assert atom_count() - before < 10


def _to_tag_label(root: httpx.Client, name: str) -> None:
    """Rewrite a user's label in the form earlier versions wrote: a tag, no topic permission."""
    (label,) = labels(root, name)
    user = users(root)[name]
    tags = (
        user["tags"]
        if isinstance(user["tags"], list)
        else [t for t in user["tags"].split(",") if t]
    )
    root.delete(f"/api/topic-permissions/{LEDGER}/{quote(name, safe='')}").raise_for_status()
    root.put(
        f"/api/users/{quote(name, safe='')}",
        json={"password_hash": user["password_hash"], "tags": ",".join([*tags, label])},
    ).raise_for_status()
    assert labels(root, name) == []


def test_users_labelled_in_their_tags_by_an_earlier_version_are_still_the_connector_s(
    env: Env,
) -> None:
    old = env.engine.execute(env.request(request_id="legacy-1", duration="5m"))
    kept = env.engine.execute(env.request(request_id="legacy-2", duration="2h"))
    gone = env.engine.execute(env.request(request_id="legacy-3", duration="2h"))
    assert env.engine.execute(env.request("revoke", request_id="legacy-3")).status == "revoked"
    for name in (old.principal, kept.principal, f"{PREFIX}x-{gone.grant_id}"):
        _to_tag_label(env.root, str(name))
    # A redelivery moves the label into the ledger and hands out the same credentials.
    again = env.engine.execute(env.request(request_id="legacy-2", duration="2h"))
    assert again.status == "granted" and again.reissued, again
    creds = env.credentials(again.sealed_credentials)
    assert creds == env.credentials(kept.sealed_credentials) and env.can_login(creds)
    assert users(env.root)[str(kept.principal)]["tags"] in ([], "")
    assert len(labels(env.root, str(kept.principal))) == 1
    # A tombstone in its tag still refuses a late copy.
    late = env.engine.execute(env.request(request_id="legacy-3", duration="2h"))
    assert late.status == "refused" and late.field == "request_id", late
    env.now[0] += timedelta(minutes=6)
    report = env.engine.sweep()
    assert report.revoked == [old.grant_id] and report.ok, report
    assert str(old.principal) not in users(env.root)
    revoke = env.engine.execute(env.request("revoke", request_id="legacy-2"))
    assert revoke.status == "revoked" and revoke.verified and not env.can_login(creds)


def _session(env: Env) -> RabbitMQSession:
    """A session of the env's integration, as the engine opens one."""
    integration = env.engine.catalog.integration(INTEGRATION)
    session = integration.template.open(
        INTEGRATION, integration.connection, Secret(ADMIN_PASSWORD), LabelKey.from_secret(LABEL_KEY)
    )
    assert isinstance(session, RabbitMQSession)
    return session


def _stopped_after_first_write(env: Env) -> RabbitMQSession:
    """A session whose connection is lost after its first write (a stopped worker)."""
    session = _session(env)
    call = session._call
    writes: list[str] = []

    def cut(method: str, path: str, *args: Any, **kwargs: Any) -> httpx.Response:
        if method == "PUT":
            if writes:
                raise TargetError("connection lost")
            writes.append(path)
        return call(method, path, *args, **kwargs)

    session._call = cut  # type: ignore[method-assign]
    return session


def test_a_user_a_write_left_without_its_label_is_completed_and_a_stranger_s_is_not(
    env: Env,
) -> None:
    """RabbitMQ writes a user and its topic permission in two calls: a grant or a revoke
    stopped between them leaves a user without a label, marked as ours by its hash's salt (of a
    password nobody knows). The next delivery or revoke completes it."""
    gid = derive_grant_id(INTEGRATION, "half-1")
    spec = env.engine.catalog.check_grant(env.request(request_id="half-1"), env.now[0], env.now[0])
    stopped = _stopped_after_first_write(env)
    with pytest.raises(TargetError):
        stopped.grant(spec)
    stopped.discard()
    assert f"{PREFIX}{gid}" in users(env.root) and labels(env.root, f"{PREFIX}{gid}") == []
    # It reaches nothing (no permissions, no tags, a password nobody knows): the sweep leaves
    # it to the delivery's retry, which would be refused after a tombstone.
    report = env.engine.sweep()
    assert report.ok and not report.revoked and f"{PREFIX}{gid}" in users(env.root), report
    outcome = env.engine.execute(env.request(request_id="half-1"))
    assert outcome.status == "granted", outcome
    assert env.can_login(env.credentials(outcome.sealed_credentials))
    assert len(labels(env.root, f"{PREFIX}{gid}")) == 1
    # A revoke stopped after its tombstone user: the grant waits for that revoke's retry,
    # which completes the tombstone; a late copy is refused after it.
    stopped = _stopped_after_first_write(env)
    gid = derive_grant_id(INTEGRATION, "half-2")
    with pytest.raises(TargetError):
        stopped.revoke(gid, datetime.now(UTC) + timedelta(hours=9))
    stopped.discard()
    stone = f"{PREFIX}x-{gid}"
    assert stone in users(env.root) and labels(env.root, stone) == []
    waiting = env.engine.execute(env.request(request_id="half-2"))
    assert waiting.status == "failed" and f"{PREFIX}{gid}" not in users(env.root), waiting
    revoke = env.engine.execute(env.request("revoke", request_id="half-2"))
    assert revoke.status == "revoked", revoke
    assert len(labels(env.root, stone)) == 1
    late = env.engine.execute(env.request(request_id="half-2"))
    assert late.status == "refused" and late.field == "request_id", late
    # A revoke stopped so and never retried: the sweep completes its tombstone.
    stopped = _stopped_after_first_write(env)
    gid = derive_grant_id(INTEGRATION, "half-5")
    with pytest.raises(TargetError):
        stopped.revoke(gid, datetime.now(UTC) + timedelta(hours=9))
    stopped.discard()
    assert env.engine.sweep().ok
    assert len(labels(env.root, f"{PREFIX}x-{gid}")) == 1
    late = env.engine.execute(env.request(request_id="half-5"))
    assert late.status == "refused" and late.field == "request_id", late
    # A stranger's user under the names of a grant, with no password and nothing else: not
    # marked, so never taken, under either name.
    empty = {"password_hash": "", "tags": ""}
    for request_id, name in (("half-3", "{p}{g}"), ("half-4", "{p}x-{g}")):
        taken = name.format(p=PREFIX, g=derive_grant_id(INTEGRATION, request_id))
        env.root.put(f"/api/users/{taken}", json=empty).raise_for_status()
        before = users(env.root)[taken]
        refused = env.engine.execute(env.request(request_id=request_id))
        assert refused.status == "refused", refused
        assert "not created by this connector" in str(refused.message)
        env.engine.execute(env.request("revoke", request_id=request_id))
        env.now[0] += timedelta(hours=20)
        assert env.engine.sweep().ok
        assert users(env.root)[taken] == before


def test_a_ledger_that_lost_its_labels_ends_the_grants_instead_of_forgetting_them(
    env: Env,
) -> None:
    """The ledger vhost deleted, or `ledger_vhost` changed: no label is left, but the users
    are still marked as ours by their hashes' salt, so the revoke ends its grant, a copy of a
    grant is refused and ends it (its expiry is lost: the copy's may be later), and the sweep
    ends every other one at once, rather than taking them for someone else's."""
    live = [
        env.engine.execute(env.request(request_id=f"lost-{i}", duration="2h")) for i in range(4)
    ]
    held = env.login(env.credentials(live[0].sealed_credentials))
    env.root.delete(f"/api/vhosts/{LEDGER}").raise_for_status()
    assert all(labels(env.root, str(o.principal)) == [] for o in live)
    revoke = env.engine.execute(env.request("revoke", request_id="lost-3"))
    assert revoke.status == "revoked" and revoke.verified, revoke
    assert str(live[3].principal) not in users(env.root)
    env.now[0] += timedelta(minutes=10)  # a copy signed later asks for a later expiry
    copy = env.engine.execute(env.request(request_id="lost-2", duration="2h"))
    assert copy.status == "refused" and copy.field == "request_id", copy
    assert str(live[2].principal) not in users(env.root)
    report = env.engine.sweep()
    assert sorted(report.revoked) == sorted(str(o.grant_id) for o in live[:2]) and report.ok
    assert not any(str(o.principal) in users(env.root) for o in live)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
        for _ in range(50):
            held.process_data_events(time_limit=0.1)
    for outcome in live:
        assert not env.can_login(env.credentials(outcome.sealed_credentials))


def test_a_second_label_on_a_user_makes_the_grant_start_again(env: Env) -> None:
    """A racing delivery of another request under the grant id may add its own label to ours
    (topic permissions add up, one per exchange name): the user goes, and the retry decides
    afresh."""
    outcome = env.engine.execute(env.request(request_id="twice-1"))
    name = str(outcome.principal)
    other = CompactLabel(
        INTEGRATION,
        str(outcome.grant_id),
        "active",
        datetime.now(UTC) + timedelta(hours=1),
        "read-write",
        "anotherdigest",
    )
    put_label(
        env.root,
        name,
        encode_compact_label(LabelKey.from_secret(LABEL_KEY), "rabbitmq", name, other),
    )
    again = env.engine.execute(env.request(request_id="twice-1"))
    assert again.status == "failed", again
    assert name not in users(env.root)
    assert env.engine.execute(env.request(request_id="twice-1")).status == "granted"


def test_the_ledger_vhost_is_made_when_missing_and_never_granted(
    make_env: Callable[..., Env],
) -> None:
    env = make_env(
        catalog_doc(ledger={"template": "full", "resources": ["led"], "vhosts": {"led": LEDGER}})
    )
    env.root.delete(f"/api/vhosts/{LEDGER}")
    outcome = env.engine.execute(env.request())
    assert outcome.status == "granted" and len(labels(env.root, str(outcome.principal))) == 1
    before = watched(env.root)
    refused = env.engine.execute(env.request(permission="ledger", resources=["led"]))
    assert refused.status == "refused" and refused.field == "resources[0]", refused
    assert watched(env.root) == before


def test_a_copy_reading_while_another_copy_writes_never_takes_the_user_for_one_that_lost_its_label(
    env: Env,
) -> None:
    """Two copies of one request at once: the second reads the user's labels before the first
    writes its label, and the user after the first writes its password. The label is there by
    then: the second copy reads again rather than end the grant as one whose label was lost."""
    first = env.engine.execute(env.request(request_id="copies-1"))
    creds = env.credentials(first.sealed_credentials)
    second = _session(env)
    read = second._user
    stale: list[str] = []

    def labels_read_before_the_label(name: str) -> dict[str, Any] | None:
        found = read(name)
        if name == first.principal and not stale and found is not None:
            stale.append(name)
            record = env.root.get(f"/api/users/{quote(name, safe='')}").json()
            return {**record, "ledger": []}
        return found

    second._user = labels_read_before_the_label  # type: ignore[method-assign]
    now = env.now[0]
    spec = env.engine.catalog.check_grant(env.request(request_id="copies-1"), now, now)
    try:
        again = second.grant(spec)
    finally:
        second.discard()
    assert stale and again.reissued, again
    assert {k: v for k, v in (again.credentials or {}).items() if k != "expires_at"} == {
        k: v for k, v in creds.items() if k != "expires_at"
    }
    assert env.can_login(creds)


def test_an_unreachable_api_s_error_keeps_no_request_and_so_no_admin_credential() -> None:
    """httpx's exception holds the request, whose headers hold the admin credential: an error
    reporter that walks `__context__` must not find it."""
    doc = catalog_doc()
    doc["integrations"][INTEGRATION]["connection"]["api_url"] = "http://127.0.0.1:1"
    integration = parse_catalog(doc).integration(INTEGRATION)
    with pytest.raises(TargetError) as raised:
        RabbitMQSession(
            INTEGRATION,
            integration.connection,
            Secret(ADMIN_PASSWORD),
            LabelKey.from_secret(LABEL_KEY),  # type: ignore[arg-type]
        )
    assert raised.value.__context__ is None and raised.value.__cause__ is None
    assert "unreachable: ConnectError" in str(raised.value)
