"""A key file replaced where it lies (a mounted secret's new version, a rotated key): a session
opened after the old key was refused acts with the new one, without a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gcpfake import FakeGcp

from jitc.templates.gcp_iam import _Api


def test_a_new_session_reads_a_key_file_replaced_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeGcp("p-rotate")
    try:
        _, first = fake.service_account("jitc-old")
        _, second = fake.service_account("jitc-new")
    finally:
        fake.close()
    key = tmp_path / "key.json"
    key.write_text(json.dumps(first))
    monkeypatch.delenv("K_SERVICE", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    assert _Api().credentials().service_account_email == first["client_email"]
    key.write_text(json.dumps(second))  # the old key is deleted in IAM next
    assert _Api().credentials().service_account_email == second["client_email"]
