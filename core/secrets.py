"""Secret references and the local secret stores.

A catalog holds only *references* such as `env:PG_ADMIN` or `file:/run/secrets/pg#password`;
the value is fetched when a batch needs it and dropped with the batch.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Protocol

from jitc.errors import SecretError


class Secret:
    """A secret value that will not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")


class SecretRef:
    """`scheme:location[#field]`; the field picks a key out of a JSON secret."""

    __slots__ = ("field", "location", "scheme")

    def __init__(self, text: str) -> None:
        scheme, sep, rest = text.partition(":")
        if not sep or not scheme or not rest:
            raise ValueError(f"secret reference {text!r} must look like 'scheme:location[#field]'")
        location, _, field = rest.partition("#")
        self.scheme, self.location, self.field = scheme, location, field or None

    def __str__(self) -> str:
        return f"{self.scheme}:{self.location}" + (f"#{self.field}" if self.field else "")

    __repr__ = __str__


def pick_field(ref: SecretRef, raw: str) -> Secret:
    """Return the whole value, or one field of a JSON object when the reference names one."""
    if ref.field is None:
        return Secret(raw)
    try:
        doc = json.loads(raw)
    except ValueError:
        raise SecretError(f"secret {ref} is not a JSON object, so it has no field") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(ref.field), str):
        raise SecretError(f"secret {ref} has no string field {ref.field!r}")
    return Secret(doc[ref.field])


class SecretStore(Protocol):
    """Port: resolve a reference to its value, at the moment it is needed."""

    def resolve(self, ref: SecretRef) -> Secret: ...


class EnvSecretStore:
    """`env:NAME`: for local use and tests. Cloud deployments use their secret service."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ if environ is not None else os.environ

    def resolve(self, ref: SecretRef) -> Secret:
        raw = self._environ.get(ref.location)
        if raw is None:
            raise SecretError(f"secret {ref}: environment variable {ref.location} is not set")
        return pick_field(ref, raw)


class FileSecretStore:
    """`file:/path`: a file readable only by the connector (e.g. a mounted secret).

    `jitc rotate` writes the next value to `/path.pending` before it sets it in the target and
    renames it over `/path` once it works (Secrets Manager's AWSPENDING, in a file)."""

    def resolve(self, ref: SecretRef) -> Secret:
        try:
            raw = Path(ref.location).read_text(encoding="utf-8").rstrip("\n")
        except OSError as exc:
            raise SecretError(f"secret {ref}: cannot read file ({exc.strerror})") from None
        return pick_field(ref, raw)

    def candidates(self, ref: SecretRef) -> list[Secret]:
        """The value read afresh, then the pending one a rotation may already have set.

        The pending file is read first: a rotation renames it over the file in one step, so
        read in this order one of the two reads sees the new value however they interleave
        with the rename (read the other way, the file could be read just before the rename
        and the pending file looked for just after it, and the new value missed)."""
        pending = pending_ref(ref)
        ahead: Secret | None = None
        if private_file(Path(pending.location)):
            # Unreadable or without the field: the current value stands alone.
            with suppress(SecretError):
                ahead = self.resolve(pending)
        found = [self.resolve(ref)]
        if ahead is not None:
            found.append(ahead)
        return found


def private_file(path: Path) -> bool:
    """A regular file (not a link) of this process's user that nobody else may read or write:
    a pending value anyone else could plant would choose the admin's next password."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o077


def pending_path(location: str) -> str:
    return f"{location}.pending"


def pending_ref(ref: SecretRef) -> SecretRef:
    """Where `jitc rotate` keeps a file secret's next value until the target takes it."""
    return SecretRef(f"file:{pending_path(ref.location)}" + (f"#{ref.field}" if ref.field else ""))


class SecretStores:
    """Routes a reference to the store registered for its scheme."""

    def __init__(self, stores: Mapping[str, SecretStore]) -> None:
        self._stores = dict(stores)

    def resolve(self, ref: SecretRef) -> Secret:
        store = self._stores.get(ref.scheme)
        if store is None:
            raise SecretError(
                f"secret {ref}: no store for scheme {ref.scheme!r} here "
                f"(known: {', '.join(sorted(self._stores))})"
            )
        return store.resolve(ref)

    def candidates(self, ref: SecretRef) -> list[Secret]:
        store = self._stores.get(ref.scheme)
        if store is None:
            return [self.resolve(ref)]  # raises, naming the known schemes
        return reread(store, ref)


def reread(store: SecretStore, ref: SecretRef) -> list[Secret]:
    """The value read again, then any value a rotation in progress holds as pending: a store
    that knows no pending values (env:) simply reads again. The engine tries them in order
    after the target refused the value it had (a rotation between its read and its login)."""
    candidates = getattr(store, "candidates", None)
    if candidates is None:
        return [store.resolve(ref)]
    found: list[Secret] = candidates(ref)
    return found


def local_stores() -> SecretStores:
    return SecretStores({"env": EnvSecretStore(), "file": FileSecretStore()})
