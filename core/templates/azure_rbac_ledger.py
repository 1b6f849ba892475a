"""What Azure RBAC's assignment mode cannot keep in ARM itself, kept in a blob container of the
Function App's own storage account (the one holding its queues), read and written with the app's
identity: tombstones of revoked grants, and a lock per shared assignment.

Tombstones. A revoke that finds nothing (the grant's delivery is still on its way: Storage Queues
redeliver and reorder) leaves no assignment to remember it by, so it writes a blob: its name a
keyed hash of the integration and grant id (nobody without the label key can compute the name of
a grant's tombstone, so nobody can squat on it), its content the connector's MACed label, its
metadata the grant id and the time until which it is kept. A grant reads it before making or
joining an assignment and is refused while it exists. The sweep lists the tombstones and deletes
those past their time (`forget`); the metadata it reads there is not MACed, but whoever could
forge it could delete the blob as well, and a listed grant id is only believed when the blob's
keyed name matches it.

Locks. ARM keeps no ETag on a role assignment, so two writers of a shared assignment's
description (its list of grants) would each write back the other's grant. Every read-modify-write
of an assignment holds a 60 s blob lease on a lock blob named by a keyed hash of what ARM keys an
assignment by (scope, principal, role): the one lock whoever shares it takes. The lease is
renewed right before each write (a holder that lost it, stalled past its 60 s, stops before
writing) and again right after it: a write that outlasted the lease may have landed over another
holder's, so its writer takes the lock anew, reads the assignment again and removes every grant
that has a tombstone (whichever write came last, no revoked grant stays). Every ARM call is
bounded well under the lease (`azure_rbac.arm_options`). The lease is released at the end
and never broken: a crashed holder's lease runs out on its own.
Only an infinite lease is broken, which the connector never takes: someone who may write the
container could otherwise block every revoke of an assignment for good.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jitc.errors import TargetError
from jitc.labels import LabelKey, sign_label, verify_label

KIND = "azure_rbac"
TOMBSTONES = "tombstones/"
LOCKS = "locks/"
LEASE_SECONDS = 60
# How long an operation waits for a lock before failing (its message is then retried): above a
# read-modify-write's few ARM calls, below the host's function timeout.
LOCK_WAIT_SECONDS = 45.0


@dataclass
class Held:
    """A lease on one lock blob, held by this operation."""

    lease: Any
    what: str

    def renew(self) -> None:
        """Called right before a write: a lease lost (expired, taken by another) stops it."""
        from azure.core.exceptions import HttpResponseError

        try:
            self.lease.renew()
        except HttpResponseError:
            raise TargetError(f"lost the lock on {self.what}; the operation is retried") from None

    def kept(self) -> bool:
        """Called right after a write: whether the lease outlived it. A write that took longer
        than the lease (a slow or throttled ARM call) may have landed after another holder's
        read-modify-write, undoing it; Storage refuses the renewal once anyone else has taken
        the lease since, while a lease that ran out unclaimed renews (nobody wrote meanwhile)."""
        from azure.core.exceptions import HttpResponseError

        try:
            self.lease.renew()
        except HttpResponseError:
            return False
        return True


def _infinite(blob: Any) -> bool:
    """Whether the blob's current lease is an infinite one (gone meanwhile: no)."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return bool(blob.get_blob_properties().lease.duration == "infinite")
    except ResourceNotFoundError:
        return False


class Ledger:
    def __init__(self, container: Any, key: LabelKey, integration: str) -> None:
        self.container = container
        self.key = key
        self.integration = integration

    # -- tombstones ------------------------------------------------------------------------

    def _tombstone_name(self, grant_id: str) -> str:
        return TOMBSTONES + self.key.keyed_hash(
            "azure_rbac tombstone", f"{self.integration}\0{grant_id}"
        )

    def _bound(self, grant_id: str) -> str:
        return f"tombstone\0{self.integration}\0{grant_id}"

    def tombstoned(self, grant_id: str) -> bool:
        """Whether this grant was revoked (a tombstone with our MAC exists for it)."""
        from azure.core.exceptions import ResourceNotFoundError

        blob = self.container.get_blob_client(self._tombstone_name(grant_id))
        try:
            data = blob.download_blob().readall()
        except ResourceNotFoundError:
            return False
        label = verify_label(self.key, KIND, self._bound(grant_id), data.decode(errors="replace"))
        return (
            label is not None
            and label.get("grant_id") == grant_id
            and label.get("integration") == self.integration
        )

    def bury(self, grant_id: str, until: datetime) -> None:
        """Write the grant's tombstone, kept until `until`; one already there is kept."""
        from azure.core.exceptions import ResourceExistsError

        iso = until.isoformat()
        label = {
            "integration": self.integration,
            "grant_id": grant_id,
            "expires_at": iso,
            "state": "tombstone",
        }
        body = sign_label(self.key, KIND, self._bound(grant_id), label).encode()
        metadata = {"grant_id": grant_id, "until": iso}
        blob = self.container.get_blob_client(self._tombstone_name(grant_id))
        try:
            # If-None-Match: * -- concurrent revokes of one grant write it once.
            blob.upload_blob(body, overwrite=False, metadata=metadata)
        except ResourceExistsError:
            if self.tombstoned(grant_id):
                return
            # A blob at the name that does not verify (damaged, or written by someone who may
            # write the container): it cannot stand for this tombstone, so ours replaces it.
            blob.upload_blob(body, overwrite=True, metadata=metadata)

    def tombstones(self) -> list[tuple[str, datetime]]:
        """Every tombstone of this integration: (grant id, kept until)."""
        found: list[tuple[str, datetime]] = []
        for item in self.container.list_blobs(name_starts_with=TOMBSTONES, include=["metadata"]):
            metadata = item.metadata or {}
            grant_id = str(metadata.get("grant_id", ""))
            if not grant_id or item.name != self._tombstone_name(grant_id):
                continue  # another integration's, or not ours
            try:
                until = datetime.fromisoformat(str(metadata.get("until", "")))
            except ValueError:
                continue
            found.append((grant_id, until))
        return found

    def forget(self, grant_id: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with suppress(ResourceNotFoundError):
            self.container.delete_blob(self._tombstone_name(grant_id))

    # -- locks -----------------------------------------------------------------------------

    @contextmanager
    def lock(self, scope: str, principal: str, role: str) -> Iterator[Held]:
        """Hold the lock of the assignment of `role` to `principal` on `scope`."""
        from azure.core.exceptions import (
            HttpResponseError,
            ResourceExistsError,
            ResourceNotFoundError,
        )
        from azure.storage.blob import BlobLeaseClient

        what = f"the role assignment of {role.rsplit('/', 1)[-1]} on {scope}"
        name = LOCKS + self.key.keyed_hash(
            "azure_rbac lock",
            "\0".join([scope.strip("/").lower(), principal.lower(), role.lower()]),
        )
        blob = self.container.get_blob_client(name)
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                lease = blob.acquire_lease(lease_duration=LEASE_SECONDS)
                break
            except ResourceNotFoundError:
                # First use: make the (empty) lock blob; one made meanwhile is as good.
                with suppress(ResourceExistsError):
                    blob.upload_blob(b"", overwrite=False)
                continue
            except HttpResponseError as exc:
                if exc.status_code != 409:  # 409 LeaseAlreadyPresent: someone holds it
                    raise
                if _infinite(blob):
                    # The connector only takes 60 s leases: an infinite one was taken by
                    # someone else who may write the container, and would block every revoke
                    # of this assignment (and the sweep's) for good. No holder of ours is
                    # cut off by breaking it.
                    BlobLeaseClient(blob).break_lease(lease_break_period=0)
                    continue
            if time.monotonic() >= deadline:
                raise TargetError(f"{what} is locked by another operation; it is retried")
            time.sleep(0.1 + random.random() * 0.3)  # noqa: S311 (jitter, not a secret)
        try:
            yield Held(lease, what)
        finally:
            # A release that fails leaves the lease to run out on its own.
            with suppress(HttpResponseError):
                lease.release()
