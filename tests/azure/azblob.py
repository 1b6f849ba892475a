"""Azurite's blob service for the inventory sync's state, and the app's way to it: an HTTPS
reverse proxy that judges each blob call as Azure Storage would for an Entra ID token (the data
action the operation needs, on the container's scope) before forwarding it unchanged.

Data actions per operation, from Storage's "Authorize with Microsoft Entra ID" reference: Get
Blob and Get Blob Properties need `blobs/read`; Put Blob needs `blobs/write` (`blobs/add/action`
covers only a blob that does not exist yet); Lease Blob needs `blobs/write`; Delete Blob needs
`blobs/delete`; List Blobs needs `blobs/read` on the container. Other container operations are
control-plane rights the app is not given.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from azfakes import NODE, Authz, Azurite, StorageProxy, Tls, _claims, _serve_raw

BLOBS = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs"
BLOB_ACTIONS = {
    ("GET", "blob"): f"{BLOBS}/read",
    ("HEAD", "blob"): f"{BLOBS}/read",
    ("PUT", "blob"): f"{BLOBS}/write",
    ("DELETE", "blob"): f"{BLOBS}/delete",
}


class AzuriteBlob:
    """Azurite's blob service, in memory, HTTPS with the test certificate, OAuth on."""

    ACCOUNT = "devstoreaccount1"

    def __init__(self, tls: Tls) -> None:
        binary = NODE / "node_modules" / ".bin" / "azurite-blob"
        if not binary.exists() or shutil.which("node") is None:
            raise RuntimeError(f"Azurite is not installed: run `npm ci` in {NODE}")
        self.process = subprocess.Popen(
            [
                str(binary), "--inMemoryPersistence", "--blobHost", "127.0.0.1",
                "--blobPort", "0", "--cert", str(tls.cert), "--key", str(tls.key),
                "--oauth", "basic", "--disableTelemetry", "--silent", "--skipApiVersionCheck",
            ],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.port = self._wait_port()

    def _wait_port(self) -> int:
        assert self.process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            match = re.search(r"listens on https://127\.0\.0\.1:(\d+)", line)
            if match:
                threading.Thread(target=self.process.stdout.read, daemon=True).start()
                return int(match.group(1))
        self.process.kill()
        raise RuntimeError("Azurite's blob service did not start")

    @property
    def blob_service_uri(self) -> str:
        return f"https://127.0.0.1:{self.port}/{self.ACCOUNT}"

    def close(self) -> None:
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


class BlobProxy(StorageProxy):
    """The queue proxy's judging and forwarding, for blob paths (`/account/container/blob`)."""

    def __init__(self, azurite: AzuriteBlob, authz: Authz, tls: Tls, storage_id: str) -> None:
        self.azurite = azurite  # type: ignore[assignment]
        self.authz = authz
        self.tls = tls
        self.storage_id = storage_id
        self.server, self.port = _serve_raw(self, tls)

        # Called before a blob write is forwarded: lets a test change the blob in between, as
        # a second sync would.
        self.before_put: Callable[[], None] | None = None

    @property
    def blob_service_uri(self) -> str:
        return f"https://127.0.0.1:{self.port}/{AzuriteBlob.ACCOUNT}/"

    def forward(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        hook = self.before_put
        if method == "PUT" and hook is not None:
            self.before_put = None
            hook()
        return super().forward(method, path, headers, body)

    def judge(self, method: str, path: str, query: dict[str, str], token: str | None) -> bool:
        parts = path.strip("/").split("/", 2)
        container = parts[1] if len(parts) > 1 else ""
        plain = len(parts) == 3 and "restype" not in query and "comp" not in query
        action = BLOB_ACTIONS.get((method, "blob")) if plain else None
        if len(parts) == 3 and method == "PUT" and "restype" not in query:
            action = {"lease": f"{BLOBS}/write"}.get(query.get("comp", ""), action)
        if len(parts) == 2 and method == "GET" and query.get("restype") == "container":
            action = {"list": f"{BLOBS}/read"}.get(query.get("comp", ""))
        principal = _claims(token).get("oid", "") if token else ""
        scope = f"{self.storage_id}/blobServices/default/containers/{container}"
        if len(parts) == 3:
            scope += f"/blobs/{parts[2]}"
        if action is None:
            action = f"unknown {method} {path}"
        return self.authz.check("storage", method, str(principal), action, scope, data=True)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def admin_container(azurite: AzuriteBlob, tls: Tls, name: str) -> Any:
    """The test's own view of a container (account key), made if missing."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient(
        azurite.blob_service_uri,
        credential={"account_name": Azurite.ACCOUNT, "account_key": Azurite.KEY},
        connection_verify=str(tls.cert),
    )
    container = service.get_container_client(name)
    with contextlib.suppress(Exception):
        container.create_container()
    return container
