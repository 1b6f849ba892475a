"""The Key Vault store: strict references (no token sent to another host), versions and fields
read by the real SecretClient from the vault fake, errors that name the reference only."""

from __future__ import annotations

import json

import azfakes
import azharness
import pytest
from azure.identity import ManagedIdentityCredential

from jitc.azure.vault_store import KeyVaultStore, parse_location
from jitc.errors import SecretError
from jitc.secrets import SecretRef


@pytest.mark.parametrize(
    "text",
    [
        "azure-kv:http://myvault.vault.azure.net/secrets/pg",
        "azure-kv:https://myvault.vault.azure.net.evil.example/secrets/pg",
        "azure-kv:https://evil.example/secrets/pg",
        "azure-kv:https://user@myvault.vault.azure.net/secrets/pg",
        "azure-kv:https://myvault.vault.azure.net/keys/pg",
        "azure-kv:https://myvault.vault.azure.net/secrets/pg_admin",
        "azure-kv:https://myvault.vault.azure.net/secrets/pg/not-a-version",
        "azure-kv:https://myvault.vault.azure.net/secrets/pg?x=1",
        "azure-kv:https://myvault.vault.azure.net/secrets/pg/v/extra",
    ],
)
def test_references_outside_key_vault_are_refused_before_any_call(text: str) -> None:
    with pytest.raises(SecretError) as caught:
        parse_location(SecretRef(text))
    assert "secret azure-kv:" in str(caught.value)


def test_a_good_reference() -> None:
    where = parse_location(
        SecretRef(
            "azure-kv:https://myvault.vault.azure.net/secrets/pg-admin/" + "a" * 32 + "#password"
        )
    )
    assert (where.vault_url, where.name, where.version) == (
        "https://myvault.vault.azure.net", "pg-admin", "a" * 32,
    )  # fmt: skip


def test_versions_fields_and_errors_through_the_real_client(cloud: azharness.Cloud) -> None:
    vault = cloud.vault
    old = vault.put("kv-test", json.dumps({"password": "old-value-1"}))
    vault.put("kv-test", json.dumps({"password": "new-value-2"}))
    cloud.authz.assignments[:] = [
        azfakes.Assignment(
            azharness.APP_OID, "Key Vault Secrets User", (),
            ("Microsoft.KeyVault/vaults/secrets/getSecret/action",),
            f"{azharness.VAULT_ID}/secrets/kv-test",
        )
    ]  # fmt: skip
    with azfakes.environment(cloud.identity.env):
        store = KeyVaultStore(
            ManagedIdentityCredential(client_id=azharness.APP_CLIENT_ID),
            vault.dns_suffix,
            {"connection_verify": str(cloud.tls.cert)},
        )
        assert (
            store.resolve(SecretRef(vault.reference("kv-test", "password"))).reveal()
            == "new-value-2"
        )
        pinned = vault.reference("kv-test", "password", version=old)
        assert store.resolve(SecretRef(pinned)).reveal() == "old-value-1"
        with pytest.raises(SecretError) as denied:
            store.resolve(SecretRef(vault.reference("kv-other")))
        assert "Key Vault answered Forbidden" in str(denied.value)
        with pytest.raises(SecretError) as missing_field:
            store.resolve(SecretRef(vault.reference("kv-test", "nope")))
        assert "new-value-2" not in str(missing_field.value)
