"""Errors that carry what a caller needs to answer well, and never a secret."""

from __future__ import annotations


class JitcError(Exception):
    """Base of the connector's own errors."""


class Refused(JitcError):
    """The request is not allowed; nothing was changed. `field` names the offending input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CatalogError(JitcError):
    """The catalog file is invalid; the message names the integration and the field."""


class SecretError(JitcError):
    """A secret reference could not be resolved. The message names the reference, never a value."""


class TargetError(JitcError):
    """The target refused or failed an operation."""


class AuthenticationFailed(TargetError):
    """The target refused the connector's admin credential. During a rotation the secret store
    may already hold the new one (or hold it as pending): the engine reads it again, once."""


class ConfigError(RuntimeError):
    """A function's environment is incomplete: a deployment error, not a request error (so it
    is neither a JitcError nor answered as one)."""


def required_env(name: str, what: str = "environment variable") -> str:
    """The value of an environment variable a deployment must set (never a secret: secrets
    are read from the cloud's secret store)."""
    import os

    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{what} {name} is not set")
    return value
