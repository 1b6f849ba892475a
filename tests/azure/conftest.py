"""Fixtures of the Azure tests: one local Azure per session (Azurite, identity, Key Vault, ARM),
the PostgreSQL schema the grants use, and a clean app environment per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import azharness
import pytest
from azblob import AzuriteBlob, BlobProxy

_SETTINGS = (
    "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "AZURE_CLIENT_ID", "JITC_CATALOG",
    "JITC_CATALOG_SHA256", "JITC_QUEUE_NAME", "JITC_POISON_QUEUE_NAME", "JitcQueue__queueServiceUri",
    "JITC_CA_BUNDLE", "JITC_KEY_VAULT_DNS_SUFFIX", "JITC_EXPIRY_MAX_DELAY_SECONDS",
    "JITC_RBAC_LEDGER_URL", "JITC_AZURE_OWN_SCOPE",
)  # fmt: skip


@pytest.fixture(scope="session")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[azharness.Cloud]:
    yield from azharness.start_cloud(tmp_path_factory.mktemp("azure"))


@pytest.fixture(scope="session")
def blobs(cloud: azharness.Cloud) -> Iterator[tuple[AzuriteBlob, BlobProxy]]:
    """Azurite's blob service, and the app's way to it through the judging proxy."""
    try:
        azurite = AzuriteBlob(cloud.tls)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    proxy = BlobProxy(azurite, cloud.authz, cloud.tls, azharness.STORAGE_ID)
    try:
        yield azurite, proxy
    finally:
        proxy.close()
        azurite.close()


@pytest.fixture(autouse=True)
def _app_environment() -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in _SETTINGS}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    from jitc.azure import runtime

    runtime.reset()


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Any]:
    from pgtest import schema_admin

    with schema_admin(azharness.PG_PREFIX, azharness.PG_SCHEMA) as conn:
        yield conn
