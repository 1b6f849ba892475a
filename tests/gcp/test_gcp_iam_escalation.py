"""What the worker's IAM-target binding lets a compromised worker do beyond the catalog.

The bindings are the ones the Terraform module renders for a catalog naming one project; the
worker's calls go through the real discovery client to the loopback IAM, which authorizes them
against those bindings as Google would.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import tfgcp
from gcpfake import FakeGcp
from gcpharness import WorkerCredentials

RUN = secrets.token_hex(2)
PROJECT = f"jitc-esc-{RUN}"
RESOURCE = f"projects/{PROJECT}"
ROLE = "roles/bigquery.dataViewer"
FUNCTIONS = ("intake", "worker", "sweep", "sync", "invoker")


@pytest.fixture
def worker(worker_credentials: WorkerCredentials) -> Iterator[tuple[FakeGcp, str]]:
    server = FakeGcp(PROJECT)
    emails = {}
    info = {}
    for name in FUNCTIONS:
        emails[name], key = server.service_account(f"jitc-{name}")
        info[name] = key
    catalog = {
        "integrations": {
            "iam": {
                "kind": "gcp_iam",
                "connection": {"resources": [RESOURCE], "allowed_members": ["user:*"]},
                "permissions": {"viewer": {"role": ROLE, "resources": [RESOURCE]}},
            }
        }
    }
    facts = tfgcp.facts_from_catalog(catalog, PROJECT, "europe-west1", "jitc")
    for binding in tfgcp.bindings(facts, emails):
        if binding.resource == RESOURCE:
            server.bind(
                RESOURCE, binding.role, f"serviceAccount:{emails[binding.function]}",
                binding.condition,
            )  # fmt: skip
    worker_credentials(info["worker"], {"JITC_GCP_ENDPOINT_CLOUDRESOURCEMANAGER": server.url + "/"})
    yield server, emails["worker"]
    server.close()


def test_the_worker_cannot_grant_itself_a_role_the_catalog_does_not_name(
    worker: tuple[FakeGcp, str],
) -> None:
    from googleapiclient.errors import HttpError

    from jitc.templates.gcp_iam import _Api

    server, email = worker
    api = _Api()
    policy = api.get(RESOURCE)
    policy["bindings"].append({"role": "roles/owner", "members": [f"serviceAccount:{email}"]})
    with pytest.raises(HttpError) as caught:
        api.set(RESOURCE, policy)
    assert caught.value.resp.status == 403
    owners = [b for b in server.policies[RESOURCE]["bindings"] if b["role"] == "roles/owner"]
    assert owners == []


def test_the_worker_still_manages_the_catalogs_roles(worker: tuple[FakeGcp, str]) -> None:
    """The condition leaves exactly the connector's work: a grant of a catalog role and its
    removal. Nothing else, not even roles/browser (tombstones are objects, not bindings)."""
    from googleapiclient.errors import HttpError

    from jitc.templates.gcp_iam import _Api

    server, _ = worker
    api = _Api()
    binding = {
        "role": ROLE,
        "members": ["user:ana@example.com"],
        "condition": {
            "title": "jitc g" + "a" * 24,
            "expression": 'request.time < timestamp("2999-01-01T00:00:00Z")',
        },
    }
    policy = api.get(RESOURCE)
    policy["bindings"].append(binding)
    policy["version"] = 3
    api.set(RESOURCE, policy)
    policy = api.get(RESOURCE)
    policy["bindings"].remove(binding)
    api.set(RESOURCE, policy)
    assert all(call.allowed for call in server.calls)
    policy = api.get(RESOURCE)
    policy["bindings"].append({**binding, "role": "roles/browser"})
    with pytest.raises(HttpError) as caught:
        api.set(RESOURCE, policy)
    assert caught.value.resp.status == 403
