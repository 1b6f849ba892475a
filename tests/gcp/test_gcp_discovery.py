"""The cut discovery documents the GCP clients are built from (`jitc.templates.discovery`): each
is exactly the cut of the one googleapiclient ships, and a client built from it makes, for
every method the connector calls, the request a client built from the whole document makes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from googleapiclient.discovery import build_from_document
from googleapiclient.discovery_cache import get_static_doc
from googleapiclient.http import HttpMock

from jitc.templates import discovery

# Arguments for each method the connector calls, as it calls them.
POLICY = {"version": 3, "etag": "BwY=", "bindings": [{"role": "roles/viewer", "members": ["user:a@example.com"]}]}  # fmt: skip
CALLS: dict[str, dict[str, Any]] = {
    "cloudresourcemanager.projects.getIamPolicy": {
        "resource": "projects/jitc-target", "body": {"options": {"requestedPolicyVersion": 3}},
    },
    "cloudresourcemanager.projects.setIamPolicy": {
        "resource": "projects/jitc-target", "body": {"policy": POLICY},
    },
    "cloudresourcemanager.folders.getIamPolicy": {
        "resource": "folders/123", "body": {"options": {"requestedPolicyVersion": 3}},
    },
    "cloudresourcemanager.folders.setIamPolicy": {"resource": "folders/123", "body": {"policy": POLICY}},
    "storage.buckets.getIamPolicy": {"bucket": "jitc-b", "optionsRequestedPolicyVersion": 3},
    "storage.buckets.setIamPolicy": {"bucket": "jitc-b", "body": POLICY},
    "secretmanager.projects.secrets.getIamPolicy": {
        "resource": "projects/p-123/secrets/s", "options_requestedPolicyVersion": 3,
    },
    "secretmanager.projects.secrets.setIamPolicy": {
        "resource": "projects/p-123/secrets/s", "body": {"policy": POLICY},
    },
    "bigquery.datasets.get": {"projectId": "p-123", "datasetId": "d_1", "accessPolicyVersion": 3},
    "bigquery.datasets.patch": {
        "projectId": "p-123", "datasetId": "d_1", "body": {"access": [], "etag": "e"},
        "accessPolicyVersion": 3, "updateMode": "UPDATE_ACL",
    },
    "pubsub.projects.topics.publish": {
        "topic": "projects/p-123/topics/t", "body": {"messages": [{"data": "e30="}]},
    },
}  # fmt: skip
VERSIONS = {name: version for name, version in discovery.METHODS}


def shipped(name: str, version: str) -> dict[str, Any]:
    text = get_static_doc(name, version)
    assert text is not None, f"googleapiclient ships no {name} {version}"
    document: dict[str, Any] = json.loads(text)
    return document


@pytest.mark.parametrize("api", sorted(discovery.METHODS), ids="-".join)
def test_each_document_is_the_cut_of_the_one_googleapiclient_ships(api: tuple[str, str]) -> None:
    name, version = api
    ours = json.loads((discovery.FOLDER / f"{name}.{version}.json").read_text())
    assert ours == discovery.cut(shipped(name, version), discovery.METHODS[api]), (
        "googleapiclient's document changed: python -m jitc.templates.discovery"
    )
    assert len(json.dumps(ours)) < len(json.dumps(shipped(name, version))) / 5


def test_every_method_called_is_cut_and_checked_here() -> None:
    cut = {
        f"{name}.{method}" for (name, _), methods in discovery.METHODS.items() for method in methods
    }
    assert cut == set(CALLS)


def _request(document: str | dict[str, Any], path: str, **arguments: Any) -> Any:
    text = document if isinstance(document, str) else json.dumps(document)
    found = build_from_document(text, http=HttpMock(headers={"status": "200"}))
    _, *resources, method = path.split(".")
    for resource in resources:
        found = getattr(found, resource)()
    return getattr(found, method)(**arguments)


@pytest.mark.parametrize("path", sorted(CALLS))
def test_a_client_from_the_cut_document_makes_the_same_request(path: str) -> None:
    name = path.split(".")[0]
    version = VERSIONS[name]
    cut = (discovery.FOLDER / f"{name}.{version}.json").read_text()
    ours, theirs = (
        _request(document, path, **CALLS[path]) for document in (cut, shipped(name, version))
    )
    assert (ours.method, ours.uri, ours.body) == (theirs.method, theirs.uri, theirs.body)
    assert ours.headers == theirs.headers
    # And both refuse alike what the document refuses (an unknown argument).
    for document in (cut, shipped(name, version)):
        with pytest.raises(TypeError, match="unexpected keyword"):
            _request(document, path, **CALLS[path], notAParameter="x")


def test_the_client_is_built_from_the_cut_document(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    import googleapiclient.discovery as api

    real = api.build_from_document

    def spy(service: str, **kwargs: Any) -> Any:
        seen.append(len(service))
        return real(service, **kwargs)

    monkeypatch.setattr(api, "build_from_document", spy)
    endpoint = {"api_endpoint": "http://127.0.0.1:9/"}
    built = discovery.build("cloudresourcemanager", "v3", AnonymousCredentials(), endpoint)
    assert seen == [len((discovery.FOLDER / "cloudresourcemanager.v3.json").read_text())]
    request = built.projects().getIamPolicy(resource="projects/jitc-target", body={})
    assert request.uri.startswith("http://127.0.0.1:9/v3/projects/jitc-target:getIamPolicy")
