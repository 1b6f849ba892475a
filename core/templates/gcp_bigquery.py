"""BigQuery datasets as a `gcp_iam` resource: the dataset's `access[]` seen as an IAM policy.

A dataset has no getIamPolicy/setIamPolicy in the BigQuery v2 API the connector calls: its
access is the Dataset resource's `access` array, one entry per role and member (`userByEmail`,
`groupByEmail`, `domain`, `specialGroup` or `iamMember`) with an optional IAM `condition`, or an
authorized view, dataset or routine (no role, no member). This module turns that array into the
policy shape `gcp_iam` works in (one binding of one member per entry, the authorized resources
carried aside untouched) and back, so grants on a dataset are labelled, MACed and verified over
exactly the fields of any other binding: resource, role, member, condition title and expression.

Reads and writes pass `accessPolicyVersion=3`: with an older version BigQuery hides a
conditional entry behind a `..._with_conditionalbinding_<hash>` role, which would be written
back as a different role. `datasets.patch` replaces the whole array, so every write carries the
etag of the read it edits in `If-Match`: a concurrent writer turns it into 412 and `gcp_iam`
reads again and retries, as it does for a stale policy etag; a patch over BigQuery's five updates
per dataset every 10 s (403, reason rateLimitExceeded) is read again and retried after a pause.
BigQuery answers the three data roles in their legacy names (OWNER, WRITER, READER); they are
read as the predefined roles they stand for, so a label verifies whichever spelling comes back.

Rights (https://cloud.google.com/bigquery/docs/dataset-access-control,
https://cloud.google.com/bigquery/docs/conditions): `bigquery.datasets.get` and, to see `access`
at all, `bigquery.datasets.getIamPolicy`; to write, `bigquery.datasets.update` and
`bigquery.datasets.setIamPolicy`. A dataset read back without its `access` (the reader lacks
getIamPolicy) is never written: a patch from it would replace the dataset's access with the
connector's entry alone.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from jitc.errors import TargetError

POLICY_VERSION = 3
DATASET = re.compile(r"^projects/([a-z][a-z0-9-]{4,28}[a-z0-9])/datasets/([A-Za-z0-9_]{1,1024})$")
LEGACY_ROLES = {
    "OWNER": "roles/bigquery.dataOwner",
    "WRITER": "roles/bigquery.dataEditor",
    "READER": "roles/bigquery.dataViewer",
}
# Entries that authorize a view, a dataset's views or a routine: no role or member of theirs is a
# binding, and they go back exactly as they came.
AUTHORIZED = ("view", "dataset", "routine")
# Where a policy built here keeps what is not a binding; `gcp_iam` edits only "bindings".
ASIDE = "jitcBigqueryAside"
SERVICE_ACCOUNT_DOMAIN = ".gserviceaccount.com"


def is_dataset(resource: str) -> bool:
    return "/datasets/" in resource


def split(resource: str) -> tuple[str, str]:
    match = DATASET.fullmatch(resource)
    if match is None:
        raise TargetError(f"{resource!r} is not projects/P/datasets/D")
    return match.group(1), match.group(2)


def member_of(entry: dict[str, Any]) -> str | None:
    """The IAM member an access entry names (None: an authorized resource, not a member)."""
    if entry.get("userByEmail"):
        email = str(entry["userByEmail"])
        # BigQuery writes service accounts as userByEmail too; their addresses say which.
        kind = "serviceAccount" if email.lower().endswith(SERVICE_ACCOUNT_DOMAIN) else "user"
        return f"{kind}:{email}"
    if entry.get("groupByEmail"):
        return f"group:{entry['groupByEmail']}"
    if entry.get("domain"):
        return f"domain:{entry['domain']}"
    if entry.get("specialGroup"):
        # Not an IAM member name: kept distinct so it is written back as the special group.
        return f"specialGroup:{entry['specialGroup']}"
    if entry.get("iamMember"):
        return str(entry["iamMember"])
    return None


def entry_fields(member: str) -> dict[str, str]:
    kind, sep, value = member.partition(":")
    if sep and kind in ("user", "serviceAccount"):
        return {"userByEmail": value}
    if sep and kind == "group":
        return {"groupByEmail": value}
    if sep and kind == "domain":
        return {"domain": value}
    if sep and kind == "specialGroup":
        return {"specialGroup": value}
    return {"iamMember": member}


def to_policy(resource: str, dataset: dict[str, Any]) -> dict[str, Any]:
    """The dataset's access as a version-3 policy (its etag is the dataset's)."""
    if "access" not in dataset:
        raise TargetError(
            f"{resource}: the dataset came back without its access list (the connector needs "
            "bigquery.datasets.getIamPolicy on it); not written, a write would replace it"
        )
    bindings: list[dict[str, Any]] = []
    aside: list[dict[str, Any]] = []
    for entry in dataset.get("access") or []:
        member = member_of(entry)
        if member is None or any(key in entry for key in AUTHORIZED):
            aside.append(entry)
            continue
        role = str(entry.get("role", ""))
        if "_with_conditionalbinding_" in role:
            raise TargetError(f"{resource}: BigQuery hid a conditional entry (policy version < 3)")
        binding: dict[str, Any] = {"role": LEGACY_ROLES.get(role, role), "members": [member]}
        if entry.get("condition") is not None:
            binding["condition"] = dict(entry["condition"])
        bindings.append(binding)
    return {
        "version": POLICY_VERSION,
        "etag": dataset.get("etag", ""),
        "bindings": bindings,
        ASIDE: aside,
    }


def to_access(policy: dict[str, Any]) -> list[dict[str, Any]]:
    """The access array a policy built by `to_policy` (and edited) stands for."""
    access: list[dict[str, Any]] = []
    for binding in policy.get("bindings", []) or []:
        for member in binding.get("members", []) or []:
            entry: dict[str, Any] = {"role": binding["role"], **entry_fields(str(member))}
            if binding.get("condition") is not None:
                entry["condition"] = dict(binding["condition"])
            access.append(entry)
    access += copy.deepcopy(policy.get(ASIDE) or [])
    return access


class Datasets:
    """datasets.get / datasets.patch of the BigQuery v2 discovery client, as get/set policy."""

    def __init__(self, service: Any) -> None:
        self._service = service

    def get(self, resource: str) -> dict[str, Any]:
        project, dataset = split(resource)
        call = self._service.datasets().get(
            projectId=project, datasetId=dataset, accessPolicyVersion=POLICY_VERSION
        )
        return to_policy(resource, call.execute(num_retries=2))

    def set(self, resource: str, policy: dict[str, Any]) -> dict[str, Any]:
        project, dataset = split(resource)
        if not policy.get("etag"):
            # Without an etag the patch could not be conditional, and it replaces the array.
            raise TargetError(f"{resource}: no etag to make the access write conditional")
        body = {
            # The schema calls the reference required; it names the dataset in the path.
            "datasetReference": {"projectId": project, "datasetId": dataset},
            "access": to_access(policy),
        }
        call = self._service.datasets().patch(
            projectId=project, datasetId=dataset, body=body,
            accessPolicyVersion=POLICY_VERSION, updateMode="UPDATE_ACL",
        )  # fmt: skip
        call.headers["If-Match"] = policy["etag"]
        # Not retried blindly: a lost answer is read back by the next attempt (which is also
        # what gcp_iam reports from, so the answer itself is not translated).
        result: dict[str, Any] = call.execute(num_retries=0)
        return result
