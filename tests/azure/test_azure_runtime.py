"""The app's engine hands the RBAC template the app's identity and transport settings whenever
the catalog has an RBAC integration (and spares other catalogs the template's import)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from jitc.azure import runtime
from jitc.templates import azure_rbac

SUB = str(uuid.uuid4())
VAULT = "https://jitcrt.vault.azure.net/secrets"
PG = {
    "kind": "postgresql",
    "connection": {"host": "127.0.0.1", "dbname": "test", "user": "postgres"},
    "credentials": f"azure-kv:{VAULT}/pg#password",
    "permissions": {"read-only": {"template": "read-only", "resources": ["public"]}},
}
RBAC = {
    "kind": "azure_rbac",
    "connection": {
        "subscription_id": SUB,
        "scopes": [f"subscriptions/{SUB}/resourceGroups/rt"],
        "allowed_principal_ids": ["*"],
    },
    "permissions": {
        "reader": {
            "role_definition_id": "acdd72a7-3385-48ef-bd42-f606fba81ae7",
            "resources": [f"subscriptions/{SUB}/resourceGroups/rt"],
        }
    },
}


def _app(monkeypatch: pytest.MonkeyPatch, integrations: dict[str, Any]) -> None:
    catalog = {"connector": {"label_key": f"azure-kv:{VAULT}/label"}, "integrations": integrations}
    monkeypatch.setenv("JITC_CATALOG", json.dumps(catalog))
    monkeypatch.setenv("JITC_QUEUE_NAME", "jitcrt-requests")
    monkeypatch.setenv("JitcQueue__queueServiceUri", "https://jitcrt.queue.core.windows.net/")
    monkeypatch.setenv("JITC_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.delenv("JITC_CATALOG_SHA256", raising=False)
    runtime.reset()


def test_an_rbac_catalog_gives_the_template_the_apps_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _app(monkeypatch, {"orders-db": PG, "subs": RBAC})
    own = f"/subscriptions/{SUB}/resourceGroups/jitc"
    monkeypatch.setenv("JITC_AZURE_OWN_SCOPE", own)  # the module's app setting
    runtime.engine()
    assert azure_rbac._credential is runtime.credential()
    assert azure_rbac._transport == {"connection_verify": "/etc/ssl/certs/ca-certificates.crt"}
    assert azure_rbac._own_scope == own  # never granted on (its storage account, app)


def test_a_catalog_without_rbac_leaves_the_template_unconfigured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _app(monkeypatch, {"orders-db": PG})
    runtime.engine()
    assert azure_rbac._credential is None and azure_rbac._transport == {}
    assert azure_rbac._own_scope is None
