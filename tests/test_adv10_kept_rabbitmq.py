"""Adversarial tests against the RabbitMQ admin clients kept across batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from test_rabbitmq import ADMIN_PASSWORD, INTEGRATION, Env, make_env, root
from userenv import LABEL_KEY

from jitc.labels import LabelKey
from jitc.secrets import Secret
from jitc.templates import rabbitmq_session

__all__ = ["make_env", "root"]
KEY = LabelKey.from_secret(LABEL_KEY)


@pytest.fixture(autouse=True)
def _empty_pool() -> Iterator[None]:
    rabbitmq_session.POOL.close_all()
    yield
    rabbitmq_session.POOL.close_all()


def _open(env: Env, secret: str = ADMIN_PASSWORD, **extra: Any) -> Any:
    integration = env.engine.catalog.integration(INTEGRATION)
    connection = integration.connection.model_copy(update=extra)
    return integration.template.open(INTEGRATION, connection, Secret(secret), KEY)


def test_a_kept_rabbitmq_session_holds_no_label_key(
    make_env: Callable[..., Env], root: httpx.Client
) -> None:
    env = make_env()
    session = _open(env)
    session.active_grants()
    session.close()
    assert len(rabbitmq_session.POOL) == 1  # kept, between batches
    held = [v for v in vars(session).values() if isinstance(v, LabelKey)]
    assert all(LABEL_KEY.encode() not in key.secret for key in held), "label key kept"
