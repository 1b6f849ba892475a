"""Redis 7: one ACL user per grant, `<prefix><grant id>`, labelled inside its own ACL rules.

Redis users have no comment or tag. The label (a compact label of `jitc.labels`: grant id,
expiry, request digest, MAC bound to the user name) is the user's first channel pattern,
`&jitc1:...`: a Pub/Sub channel nobody uses, so it grants nothing, and only a user allowed the
ACL command can write it, which no grant is ever given (see `forbidden_rule`). `ACL LIST` is
then the ledger, and a user that merely has one of our names but no valid label is somebody
else's and is never changed.

Key patterns come from the requested resources, channel patterns and command rules from the
catalog. Every non-privileged rule list ends with `SAFETY_SUFFIX`: the administrative
categories, and every command that reaches key or channel names outside the grant's patterns
(SCAN, CLIENT TRACKING, PUBSUB CHANNELS, ...). Redis applies rules in order, so no catalog rule
before it (`+@all`, `+@connection`, `+client`, `+client|tracking`) can re-admit any of them.

Redis has no per-user expiry: access ends when the connector revokes it (the expiry timer, or
the sweep after downtime). A revoke is `ACL DELUSER`, which also closes the user's connections.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from jitc.errors import Refused
from jitc.labels import LabelKey, spec_digest
from jitc.models import empty_list
from jitc.secrets import Secret
from jitc.templates import userledger
from jitc.templates.base import GrantSpec, PermissionSettings, Settings, keep_connection_field
from jitc.templates.transport import is_loopback

if TYPE_CHECKING:
    from jitc.templates.redis_session import RedisSession

MASK = "********"
# A command rule: +cmd, -cmd, +cmd|sub, +@category. Nothing else (no keys, passwords, `on`,
# `nopass`, `allcommands`, selectors), so a catalog rule cannot smuggle another kind of rule in.
_COMMAND_RULE = re.compile(r"^[+-](@[a-z]{1,32}|[a-z][a-z0-9_-]{0,31}(\|[a-z][a-z0-9_-]{0,31})?)$")
_CHANNEL = re.compile(r"^[A-Za-z0-9_.:/*@+=,-]{1,255}$")
# Commands that administer the server, and categories that hold every such command.
FORBIDDEN_COMMANDS = frozenset({"acl", "config", "module", "debug"})
FORBIDDEN_CATEGORIES = frozenset({"@admin", "@dangerous", "@scripting"})
# Function libraries are server-wide and outlive the grant: whoever loads, replaces or flushes
# them changes what every other user's FCALL runs (they sit in @write, not in @admin). A script
# (EVAL, FCALL) can also busy-loop: the server then answers nothing else, a revoke included, until
# an admin kills it. So scripting is for privileged permissions only.
SCRIPTING_COMMANDS = frozenset(
    {"eval", "eval_ro", "evalsha", "evalsha_ro", "fcall", "fcall_ro", "function", "script"}
)
# Redis checks key patterns only on a command's key arguments, in every database alike: SCAN
# and RANDOMKEY would list every key name, DBSIZE and MEMORY STATS count them, SELECT reaches the
# same names in other databases, MOVE and COPY ... DB write the same names into another database,
# CLUSTER GETKEYSINSLOT lists a slot's names. CLIENT TRACKING (with BCAST, any prefix) pushes the
# name of every key anyone changes; CLIENT CACHING only serves it. MEMORY DOCTOR, MALLOC-STATS
# and PURGE report on or work on the whole server.
_OUTSIDE_PATTERNS = (
    "-scan",
    "-randomkey",
    "-dbsize",
    "-select",
    "-move",
    "-copy",
    "-client|tracking",
    "-client|caching",
    "-cluster|getkeysinslot",
    "-cluster|countkeysinslot",
    "-memory|stats",
    "-memory|doctor",
    "-memory|malloc-stats",
    "-memory|purge",
)
# Channel patterns are checked only on channel arguments: PUBSUB CHANNELS lists every active
# channel, NUMSUB counts another channel's subscribers, NUMPAT everyone's patterns.
_OUTSIDE_CHANNELS = (
    "-pubsub|channels",
    "-pubsub|shardchannels",
    "-pubsub|numsub",
    "-pubsub|shardnumsub",
    "-pubsub|numpat",
)
# The end of every non-privileged rule list. Rules apply in order, so a `-` here wins over any
# catalog rule before it, whichever category or subcommand that rule names.
SAFETY_SUFFIX = ("-@admin", "-@dangerous", "-@scripting", *_OUTSIDE_PATTERNS, *_OUTSIDE_CHANNELS)
BUILTIN_COMMANDS: dict[str, tuple[str, ...]] = {
    "read-only": ("+@read", "+@connection"),
    "read-write": ("+@read", "+@write", "+@connection"),
    "pubsub": ("+@pubsub", "+@connection"),
}


def forbidden_rule(rule: str) -> bool:
    """True for a rule that grants administration: never allowed unless the permission is
    marked privileged."""
    if not rule.startswith("+"):
        return False
    body = rule[1:]
    if body.startswith("@"):
        return body in FORBIDDEN_CATEGORIES
    command = body.partition("|")[0]
    return command in FORBIDDEN_COMMANDS or command in SCRIPTING_COMMANDS


class Connection(Settings):
    host: str = "127.0.0.1"
    port: int = Field(default=6379, ge=1, le=65535)
    user_prefix: str = Field(default="jit-", pattern=r"^[a-z][a-z0-9_.-]{0,11}$")
    user: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9_.@-]{1,64}$",
        description="the connector's admin ACL user (needs +acl and +client)",
    )
    tls: bool = Field(default=True, description="TLS, with the server's certificate verified")
    tls_ca_file: str | None = None
    allow_insecure_transport: bool = Field(
        default=False, description="allow tls: false to a host other than loopback"
    )
    connect_timeout: float = Field(default=5.0, gt=0, le=60)
    login_host: str | None = Field(default=None, description="host the grantee connects to")
    acl_save: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="ACL SAVE after each change: auto when the server has an aclfile",
    )
    keep_connection_seconds: float = keep_connection_field()

    @model_validator(mode="after")
    def _transport(self) -> Connection:
        # A catalog edit must not be able to send the admin password in the clear to any host.
        if not self.tls and not is_loopback(self.host) and not self.allow_insecure_transport:
            raise ValueError(
                "tls: false sends the admin password in the clear; keep TLS on, or set "
                "allow_insecure_transport: true"
            )
        return self

    def warnings(self) -> list[str]:
        """Each relaxed setting, for `jitc catalog check`."""
        found = []
        if not self.tls:
            where = "a loopback host" if is_loopback(self.host) else "allow_insecure_transport"
            found.append(f"tls false ({where}): the admin password travels in the clear")
        if self.acl_save == "never":
            found.append("acl_save never: a server restart forgets tombstones")
        return found


class Permission(PermissionSettings):
    """`resources` are key patterns (`~pattern`): a request names the ones it needs."""

    template: Literal["read-only", "read-write", "pubsub"] | None = Field(
        default=None, description="built-in command rules"
    )
    commands: list[str] | None = Field(
        default=None, description="command rules such as +get, +@hash, -flushdb"
    )
    channels: list[str] = Field(default_factory=empty_list, description="Pub/Sub channel patterns")
    privileged: bool = Field(
        default=False,
        description="allows +@admin, +@dangerous, +@scripting, ACL, CONFIG, MODULE, DEBUG",
    )

    @field_validator("commands")
    @classmethod
    def _commands(cls, commands: list[str] | None) -> list[str] | None:
        for index, rule in enumerate(commands or []):
            if not _COMMAND_RULE.match(rule):
                raise ValueError(
                    f"commands[{index}]: {rule!r} is not a command rule (+cmd, -cmd, +cmd|sub, "
                    "+@category); keys come from resources, channels from channels"
                )
        return commands

    @field_validator("channels")
    @classmethod
    def _channels(cls, channels: list[str]) -> list[str]:
        for index, channel in enumerate(channels):
            # `&*` would turn into allchannels, which replaces every pattern, the label included.
            if not _CHANNEL.match(channel) or channel == "*":
                raise ValueError(f"channels[{index}]: {channel!r} is not a channel pattern")
        return channels

    @model_validator(mode="after")
    def _shape(self) -> Permission:
        if (self.template is None) == (self.commands is None):
            raise ValueError("a Redis permission needs exactly one of template or commands")
        if not self.privileged:
            bad = [rule for rule in self.command_rules() if forbidden_rule(rule)]
            if bad:
                raise ValueError(
                    f"{', '.join(bad)} reach server administration: only a permission marked "
                    "privileged may grant them"
                )
        return self

    def command_rules(self) -> tuple[str, ...]:
        if self.commands is not None:
            return tuple(self.commands)
        assert self.template is not None
        return BUILTIN_COMMANDS[self.template]


def user_name(connection: Connection, grant_id: str) -> str:
    return userledger.user_name(connection.user_prefix, grant_id)


def tombstone_name(connection: Connection, grant_id: str) -> str:
    return userledger.tombstone_name(connection.user_prefix, grant_id)


def acl_rules(
    permission: Permission, resources: tuple[str, ...], password_hash: str, label: str
) -> list[str]:
    """The ACL SETUSER arguments after the user name. Passwords, keys, channels, commands and
    selectors are reset before they are set, so applying them again (a redelivery, which
    derives the same password) leaves the same user, and the one password that logs in is
    always the one written with these rules and this label, in one atomic command."""
    rules = ["on", "resetpass", f"#{password_hash}", "clearselectors", "resetkeys"]
    rules += [f"~{pattern}" for pattern in resources]
    rules += ["resetchannels", f"&{label}"]
    rules += [f"&{channel}" for channel in permission.channels]
    rules.append("-@all")
    rules += permission.command_rules()
    if not permission.privileged:
        rules += SAFETY_SUFFIX
    return rules


def check_resources(spec: GrantSpec) -> None:
    for index, pattern in enumerate(spec.resources):
        # `~` is added here; a resource that starts with a rule character would read as a rule.
        if pattern[0] in "~%&+-#>< (":
            raise Refused(f"resources[{index}]", f"{pattern!r} is not a key pattern")


@functools.cache
def _take() -> Callable[[str, Connection, Secret | None, LabelKey | None], RedisSession]:
    """`redis_session.take`, imported (with redis-py) when a first session is opened. An import
    statement of a module already loaded still costs ~8k instructions, at every batch."""
    from jitc.templates.redis_session import take

    return take


class RedisTemplate:
    kind: ClassVar[str] = "redis"
    Connection: ClassVar[type[Settings]] = Connection
    Permission: ClassVar[type[PermissionSettings]] = Permission
    uses_label_key: ClassVar[bool] = True

    def needs_secret_delivery(self, permission: PermissionSettings) -> bool:
        return True

    def check(self, connection: Settings, permission: PermissionSettings, spec: GrantSpec) -> None:
        check_resources(spec)

    def plan(self, connection: Settings, spec: GrantSpec) -> list[str]:
        assert isinstance(connection, Connection)
        permission = spec.permission
        assert isinstance(permission, Permission)
        label = f"jitc1:{spec.integration}:{spec.grant_id}:a:{int(spec.expires_at.timestamp())}:"
        label += f"{spec.permission_name}:{spec_digest(spec)}:{MASK}"
        name = user_name(connection, spec.grant_id)
        rules = acl_rules(permission, spec.resources, MASK, label)
        return [" ".join(["ACL SETUSER", name, *rules])]

    def open(
        self,
        integration: str,
        connection: Settings,
        secret: Secret | None,
        label_key: LabelKey | None = None,
    ) -> RedisSession:
        assert isinstance(connection, Connection)
        return _take()(integration, connection, secret, label_key)
