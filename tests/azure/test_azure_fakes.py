"""The fakes refuse what Azure refuses (azspec.py): a fake that accepted anything would hide the
defects the other tests are there to see."""

from __future__ import annotations

import uuid
from typing import Any

import azharness
import requests

SUB = azharness.SUBSCRIPTION
SCOPE = f"/subscriptions/{SUB}/resourceGroups/fakes"
ROLE = f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"


def arm(
    cloud: azharness.Cloud,
    method: str,
    path: str,
    body: Any = None,
    version: str = "2022-04-01",
    token: str | None = "ok",
) -> requests.Response:
    headers = {}
    if token == "ok":
        token = cloud.tokens.issue(azharness.APP_OID, cloud.arm.endpoint)[0]
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(
        method, f"{cloud.arm.endpoint}{path}", params={"api-version": version}, json=body,
        headers=headers, verify=str(cloud.tls.cert), timeout=10,
    )  # fmt: skip


def test_arm_refuses_bad_names_shapes_versions_and_tokens(cloud: azharness.Cloud) -> None:
    cloud.authz.enforce = False
    try:
        base = f"{SCOPE}/providers/Microsoft.Authorization/roleAssignments"
        good = {"properties": {"roleDefinitionId": ROLE, "principalId": str(uuid.uuid4())}}
        cases = [
            ("PUT", f"{base}/not-a-guid", good, "2022-04-01", "ok", 400, "InvalidRoleAssignmentId"),
            (
                "PUT",
                f"{base}/{uuid.uuid4()}",
                {"properties": {"roleDefinitionId": ROLE}},
                "2022-04-01",
                "ok",
                400,
                "InvalidRequestContent",
            ),
            (
                "PUT",
                f"{base}/{uuid.uuid4()}",
                good,
                "2021-01-01",
                "ok",
                400,
                "InvalidApiVersionParameter",
            ),
            (
                "PUT",
                f"{base}/{uuid.uuid4()}",
                good,
                "2022-04-01",
                None,
                401,
                "InvalidAuthenticationToken",
            ),
            (
                "PUT",
                f"{base}/{uuid.uuid4()}",
                {"properties": {**good["properties"], "roleDefinitionId": ROLE[:-1] + "0"}},
                "2022-04-01",
                "ok",
                400,
                "RoleDefinitionDoesNotExist",
            ),
        ]
        for method, path, body, version, token, status, code in cases:
            response = arm(cloud, method, path, body, version, token)
            assert response.status_code == status and response.json()["error"]["code"] == code, (
                path,
                response.text,
            )
        wrong_audience = cloud.tokens.issue(azharness.APP_OID, "https://vault.azure.net")[0]
        assert arm(cloud, "GET", base, token=wrong_audience).status_code == 401
        assert arm(cloud, "PUT", f"{base}/{uuid.uuid4()}", good).status_code == 201
        again = arm(cloud, "PUT", f"{base}/{uuid.uuid4()}", good)
        assert again.status_code == 409 and again.json()["error"]["code"] == "RoleAssignmentExists"
        pim = f"{SCOPE}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{uuid.uuid4()}"
        no_expiry = {
            "properties": {
                **good["properties"],
                "requestType": "AdminAssign",
                "scheduleInfo": {"expiration": {"type": "AfterDateTime"}},
            }
        }
        assert arm(cloud, "PUT", pim, no_expiry, "2020-10-01").status_code == 400
    finally:
        cloud.authz.enforce = True
        cloud.arm.assignments.clear()
        cloud.arm.requests.clear()


def test_key_vault_challenges_and_checks_names(cloud: azharness.Cloud) -> None:
    url = f"{cloud.vault.url}/secrets/some-secret"
    verify = str(cloud.tls.cert)
    challenge = requests.get(url, params={"api-version": "7.6"}, verify=verify, timeout=10)
    assert challenge.status_code == 401
    assert f'resource="{cloud.vault.resource}"' in challenge.headers["WWW-Authenticate"]
    token = cloud.tokens.issue(azharness.APP_OID, cloud.vault.resource)[0]
    headers = {"Authorization": f"Bearer {token}"}
    assert (
        requests.get(
            url, params={"api-version": "6.0"}, headers=headers, verify=verify, timeout=10
        ).status_code
        == 400
    )
    bad = requests.get(
        f"{cloud.vault.url}/secrets/bad_name",
        params={"api-version": "7.6"},
        headers=headers,
        verify=verify,
        timeout=10,
    )
    assert bad.status_code == 400
    cloud.authz.assignments.clear()
    denied = requests.get(
        url, params={"api-version": "7.6"}, headers=headers, verify=verify, timeout=10
    )
    assert (
        denied.status_code == 403
        and denied.json()["error"]["innererror"]["code"] == "ForbiddenByRbac"
    )
