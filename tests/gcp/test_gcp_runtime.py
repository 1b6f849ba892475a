"""The functions' settings refuse what would send a token or trust a key over clear text."""

from __future__ import annotations

import pytest

from jitc.errors import TargetError
from jitc.gcp import runtime
from jitc.gcp.oidc import CertificateCache
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


def test_missing_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("JITC_PROJECT", "JITC_QUEUE", "JITC_WORKER_URL", "JITC_INVOKER_EMAIL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(runtime.ConfigError, match="JITC_PROJECT"):
        runtime.Settings.from_env()
