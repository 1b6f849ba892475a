"""The Redis template through the engine, against the real Redis 7 on this machine.

JITC_TEST_REDIS_HOST / JITC_TEST_REDIS_PORT name the server (default 127.0.0.1:6379); the test
user that reaches it is the `default` user, from which the run makes its own admin user.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import userenv
from redis.backoff import NoBackoff
from redis.retry import Retry
from userenv import BOX_PUBLIC, LABEL_KEY, UserEnv, engine_parts

from jitc.catalog import catalog_warnings, parse_catalog
from jitc.errors import CatalogError, Refused
from jitc.labels import CompactLabel, LabelKey, decode_compact_label, encode_compact_label
from jitc.models import Identity, derive_grant_id
from jitc.secrets import Secret
from jitc.templates.base import GrantSpec
from jitc.templates.redis import Permission as RedisPermission
from jitc.templates.redis_session import RedisSession

HOST = os.environ.get("JITC_TEST_REDIS_HOST", "127.0.0.1")
PORT = int(os.environ.get("JITC_TEST_REDIS_PORT", "6379"))
RUN = secrets.token_hex(3)
INTEGRATION = f"redis-{RUN}"
KEYS = f"t{RUN}:app:*"
OTHER_KEYS = f"t{RUN}:other:*"
ADMIN = f"a{RUN}-admin"
PREFIX = f"t{RUN}-"
# What the README says the connector's admin needs, and nothing more.
ADMIN_RULES = (
    "resetkeys",
    "resetchannels",
    "-@all",
    "+acl",
    "+client|kill",
    "+client|setname",
    "+ping",
    "+info",
)
ADMIN_PASSWORD = secrets.token_urlsafe(18)


def _root() -> redis.Redis:
    client = redis.Redis(host=HOST, port=PORT, decode_responses=True, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable at {HOST}:{PORT}: {exc}")
    return client


def acl(client: redis.Redis, *args: str) -> Any:
    command: Any = client.execute_command
    return command("ACL", *args)


def ours(client: redis.Redis) -> list[str]:
    return sorted(n for n in acl(client, "USERS") if n.startswith(PREFIX))


def watched(client: redis.Redis) -> list[str]:
    """The ACL of every user this test run can be held to: `default`, the run's admin and the
    run's prefix. Other runs on the shared server add and remove their own users meanwhile."""
    return sorted(
        line
        for line in acl(client, "LIST")
        if line.split()[1] in ("default", ADMIN) or line.split()[1].startswith(PREFIX)
    )


def channels_of(client: redis.Redis, name: str) -> list[str]:
    """The user's channel patterns, as the server holds them (redis-py 8 parses the reply of
    a raw `ACL GETUSER` into a map; earlier versions return the flat list)."""
    reply = acl(client, "GETUSER", name)
    fields = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
    channels = fields["channels"]
    return channels.split() if isinstance(channels, str) else [str(c) for c in channels]


def label_of(client: redis.Redis, name: str) -> list[str]:
    """The label's fields, as the server holds them."""
    return channels_of(client, name)[0][1:].split(":")


def catalog_doc(**permissions: dict[str, Any]) -> dict[str, Any]:
    perms: dict[str, Any] = {
        "read-only": {"template": "read-only", "resources": [KEYS, OTHER_KEYS]},
        "read-write": {"template": "read-write", "resources": [KEYS]},
        "admin": {"commands": ["+@all"], "resources": [KEYS], "privileged": True},
    }
    perms.update(permissions)
    connection = {
        "host": HOST,
        "port": PORT,
        "user": ADMIN,
        "user_prefix": PREFIX,
        "tls": False,  # loopback: allowed, and `jitc catalog check` says so
        # The shared server has no ACL file: grants would be refused under `auto`.
        "acl_save": "never",
    }
    return userenv.catalog_doc(INTEGRATION, "redis", connection, perms)


@dataclass
class Env(UserEnv):
    root: redis.Redis

    def login(self, creds: dict[str, str]) -> redis.Redis:
        client = redis.Redis(
            host=HOST,
            port=PORT,
            username=creds["username"],
            password=creds["password"],
            decode_responses=True,
            single_connection_client=True,
            retry=Retry(NoBackoff(), 0),
        )
        client.ping()
        return client

    def can_login(self, creds: dict[str, str]) -> bool:
        try:
            self.login(creds).close()
        except redis.AuthenticationError:
            return False
        return True


@pytest.fixture(scope="module")
def root() -> Iterator[redis.Redis]:
    client = _root()
    acl(client, "SETUSER", ADMIN, "on", f">{ADMIN_PASSWORD}", *ADMIN_RULES)
    yield client
    leftovers = ours(client)
    if leftovers:
        acl(client, "DELUSER", *leftovers)
    acl(client, "DELUSER", ADMIN)
    client.close()


@pytest.fixture
def make_env(root: redis.Redis) -> Iterator[Callable[..., Env]]:
    def make(doc: dict[str, Any] | None = None, secret: str = ADMIN_PASSWORD) -> Env:
        parts = engine_parts(doc or catalog_doc(), secret)
        return Env(**parts, integration=INTEGRATION, resource=KEYS, root=root)

    yield make
    names = ours(root)
    if names:
        acl(root, "DELUSER", *names)


@pytest.fixture
def env(make_env: Callable[..., Env]) -> Env:
    return make_env()


def test_grant_allows_its_keys_denies_the_rest_and_revoke_ends_the_live_connection(
    env: Env,
) -> None:
    env.root.set(f"t{RUN}:app:1", "v")
    outcome = env.engine.execute(env.request(request_id="rw-1", permission="read-write"))
    assert outcome.status == "granted", outcome
    creds = env.credentials(outcome.sealed_credentials)
    assert creds["username"] == outcome.principal
    user = env.login(creds)
    assert user.get(f"t{RUN}:app:1") == "v"
    user.set(f"t{RUN}:app:2", "w")
    for denied in (
        lambda: user.get(f"t{RUN}:other:1"),
        lambda: user.get("unrelated"),
        lambda: user.config_get("maxmemory"),
        lambda: user.keys("*"),
        lambda: user.execute_command("ACL", "SETUSER", "x"),
        lambda: user.execute_command("ACL", "LIST"),
        lambda: user.execute_command("MODULE", "LIST"),
        lambda: user.scan(0, match="*"),  # would list key names outside the patterns
        lambda: user.randomkey(),
        lambda: user.select(1),  # the same patterns in another database
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            denied()
    # Asked of the ACL rather than run: on failure these would change the shared server.
    for command in (
        ["DEBUG", "SLEEP", "0"],
        ["MODULE", "LOAD", "x"],
        ["CONFIG", "SET", "a", "b"],
        ["FLUSHALL"],
        ["MOVE", f"t{RUN}:app:1", "1"],  # the same names in another database
        ["COPY", f"t{RUN}:app:1", f"t{RUN}:app:9", "DB", "1"],
        # Server-wide function libraries outlive the grant and run in other users' FCALLs.
        ["FUNCTION", "FLUSH"],
        ["FUNCTION", "LOAD", "#!lua name=x\nredis.register_function('f', function() end)"],
        ["FUNCTION", "DELETE", "x"],
        # A busy script blocks the whole server, its own revoke included.
        ["EVAL", "return 1", "0"],
        ["FCALL", "f", "0"],
        ["SCRIPT", "LOAD", "return 1"],
    ):
        verdict = acl(env.root, "DRYRUN", creds["username"], *command)
        assert verdict != "OK" and "no permissions" in verdict

    # A raw connection, so that no client-side retry can hide a closed socket.
    live = redis.Connection(
        host=HOST, port=PORT, username=creds["username"], password=creds["password"]
    )
    live.connect()
    live.send_command("PING")
    assert live.read_response() in (b"PONG", "PONG")

    revoke = env.engine.execute(env.request("revoke", request_id="rw-1"))
    assert revoke.status == "revoked" and revoke.verified is True and revoke.residual == []
    with pytest.raises(redis.ConnectionError):
        live.send_command("PING")
        live.read_response()
    assert not env.can_login(creds)
    assert creds["username"] not in acl(env.root, "USERS")
    user.close()


def test_read_only_cannot_write(env: Env) -> None:
    outcome = env.engine.execute(env.request(resources=[KEYS, OTHER_KEYS]))
    user = env.login(env.credentials(outcome.sealed_credentials))
    assert user.get(f"t{RUN}:other:x") is None
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.set(f"t{RUN}:app:x", "1")
    user.close()


def test_label_is_a_channel_of_the_user_with_expiry_and_no_email(env: Env) -> None:
    outcome = env.engine.execute(env.request(duration="30m"))
    assert outcome.principal == f"{PREFIX}{outcome.grant_id}" and outcome.expires_at is not None
    fields = label_of(env.root, outcome.principal)
    assert fields[:3] == ["jitc1", INTEGRATION, outcome.grant_id]
    assert fields[3] == "a" and int(fields[4]) == int(outcome.expires_at.timestamp())
    assert "alice" not in " ".join(fields)
    integration = env.engine.catalog.integration(INTEGRATION)
    mine = integration.template.open(
        INTEGRATION,
        integration.connection,
        Secret(ADMIN_PASSWORD),
        label_key=LabelKey.from_secret(LABEL_KEY),
    )
    assert outcome.grant_id in {g.grant_id for g in mine.active_grants()}
    # Under another key the same name is not a label of ours: nothing acts on it.
    other = RedisSession(
        INTEGRATION, integration.connection, Secret(ADMIN_PASSWORD), LabelKey.from_secret("another-label-key-0123456789")
    )
    assert outcome.grant_id not in {g.grant_id for g in other.active_grants()}
    assert other.revoke(outcome.grant_id, datetime.now(UTC)).found is False
    assert outcome.principal in acl(env.root, "USERS")
    mine.close()
    other.close()


def test_plan_has_no_side_effects_masks_the_password_and_shows_the_rules(env: Env) -> None:
    before = watched(env.root)
    outcome = env.engine.plan(env.request(permission="read-write"))
    assert outcome.status == "planned"
    assert watched(env.root) == before
    (statement,) = outcome.statements
    assert statement.startswith(
        f"ACL SETUSER {PREFIX}{outcome.grant_id} on resetpass #******** clearselectors resetkeys "
        f"~{KEYS} "
        f"resetchannels &jitc1:{INTEGRATION}:{outcome.grant_id}:a:"
    )
    assert statement.endswith(
        ":******** -@all +@read +@write +@connection -@admin -@dangerous -@scripting -scan "
        "-randomkey -dbsize -select -move -copy -client|tracking -client|caching "
        "-cluster|getkeysinslot -cluster|countkeysinslot -memory|stats -memory|doctor "
        "-memory|malloc-stats -memory|purge -pubsub|channels -pubsub|shardchannels "
        "-pubsub|numsub -pubsub|shardnumsub -pubsub|numpat"
    )


def test_redelivered_grant_hands_out_the_same_credentials(env: Env) -> None:
    request = env.request(request_id="dup-1")
    first = env.engine.execute(request)
    second = env.engine.execute(request)
    assert second.status == "granted" and second.reissued and second.principal == first.principal
    assert env.credentials(second.sealed_credentials) == env.credentials(first.sealed_credentials)
    assert len(ours(env.root)) == 1
    env.login(env.credentials(first.sealed_credentials)).close()


def test_another_body_under_the_same_request_id_is_refused(env: Env) -> None:
    assert env.engine.execute(env.request(request_id="same-1")).status == "granted"
    other = env.request(
        request_id="same-1",
        identity={"email": "mallory@example.com", "public_key": BOX_PUBLIC},
    )
    before = ours(env.root)
    refused = env.engine.execute(other)
    assert refused.status == "refused" and refused.field == "request_id"
    assert ours(env.root) == before


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
    again = env.engine.execute(grant)
    assert again.status == "refused"
    assert [n for n in ours(env.root) if not n.startswith(f"{PREFIX}x-")] == []


def test_overlapping_grants_are_independent(env: Env) -> None:
    one = env.engine.execute(env.request(request_id="ov-1", duration="10m"))
    two = env.engine.execute(env.request(request_id="ov-2", duration="1h"))
    assert one.principal != two.principal
    env.engine.execute(env.request("revoke", request_id="ov-1"))
    assert not env.can_login(env.credentials(one.sealed_credentials))
    env.login(env.credentials(two.sealed_credentials)).close()


def test_revoke_is_frozen_at_grant_time_when_the_catalog_changes(
    make_env: Callable[..., Env],
) -> None:
    before = make_env()
    outcome = before.engine.execute(before.request(request_id="frozen-1", permission="read-write"))
    creds = before.credentials(outcome.sealed_credentials)
    # The permission is gone from the catalog and the other one now covers other keys.
    after = make_env(
        catalog_doc(**{"read-write": {"template": "read-only", "resources": [OTHER_KEYS]}})
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
    env.login(env.credentials(long.sealed_credentials)).close()
    tombstones = [n for n in ours(env.root) if n.startswith(f"{PREFIX}x-")]
    assert tombstones == [f"{PREFIX}x-{short.grant_id}"]
    assert label_of(env.root, tombstones[0])[3] == "t"
    # A tombstone outlasts every copy of the request signed before its revoke: the
    # integration's max_duration (8h) and the margins after it.
    env.now[0] += timedelta(hours=9)
    report = env.engine.sweep()
    assert report.revoked == [long.grant_id]
    assert short.grant_id in report.forgotten
    assert ours(env.root) == [f"{PREFIX}x-{long.grant_id}"]


def test_users_the_connector_did_not_create_are_never_changed(env: Env) -> None:
    grant = env.engine.execute(env.request(request_id="mine-1"))
    assert grant.principal is not None and grant.grant_id is not None
    past = int((datetime.now(UTC) - timedelta(days=1)).timestamp())
    # A forgery: our name scheme, our label format with a grant id and an expiry in the past,
    # but no valid MAC (whoever wrote it has ACL rights but not the connector's key).
    forged = f"{PREFIX}gzzzzzzzzzzzzzzzzzzzzzzzz"
    label = f"&jitc1:{INTEGRATION}:gzzzzzzzzzzzzzzzzzzzzzzzz:a:{past}:read-only:abcdefgh:forged"
    stranger = f"{PREFIX}stranger"
    acl(env.root, "SETUSER", forged, "on", ">x", "~*", label, "+@all")
    acl(env.root, "SETUSER", stranger, "on", ">y", "~*", "+get")
    # The genuine label copied onto another user: the MAC binds it to its own user name.
    copy = f"{PREFIX}gaaaaaaaaaaaaaaaaaaaaaaaa"
    genuine = channels_of(env.root, grant.principal)[0]
    acl(env.root, "SETUSER", copy, "on", ">z", genuine)
    strangers = (forged, stranger, copy)
    before = {n: acl(env.root, "GETUSER", n) for n in strangers}
    try:
        env.now[0] += timedelta(hours=1)
        report = env.engine.sweep()
        assert report.revoked == [grant.grant_id]
        assert env.engine.execute(env.request("revoke", request_id="mine-1")).status == "revoked"
        assert {n: acl(env.root, "GETUSER", n) for n in strangers} == before
    finally:
        acl(env.root, "DELUSER", *strangers)


def test_a_user_that_already_has_the_grants_name_is_refused_and_left_alone(env: Env) -> None:
    request = env.request(request_id="clash-1")
    name = f"{PREFIX}{derive_grant_id(INTEGRATION, 'clash-1')}"
    acl(env.root, "SETUSER", name, "on", ">company", "~*", "+@read")
    before = acl(env.root, "GETUSER", name)
    outcome = env.engine.execute(request)
    assert outcome.status == "refused" and "not created by this connector" in str(outcome.message)
    revoke = env.engine.execute(env.request("revoke", request_id="clash-1"))
    assert revoke.status == "revoked" and "nothing to revoke" in str(revoke.message)
    assert acl(env.root, "GETUSER", name) == before


def test_a_catalog_edit_cannot_send_the_admin_password_in_the_clear() -> None:
    doc = catalog_doc()
    doc["integrations"][INTEGRATION]["connection"]["host"] = "redis.example.com"
    with pytest.raises(CatalogError, match="allow_insecure_transport"):
        parse_catalog(doc)
    doc["integrations"][INTEGRATION]["connection"]["allow_insecure_transport"] = True
    assert any("tls false" in w for w in catalog_warnings(parse_catalog(doc)))
    assert any("tls false" in w for w in catalog_warnings(parse_catalog(catalog_doc())))


def test_hostile_catalog_rules_are_refused_when_the_catalog_loads() -> None:
    for commands in (
        ["+@admin"],
        ["+@dangerous"],
        ["+config|get"],
        ["+acl"],
        ["+module"],
        ["+debug"],
        ["+get", "~*"],
        ["on"],
        ["nopass"],
        ["allcommands"],
        ["+get (~* +@all)"],
        ["+get >password"],
        ["+function"],
        ["+function|load"],
        ["+function|flush"],
        ["+function|list"],
        ["+@scripting"],
        ["+eval"],
        ["+evalsha"],
        ["+eval_ro"],
        ["+fcall"],
        ["+fcall_ro"],
        ["+script|load"],
    ):
        with pytest.raises(CatalogError):
            parse_catalog(catalog_doc(bad={"commands": commands, "resources": [KEYS]}))
    with pytest.raises(CatalogError):
        parse_catalog(
            catalog_doc(bad={"template": "read-only", "channels": ["a b"], "resources": [KEYS]})
        )


def test_hostile_requests_are_refused_with_the_server_unchanged(env: Env) -> None:
    before = watched(env.root)
    for resources in ([f"{KEYS} ~*"], ["*"], [f"t{RUN}:app:* +@all"], ["~*"], ["%RW~*"]):
        with pytest.raises(Refused):
            env.request(resources=resources)
    outcome = env.engine.execute(env.request(resources=[KEYS, KEYS]))
    assert outcome.status == "refused" and outcome.field == "resources"
    outcome = env.engine.execute(env.request(resources=["unlisted:*"]))
    assert outcome.status == "refused" and outcome.field == "resources[0]"
    assert watched(env.root) == before


def test_privileged_permission_alone_reaches_administration(env: Env) -> None:
    outcome = env.engine.execute(env.request(permission="admin"))
    user = env.login(env.credentials(outcome.sealed_credentials))
    assert user.config_get("maxmemory")
    user.close()


def test_secrets_never_reach_events_or_outcomes(env: Env) -> None:
    userenv.assert_secrets_stay_out(env, catalog_doc(), ADMIN_PASSWORD)


def test_grant_ids_are_those_of_the_requests(env: Env) -> None:
    outcome = env.engine.execute(env.request(request_id="gid-1"))
    assert outcome.grant_id == derive_grant_id(INTEGRATION, "gid-1")


def test_all_commands_without_privileged_still_reach_no_administration(
    make_env: Callable[..., Env],
) -> None:
    env = make_env(catalog_doc(everything={"commands": ["+@all"], "resources": [KEYS]}))
    creds = env.credentials(
        env.engine.execute(env.request(permission="everything")).sealed_credentials
    )
    user = env.login(creds)
    user.set(f"t{RUN}:app:all", "1")
    for command in (
        ["CONFIG", "GET", "*"],
        ["ACL", "SETUSER", "x"],
        ["FLUSHALL"],
        ["SHUTDOWN"],
        ["EVAL", "while true do end", "0"],
        ["FCALL", "f", "0"],
    ):
        verdict = acl(env.root, "DRYRUN", creds["username"], *command)
        assert "no permissions" in verdict, command
    user.close()


def test_inventory_lists_users_and_databases_from_the_server(env: Env) -> None:
    outcome = env.engine.execute(env.request())
    integration = env.engine.catalog.integration(INTEGRATION)
    session = integration.template.open(
        INTEGRATION, integration.connection, Secret(ADMIN_PASSWORD), LabelKey.from_secret(LABEL_KEY)
    )
    inventory = session.inventory()
    session.close()
    assert outcome.principal in inventory["users"] and ADMIN in inventory["users"]
    assert inventory["databases"] == sorted(env.root.info("keyspace"))


def test_labels_round_trip_bind_their_user_and_refuse_unreadable_fields() -> None:
    key = LabelKey.from_secret("another-label-key-0123456789")
    gid = derive_grant_id("x", "y")
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    label = CompactLabel("redis-a", gid, "active", expires, "read-only", "0123456789abcdef")
    text = encode_compact_label(key, "redis", "jit-a", label)
    assert decode_compact_label(key, "redis", "jit-a", text) == label
    assert decode_compact_label(key, "redis", "jit-b", text) is None  # copied to another user
    assert (
        decode_compact_label(
            LabelKey.from_secret("yet-another-label-key-0123456789"), "redis", "jit-a", text
        )
        is None
    )
    assert decode_compact_label(key, "rabbitmq", "jit-a", text) is None  # another target kind
    tampered = text.replace(":a:", ":t:")
    assert decode_compact_label(key, "redis", "jit-a", tampered) is None
    for bad in (
        CompactLabel("redis:a", gid, "active", expires, "read-only", "0123456789abcdef"),
        CompactLabel("redis-a", gid, "active", expires, "read:only", "0123456789abcdef"),
        CompactLabel("redis-a", gid, "active", expires, "read-only", "01234567:9abcdef"),
    ):
        with pytest.raises(ValueError):
            encode_compact_label(key, "redis", "jit-a", bad)


def admin_sessions(env: Env, count: int) -> list[Any]:
    """Sessions opened by the test itself, as separate workers would hold them."""
    integration = env.engine.catalog.integration(INTEGRATION)
    key = LabelKey.from_secret(LABEL_KEY)
    return [
        integration.template.open(INTEGRATION, integration.connection, Secret(ADMIN_PASSWORD), key)
        for _ in range(count)
    ]


def direct_spec(grant_id: str, permission: str, resources: tuple[str, ...]) -> GrantSpec:
    """A grant as the engine would hand it to a session opened by the test itself."""
    return GrantSpec(
        grant_id=grant_id,
        request_id=f"r-{grant_id}",
        integration=INTEGRATION,
        permission_name=permission,
        permission=RedisPermission(template=permission, resources=list(resources)),
        resources=resources,
        identity=Identity(email=f"{permission}@example.com"),
        expires_at=datetime.now(UTC) + timedelta(minutes=15),
        request_digest=f"d-{permission}-{grant_id}",
    )


def raced_before(session: Any, method: str, race: Callable[[], Any]) -> list[Any]:
    """Make the session's `method` (a read) run `race` once, right after the read: another
    worker acting between this session's read and its write. Returns what `race` returned."""
    read = getattr(session, method)
    raced: list[Any] = []

    def read_then_race(*names: str, **options: Any) -> list[Any]:
        found = read(*names, **options)
        if not raced:
            raced.append(race())
        return list(found)

    setattr(session, method, read_then_race)
    return raced


def test_a_revoke_racing_a_delivery_of_the_same_grant_still_ends_it(env: Env) -> None:
    """The revoke reads the server just before a concurrent delivery makes the user: the
    tombstone must be written before the revoke looks for the user, or the user outlives it."""
    granter, revoker = admin_sessions(env, 2)
    grant_id = derive_grant_id(INTEGRATION, f"race-{secrets.token_hex(4)}")
    spec = direct_spec(grant_id, "read-only", (KEYS,))
    raced = raced_before(revoker, "_get", lambda: granter.grant(spec))
    result = revoker.revoke(grant_id, datetime.now(UTC) + timedelta(hours=1))
    name = f"{PREFIX}{grant_id}"
    try:
        assert raced, "the concurrent delivery did not run"
        assert result.found and result.verified
        assert acl(env.root, "GETUSER", name) is None
        assert grant_id not in [g.grant_id for g in revoker.active_grants() if g.state == "active"]
    finally:
        granter.close()
        revoker.close()


def test_built_ins_reach_no_key_or_channel_name_outside_their_patterns(
    make_env: Callable[..., Env],
) -> None:
    """Redis checks patterns only on key and channel arguments: commands that take none but
    report names or counts of other keys and channels are left out of every built-in."""
    channel = f"t{RUN}:ch"
    env = make_env(
        catalog_doc(pubsub={"template": "pubsub", "channels": [channel], "resources": [KEYS]})
    )
    outside = (
        ["SCAN", "0"],
        ["RANDOMKEY"],
        ["DBSIZE"],
        ["SELECT", "1"],
        ["COPY", f"t{RUN}:app:1", f"t{RUN}:app:2", "DB", "1", "REPLACE"],
        # With BCAST the server pushes the name of every key anyone changes.
        ["CLIENT", "TRACKING", "ON", "BCAST"],
        ["CLIENT", "CACHING", "YES"],
    )
    for permission in ("read-only", "read-write", "pubsub"):
        creds = env.credentials(
            env.engine.execute(env.request(permission=permission)).sealed_credentials
        )
        user = env.login(creds)
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.execute_command("CLIENT", "TRACKING", "ON", "BCAST")
        user.close()
        for command in outside:
            verdict = acl(env.root, "DRYRUN", creds["username"], *command)
            assert "no permissions" in verdict, (permission, command)
        if permission == "pubsub":
            assert acl(env.root, "DRYRUN", creds["username"], "PUBLISH", channel, "x") == "OK"
            for command in (
                ["PUBSUB", "CHANNELS"],
                ["PUBSUB", "SHARDCHANNELS"],
                ["PUBSUB", "NUMSUB", "other"],
                ["PUBSUB", "SHARDNUMSUB", "other"],
            ):
                verdict = acl(env.root, "DRYRUN", creds["username"], *command)
                assert "no permissions" in verdict, command


# Commands that reach key or channel names outside a grant's patterns, or report on the whole
# server: no non-privileged grant may run them, whatever its catalog rules say.
OUTSIDE = (
    ["SCAN", "0"],
    ["RANDOMKEY"],
    ["DBSIZE"],
    ["SELECT", "1"],
    ["MOVE", f"t{RUN}:app:1", "1"],
    ["COPY", f"t{RUN}:app:1", f"t{RUN}:app:2", "DB", "1", "REPLACE"],
    ["CLIENT", "TRACKING", "ON", "BCAST"],
    ["CLIENT", "CACHING", "YES"],
    ["CLUSTER", "GETKEYSINSLOT", "0", "10"],
    ["CLUSTER", "COUNTKEYSINSLOT", "0"],
    ["MEMORY", "STATS"],
    ["MEMORY", "DOCTOR"],
    ["MEMORY", "MALLOC-STATS"],
    ["MEMORY", "PURGE"],
    ["PUBSUB", "CHANNELS"],
    ["PUBSUB", "SHARDCHANNELS"],
    ["PUBSUB", "NUMSUB", "other"],
    ["PUBSUB", "SHARDNUMSUB", "other"],
    ["PUBSUB", "NUMPAT"],
)


@pytest.mark.parametrize(
    "commands",
    [
        ["+@connection"],
        ["+client|tracking"],
        ["+client"],
        ["+@all"],
        ["+@read", "+@slow", "+@keyspace"],
        ["+@pubsub", "+pubsub|channels", "+pubsub|numpat"],
        ["+scan", "+randomkey", "+dbsize", "+select", "+move", "+copy"],
        ["+memory", "+cluster", "+client|caching"],
        # A `-` rule first and its `+` after: the catalog's own order cannot win either.
        ["-client|tracking", "+@all", "+client"],
    ],
)
def test_custom_rule_lists_cannot_readmit_what_the_template_denies(
    make_env: Callable[..., Env], commands: list[str]
) -> None:
    # PING only so that the test can log in.
    custom = {"commands": [*commands, "+ping"], "resources": [KEYS]}
    env = make_env(catalog_doc(custom=custom))
    outcome = env.engine.execute(env.request(permission="custom"))
    assert outcome.status == "granted", outcome
    creds = env.credentials(outcome.sealed_credentials)
    user = env.login(creds)
    try:
        # Live, not only asked of the ACL: the server itself refuses to track for this user.
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.execute_command("CLIENT", "TRACKING", "ON", "BCAST")
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.scan(0)
    finally:
        user.close()
    for command in OUTSIDE:
        verdict = acl(env.root, "DRYRUN", creds["username"], *command)
        assert "no permissions" in verdict, (commands, command)


def test_two_requests_racing_under_one_grant_id_never_share_rules(env: Env) -> None:
    """Two different requests under one request id, both read before either writes: the
    loser's credentials must never log in, and the winner's carry only its own rules."""
    first, second = admin_sessions(env, 2)
    grant_id = derive_grant_id(INTEGRATION, f"twin-{secrets.token_hex(4)}")

    wide = direct_spec(grant_id, "read-write", (KEYS,))
    narrow = direct_spec(grant_id, "read-only", (OTHER_KEYS,))
    raced = raced_before(first, "_read_for_grant", lambda: second.grant(wide))
    try:
        won = first.grant(narrow)
        assert raced and won.credentials is not None
        lost = raced[0].credentials
        assert lost is not None and lost["password"] != won.credentials["password"]
        assert not env.can_login(lost)
        user = env.login(won.credentials)
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.set(f"t{RUN}:app:1", "x")  # the loser's read-write rules are gone
        assert user.get(f"t{RUN}:other:1") is None
        user.close()
    finally:
        first.close()
        second.close()


def test_a_stranger_holding_a_tombstone_name_is_never_overwritten(env: Env) -> None:
    userenv.assert_taken_tombstone_names_are_left_alone(
        env,
        PREFIX,
        lambda name: acl(env.root, "SETUSER", name, "on", ">company", "~*", "+get"),
        lambda names: {n: acl(env.root, "GETUSER", n) for n in names},
        env.can_login,
    )


def _client_list_calls(root: redis.Redis) -> int:
    stats = root.info("commandstats")
    return int(stats.get("cmdstat_client|list", {}).get("calls", 0))


def test_a_revoke_reads_no_client_list_however_long_a_grantee_names_its_connections(
    env: Env,
) -> None:
    """A connection's name is in the server's client list, and any client may set one with
    HELLO (Redis checks no ACL on it), of any length: a revoke that read that list whole could
    be made to fail, or to exhaust the worker's memory, by any grantee. Revokes kill the user's
    connections by user (CLIENT KILL USER) and read no list."""
    outcome = env.engine.execute(env.request(request_id="named-1"))
    other = env.engine.execute(env.request(request_id="named-2"))
    attacker = env.login(env.credentials(outcome.sealed_credentials))
    attacker.execute_command("HELLO", "2", "SETNAME", "x" * (4 << 20))
    victim = env.login(env.credentials(other.sealed_credentials))
    before = _client_list_calls(env.root)
    revoked = env.engine.execute(env.request("revoke", request_id="named-2"))
    assert revoked.status == "revoked" and revoked.verified, revoked
    assert _client_list_calls(env.root) == before
    with pytest.raises(redis.exceptions.ConnectionError):
        victim.ping()
    assert attacker.ping()
    revoked = env.engine.execute(env.request("revoke", request_id="named-1"))
    assert revoked.status == "revoked" and revoked.verified, revoked
    with pytest.raises(redis.exceptions.ConnectionError):
        attacker.ping()


@pytest.mark.parametrize("tls", [False, True])
def test_a_session_connects_with_the_arguments_of_the_admin_client(tls: bool) -> None:
    from jitc.templates.redis import Connection
    from jitc.templates.redis_session import AdminCredential, admin_client, admin_pool

    settings = Connection.model_validate(
        {"host": "127.0.0.1", "tls": tls, "tls_ca_file": "/nonexistent/ca.pem", "user": "adm"}
    )
    credential = AdminCredential("adm", Secret("pw"))
    made, client = admin_pool(settings, credential), admin_client(settings, credential)
    ours, theirs = dict(made.connection_kwargs), dict(client.connection_pool.connection_kwargs)
    assert ours.pop("credential_provider") is credential is theirs.pop("credential_provider")
    assert type(ours.pop("retry")) is type(theirs.pop("retry"))
    ours.pop("himport_registry", None)
    theirs.pop("himport_registry", None)
    assert ours == theirs and ours["client_name"] == "jit-connector"
    assert made.connection_class is client.connection_pool.connection_class
    assert made.max_connections == client.connection_pool.max_connections
    assert admin_pool(settings, credential) is not made


