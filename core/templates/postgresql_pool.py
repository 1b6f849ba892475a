"""PostgreSQL admin sessions kept across batches, by the rules of `jitc.templates.kept`.

A queue delivers one message per batch more often than not, and a new connection (TLS, SCRAM,
backend start) costs several times what the grant itself does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jitc.labels import LabelKey
from jitc.secrets import Secret
from jitc.templates.kept import SessionPool
from jitc.templates.postgresql import Connection

if TYPE_CHECKING:
    from jitc.templates.postgresql_session import PostgreSQLSession

POOL: SessionPool[PostgreSQLSession] = SessionPool()


def take(
    integration: str, connection: Connection, secret: Secret | None, key: LabelKey
) -> PostgreSQLSession:
    """A session kept from an earlier batch of the same integration, settings, secret and label
    key, or a new one."""
    from jitc.templates.postgresql_session import PostgreSQLSession

    session, _ = POOL.session(
        integration,
        connection,
        secret,
        key,
        connection.keep_connection_seconds,
        lambda: PostgreSQLSession(integration, connection, secret, key),
    )
    return session


def give_back(session: PostgreSQLSession) -> None:
    """Keep the session for a later batch if it is idle and healthy; close it otherwise."""
    POOL.give_back(session, session.settings.keep_connection_seconds)


def close_all() -> None:
    """Close every kept session (tests, and a process that stops)."""
    POOL.close_all()
