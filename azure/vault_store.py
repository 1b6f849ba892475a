"""`azure-kv:https://VAULT.vault.azure.net/secrets/NAME[/VERSION][#field]`: secrets read from Azure
Key Vault with the function app's managed identity, at the moment of use.

Nothing is cached: the engine keeps a value for one batch and drops it. The reference is parsed
strictly (https, a vault host under the cloud's Key Vault DNS suffix, a valid secret name and
version) before any request is made, so a catalog cannot point the identity's token at another
host. Errors carry the reference and Key Vault's error code, never a value or Key Vault's message.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jitc.errors import SecretError
from jitc.secrets import Secret, SecretRef, pick_field

SCHEME = "azure-kv"
PUBLIC_SUFFIX = "vault.azure.net"
# Key Vault's rules: names of 1-127 letters, digits and dashes; versions are 32 hex digits.
_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_VERSION = re.compile(r"^[0-9a-f]{32}$")
_VAULT_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]$")


@dataclass(frozen=True)
class SecretLocation:
    vault_url: str
    name: str
    version: str | None


def parse_location(ref: SecretRef, dns_suffix: str = PUBLIC_SUFFIX) -> SecretLocation:
    """The vault and secret a reference names; SecretError for anything else."""
    try:
        parts = urllib.parse.urlsplit(ref.location)
    except ValueError:
        raise SecretError(f"secret {ref}: not a URL") from None
    host = parts.netloc.lower()
    vault, dot, suffix = host.partition(".")
    if (
        parts.scheme != "https"
        or not dot
        or suffix != dns_suffix.lower()
        or parts.query
        or "@" in host
        or not (_VAULT_LABEL.match(vault) or (dns_suffix != PUBLIC_SUFFIX and vault.isdigit()))
    ):
        raise SecretError(f"secret {ref}: expected https://VAULT.{dns_suffix}/secrets/NAME")
    segments = parts.path.split("/")
    if len(segments) not in (3, 4) or segments[0] != "" or segments[1] != "secrets":
        raise SecretError(f"secret {ref}: expected a path /secrets/NAME[/VERSION]")
    name = segments[2]
    version = segments[3] if len(segments) == 4 else None
    if not _NAME.match(name) or (version is not None and not _VERSION.match(version)):
        raise SecretError(f"secret {ref}: not a valid Key Vault secret name or version")
    return SecretLocation(f"https://{host}", name, version)


class KeyVaultStore:
    """One `SecretClient` per vault (the client holds no secret value, only the identity's
    token cache); each resolve is one GET of the secret."""

    def __init__(
        self,
        credential: Any,
        dns_suffix: str = PUBLIC_SUFFIX,
        client_options: dict[str, Any] | None = None,
        client_factory: Callable[..., Any] | None = None,
    ) -> None:
        self._credential = credential
        self.dns_suffix = dns_suffix
        self._options = dict(client_options or {})
        self._factory = client_factory
        self._clients: dict[str, Any] = {}

    def _client(self, vault_url: str) -> Any:
        client = self._clients.get(vault_url)
        if client is None:
            factory = self._factory
            if factory is None:
                from azure.keyvault.secrets import SecretClient

                factory = SecretClient
            client = factory(vault_url=vault_url, credential=self._credential, **self._options)
            self._clients[vault_url] = client
        return client

    def resolve(self, ref: SecretRef) -> Secret:
        if ref.scheme != SCHEME:
            raise SecretError(f"secret {ref}: not a Key Vault reference")
        where = parse_location(ref, self.dns_suffix)
        from azure.core.exceptions import AzureError, HttpResponseError

        try:
            secret = self._client(where.vault_url).get_secret(where.name, where.version)
        except HttpResponseError as exc:
            code = (exc.error.code if exc.error else None) or str(exc.status_code or "error")
            raise SecretError(f"secret {ref}: Key Vault answered {code}") from None
        except AzureError as exc:
            raise SecretError(
                f"secret {ref}: Key Vault unreachable ({type(exc).__name__})"
            ) from None
        if secret.value is None:
            raise SecretError(f"secret {ref}: has no value")
        return pick_field(ref, secret.value)
