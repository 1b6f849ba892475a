"""What moto's server lacks for these tests, added to it in-process so the real boto3 client
still talks HTTP to a real server.

moto keeps the tags given at CreatePermissionSet but has no TagResource, UntagResource or
ListTagsForResource for sso-admin; these three operate on that same list, with AWS's limit of
50 tags per resource; permission set ARNs in AWS's shape; and the permissions boundary of an
IAM user, which moto's CreateUser drops; IAM's quota of 6,144 characters per policy
document; and IAM's refusal to delete a policy still attached to anything (DeleteConflict).
When a test enforces IAM, policies are matched with IAM's wildcards rather than as regular
expressions.
"""

from __future__ import annotations

import json
import re
from typing import Any

from botocore.awsrequest import AWSRequest
from moto.core.exceptions import JsonRESTError
from moto.iam.access_control import IAMPolicyStatement, IAMRequestBase
from moto.iam.exceptions import DeleteConflictException, LimitExceededException
from moto.iam.responses import IamResponse
from moto.moto_api._internal import mock_random as random
from moto.ssoadmin.models import PermissionSet
from moto.ssoadmin.responses import SSOAdminResponse


def _permission_set(response: Any) -> Any:
    backend = response.ssoadmin_backend
    params = json.loads(response.body)
    return backend._find_permission_set(params["InstanceArn"], params["ResourceArn"]), params


# AWS's quota of tags per Identity Center resource: a TagResource that would exceed it fails whole.
MAX_TAGS = 50


def tag_resource(self: Any) -> str:
    permission_set, params = _permission_set(self)
    tags = {t["Key"]: t["Value"] for t in permission_set.tags or []}
    tags.update({t["Key"]: t["Value"] for t in params["Tags"]})
    if len(tags) > MAX_TAGS:
        raise JsonRESTError(
            "ServiceQuotaExceededException",
            f"a resource can have at most {MAX_TAGS} tags",
        )
    permission_set.tags = [{"Key": k, "Value": v} for k, v in tags.items()]
    return "{}"


def untag_resource(self: Any) -> str:
    permission_set, params = _permission_set(self)
    drop = set(params["TagKeys"])
    permission_set.tags = [t for t in permission_set.tags or [] if t["Key"] not in drop]
    return "{}"


def list_tags_for_resource(self: Any) -> str:
    permission_set, _ = _permission_set(self)
    return json.dumps({"Tags": list(permission_set.tags or [])})


def _permission_set_arn(instance_arn: str) -> str:
    # AWS's shape (botocore's pattern): permissionSet/<instance id>/ps-<16>; moto's own is
    # instance/<instance id>/ps-<16>, which AWS would refuse in every request naming it.
    instance_id = instance_arn.rsplit("/", 1)[1]
    partition = instance_arn.split(":")[1]
    suffix = random.get_random_string(length=16).lower()
    return f"arn:{partition}:sso:::permissionSet/{instance_id}/ps-{suffix}"


def _create_user_with_boundary(original: Any) -> Any:
    # moto drops CreateUser's PermissionsBoundary, which the IAM template checks on grantees.
    def create_user(self: Any) -> Any:
        result = original(self)
        boundary = self._get_param("PermissionsBoundary")
        if boundary:
            user = self.backend.get_user(self._get_param("UserName"))
            user.permissions_boundary = {
                "PermissionsBoundaryType": "PermissionsBoundaryPolicy",
                "PermissionsBoundaryArn": boundary,
            }
        return result

    return create_user


# IAM's quota on a customer managed policy document: 6,144 characters, white space not counted.
POLICY_SIZE = 6144


def _create_policy_within_size(original: Any) -> Any:
    # moto stores a document of any size; IAM refuses one over its quota (LimitExceeded).
    def create_policy(self: Any) -> Any:
        document = self._get_param("PolicyDocument") or ""
        if len(re.sub(r"\s", "", document)) > POLICY_SIZE:
            raise LimitExceededException(f"Cannot exceed quota for PolicySize: {POLICY_SIZE}")
        return original(self)

    return create_policy


def _delete_policy_unattached(original: Any) -> Any:
    # moto deletes a policy still attached to a user, group or role; IAM refuses with
    # DeleteConflict ("Cannot delete a policy attached to entities."), and a revoke that forgot
    # an attachment would fail there, not pass.
    # What is attached is read from the roles, users and groups themselves: moto's own count
    # is not lowered when a role or user goes with the policy still on it.
    def delete_policy(self: Any) -> Any:
        arn = self._get_param("PolicyArn")
        backend = self.backend
        for entities in (backend.roles, backend.users, backend.groups):
            if any(arn in entity.managed_policies for entity in entities.values()):
                raise DeleteConflictException("Cannot delete a policy attached to entities.")
        return original(self)

    return delete_policy


def _iam_match(pattern: str, value: str) -> re.Match[str] | None:
    """IAM's wildcards, `*` and `?`, and nothing else of regex syntax (moto's own matcher reads
    the pattern as a regex, so `secret:name-??????` breaks it). A resource moto could not
    determine arrives as "*": then the action alone decides, and the resources are compared
    with the calls by the least-privilege test instead."""
    if value == "*":
        return re.match("", "")
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.match(f"^{regex}$", value)


def _signed_request(self: Any) -> AWSRequest:
    """moto re-signs a request to check its signature, but signs an empty body as the query
    string's parameters (`body or data`), so every GET or DELETE with a query (Scheduler's
    GetSchedule, DeleteSchedule) fails SignatureDoesNotMatch: the body is what was signed.
    A query-protocol POST (IAM) reaches here with its form already parsed out of the body:
    then the parsed form is what was signed."""
    signed = self._get_string_between("SignedHeaders=", ",", self._headers["Authorization"])
    headers = self._create_headers_for_aws_request(signed.split(";"), self._headers)
    data: Any = self._body or b""
    if not data and self._method == "POST" and self._data:
        data = self._data
    request = AWSRequest(method=self._method, url=self._path, data=data, headers=headers)
    request.context["timestamp"] = headers["X-Amz-Date"]
    return request


def install() -> None:
    IAMPolicyStatement._match = staticmethod(_iam_match)  # type: ignore[method-assign]
    IAMRequestBase._create_aws_request = _signed_request  # type: ignore[method-assign]
    if not getattr(IamResponse, "_jitc_boundary", False):
        IamResponse.create_user = _create_user_with_boundary(IamResponse.create_user)  # type: ignore[method-assign]
        IamResponse.create_policy = _create_policy_within_size(IamResponse.create_policy)  # type: ignore[method-assign]
        IamResponse.delete_policy = _delete_policy_unattached(IamResponse.delete_policy)  # type: ignore[method-assign]
        IamResponse._jitc_boundary = True  # type: ignore[attr-defined]
    PermissionSet.generate_id = staticmethod(_permission_set_arn)  # type: ignore[method-assign]
    SSOAdminResponse.tag_resource = tag_resource  # type: ignore[attr-defined]
    SSOAdminResponse.untag_resource = untag_resource  # type: ignore[attr-defined]
    SSOAdminResponse.list_tags_for_resource = list_tags_for_resource  # type: ignore[attr-defined]
