"""What moto's server lacks for these tests, added to it in-process so the real boto3 client
still talks HTTP to a real server: tags on IAM Identity Center permission sets.

moto keeps the tags given at CreatePermissionSet but has no TagResource, UntagResource or
ListTagsForResource for sso-admin; these three operate on that same list.
"""

from __future__ import annotations

import json
from typing import Any

from moto.ssoadmin.responses import SSOAdminResponse


def _permission_set(response: Any) -> Any:
    backend = response.ssoadmin_backend
    params = json.loads(response.body)
    return backend._find_permission_set(params["InstanceArn"], params["ResourceArn"]), params


def tag_resource(self: Any) -> str:
    permission_set, params = _permission_set(self)
    tags = {t["Key"]: t["Value"] for t in permission_set.tags or []}
    tags.update({t["Key"]: t["Value"] for t in params["Tags"]})
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


def install() -> None:
    SSOAdminResponse.tag_resource = tag_resource  # type: ignore[attr-defined]
    SSOAdminResponse.untag_resource = untag_resource  # type: ignore[attr-defined]
    SSOAdminResponse.list_tags_for_resource = list_tags_for_resource  # type: ignore[attr-defined]
