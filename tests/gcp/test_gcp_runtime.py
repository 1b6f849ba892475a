"""The functions' settings refuse what would send a token or trust a key over clear text."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import google.auth
import pytest
from gcpfake import FakeGcp, MetadataServer
from google.auth import compute_engine
from google.auth.credentials import AnonymousCredentials, Credentials

from jitc.errors import TargetError
from jitc.gcp import runtime
from jitc.gcp.oidc import CertificateCache
from jitc.google_credentials import CLOUD_PLATFORM, service_account
from jitc.templates.gcp_iam import _Api


def test_a_plain_http_api_endpoint_off_loopback_is_refused() -> None:
    with pytest.raises(runtime.ConfigError):
        runtime._client_options("http://tasks.example.com")
    assert runtime._client_options("http://127.0.0.1:8123") == (
        {"api_endpoint": "127.0.0.1:8123"}, {"url_scheme": "http"},
    )  # fmt: skip
    assert runtime._client_options(None) == ({}, {})


def test_certificates_only_over_https_or_loopback() -> None:
    with pytest.raises(ValueError):
        CertificateCache("http://www.googleapis.com/oauth2/v1/certs")
    CertificateCache("https://www.googleapis.com/oauth2/v1/certs")


def test_the_iam_targets_endpoint_override_is_https_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JITC_GCP_ENDPOINT_CLOUDRESOURCEMANAGER", "http://crm.example.com/")
    with pytest.raises(TargetError, match="https only"):
        _Api()._service("cloudresourcemanager", "v3")


def test_the_pubsub_endpoint_override_is_https_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from jitc.errors import ConfigError
    from jitc.gcp.pubsub import pubsub_service

    monkeypatch.setenv("JITC_GCP_ENDPOINT_PUBSUB", "http://pubsub.example.com/")
    with pytest.raises(ConfigError, match="https only"):
        pubsub_service()


# http "to 127.0.0.1" by its text, to another host in fact: the host is what follows the "@"
DISGUISED = "http://127.0.0.1:@127.0.0.2:8443/"


def test_an_endpoint_that_only_starts_like_loopback_is_refused_everywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jitc.endpoints import https_or_loopback
    from jitc.errors import ConfigError
    from jitc.gcp import sync
    from jitc.gcp.pubsub import pubsub_service

    assert https_or_loopback("http://127.0.0.1:8443/") and https_or_loopback("https://a.example")
    for url in (DISGUISED, "http://localhost.evil.example/", "https://u:p@a.example/"):
        assert not https_or_loopback(url), url
    with pytest.raises(ValueError):
        CertificateCache(DISGUISED)
    monkeypatch.setenv("JITC_GCP_ENDPOINT_CLOUDRESOURCEMANAGER", DISGUISED)
    with pytest.raises(TargetError, match="https only"):
        _Api()._service("cloudresourcemanager", "v3")
    monkeypatch.setenv("JITC_STORAGE_ENDPOINT", DISGUISED)
    with pytest.raises(TargetError, match="https only"):
        _Api()._bucket("b")
    with pytest.raises(ConfigError, match="only on this machine"):
        sync.storage_bucket()
    with pytest.raises(ConfigError, match="only on this machine"):
        runtime._client_options(DISGUISED)
    monkeypatch.setenv("JITC_GCP_ENDPOINT_PUBSUB", DISGUISED)
    with pytest.raises(ConfigError, match="https only"):
        pubsub_service()


def test_missing_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("JITC_PROJECT", "JITC_QUEUE", "JITC_WORKER_URL", "JITC_INVOKER_EMAIL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(runtime.ConfigError, match="JITC_PROJECT"):
        runtime.Settings.from_env()


@pytest.fixture
def fresh_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name, value in {
        "JITC_PROJECT": "p-one", "JITC_QUEUE": "projects/p-one/locations/l/queues/q",
        "JITC_WORKER_URL": "https://worker.example.com", "JITC_INVOKER_EMAIL": "i@p-one.iam.gserviceaccount.com",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    runtime.reset()
    yield monkeypatch
    runtime.reset()


@pytest.mark.parametrize("endpoint", [None, "http://127.0.0.1:9"])
def test_the_clients_share_one_set_of_credentials(
    fresh_runtime: pytest.MonkeyPatch, endpoint: str | None
) -> None:
    # Each client finding its own would probe the metadata server and fetch a token of its own.
    found: list[Credentials] = []

    def default(**kwargs: object) -> tuple[Credentials, None]:
        found.append(AnonymousCredentials())  # type: ignore[no-untyped-call]
        return found[-1], None

    fresh_runtime.delenv("K_SERVICE", raising=False)
    fresh_runtime.setattr(google.auth, "default", default)
    for name in ("JITC_TASKS_ENDPOINT", "JITC_SECRETS_ENDPOINT"):
        if endpoint:
            fresh_runtime.setenv(name, endpoint)
        else:
            fresh_runtime.delenv(name, raising=False)
    clients = (runtime.tasks_client(), runtime.secrets_client())
    assert len(found) == 1
    assert all(client._transport._credentials is found[0] for client in clients)


HELD = """
from google.auth import compute_engine
from jitc.gcp import runtime
from jitc.templates.gcp_iam import _Api
api = _Api()
held = [
    runtime.tasks_client()._transport._credentials,
    runtime.secrets_client()._transport._credentials,
    api._service("cloudresourcemanager", "v3")._http.credentials,
    api._bucket(api.tombstone_bucket()).client._credentials,
]
assert isinstance(held[0], compute_engine.Credentials), held
print(sum(found is held[0] for found in held))
"""


def test_on_cloud_run_every_google_client_holds_the_same_credentials() -> None:
    """The functions' clients and the gcp_iam template's: a client holding a rescoped copy
    (googleapiclient and google-cloud-storage make one of credentials without a scope) would
    fetch an access token of its own from the metadata server in every cold start. In a process
    of its own: google-auth reads the metadata server's address when it is imported."""
    fake = FakeGcp("p-one")
    email, _ = fake.service_account("jitc-worker")
    metadata = MetadataServer(fake, email)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GCE_", "JITC_"))}
    env.update({
        "GCE_METADATA_HOST": metadata.host, "GCE_METADATA_IP": metadata.host,
        "K_SERVICE": "jitc-worker", "JITC_GCP_TOMBSTONE_BUCKET": "p-one-jitc-tombstones",
        "JITC_PROJECT": "p-one", "JITC_QUEUE": "projects/p-one/locations/l/queues/q",
        "JITC_WORKER_URL": "https://worker.example.com",
        "JITC_INVOKER_EMAIL": "i@p-one.iam.gserviceaccount.com",
    })  # fmt: skip
    try:
        out = subprocess.run(
            [sys.executable, "-c", HELD], env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        metadata.close()
        fake.close()
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["4"]


def test_on_cloud_run_the_metadata_servers_credentials_are_built_without_probing(
    fresh_runtime: pytest.MonkeyPatch,
) -> None:
    def probe(**kwargs: object) -> None:
        raise AssertionError("google.auth.default probed")

    fresh_runtime.setenv("K_SERVICE", "jitc-worker")
    fresh_runtime.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    fresh_runtime.setattr(google.auth, "default", probe)
    found = service_account()
    assert isinstance(found, compute_engine.Credentials)
    # The scope every client asks for, set (no client makes a rescoped copy), and the
    # instance's default account.
    assert tuple(found.scopes) == CLOUD_PLATFORM and not found.requires_scopes
    assert found.service_account_email == "default"


def test_a_key_file_on_cloud_run_is_still_used(fresh_runtime: pytest.MonkeyPatch) -> None:
    chosen = AnonymousCredentials()  # type: ignore[no-untyped-call]
    fresh_runtime.setenv("K_SERVICE", "jitc-worker")
    fresh_runtime.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
    fresh_runtime.setattr(google.auth, "default", lambda **kwargs: (chosen, None))
    assert service_account() is chosen
