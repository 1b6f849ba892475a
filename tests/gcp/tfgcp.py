"""The GCP module's IAM bindings rendered from its HCL for one deployment.

python-hcl2 parses the module; each `google_*_iam_member` is expanded over its `for_each`
(the shapes the module uses: a literal `toset([...])`, `local.secret_access`, and maps over
`setproduct(local.A, local.B)`), and its member, role and resource are resolved from their
references. A reference or a shape not understood here fails the test rather than being
skipped, so a new binding cannot hide from the least-privilege checks.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "aws"))

from tfmodule import Module, load

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "infra" / "terraform" / "gcp"
EXAMPLE = ROOT / "infra" / "terraform" / "examples" / "gcp"
IAM_KINDS = (
    "google_secret_manager_secret_iam_member",
    "google_cloud_tasks_queue_iam_member",
    "google_service_account_iam_member",
    "google_project_iam_member",
    "google_storage_bucket_iam_member",
    "google_folder_iam_member",
    "google_pubsub_topic_iam_member",
    "google_bigquery_dataset_access",
)


@dataclass(frozen=True)
class Binding:
    address: str
    function: str  # the service account: a function name, or "invoker"
    role: str
    resource: str
    condition: dict[str, str] | None = None


@dataclass(frozen=True)
class Facts:
    """What a deployment's references resolve to."""

    project: str
    region: str
    name: str
    secrets: frozenset[str]  # projects/P/secrets/S
    iam_resources: frozenset[str]
    publish_events: bool = False
    queue_writers: tuple[str, ...] = ()
    # local.iam_roles: per managed resource, the roles its IAM-admin binding may change.
    iam_roles: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def locals_sets(self, module: Module) -> dict[str, list[str]]:
        sets = {
            "secrets": sorted(self.secrets),
            "iam_projects": sorted(
                r.removeprefix("projects/") for r in self.iam_resources
                if re.fullmatch(r"projects/[^/]+", r)
            ),
            "iam_folders": sorted(r for r in self.iam_resources if r.startswith("folders/")),
            "iam_buckets": sorted(
                r.removeprefix("buckets/") for r in self.iam_resources if r.startswith("buckets/")
            ),
            "iam_secrets": sorted(
                r for r in self.iam_resources if re.fullmatch(r"projects/[^/]+/secrets/[^/]+", r)
            ),
            "iam_datasets": sorted(
                r for r in self.iam_resources if re.fullmatch(r"projects/[^/]+/datasets/[^/]+", r)
            ),
        }  # fmt: skip
        for key in ("secret_readers", "iam_editors", "iam_readers"):
            sets[key] = _literal_set(module.locals[key])
        return sets


def _literal_set(text: str) -> list[str]:
    match = re.fullmatch(r'\$\{toset\(\[((?:"[^"]*"(?:, )?)*)\]\)\}', text)
    if match is None:
        raise AssertionError(f"not a literal set: {text}")
    return re.findall(r'"([^"]*)"', match.group(1))


def facts_from_catalog(
    catalog: dict[str, Any], project: str, region: str, name: str, publish_events: bool = False
) -> Facts:
    """The module's `local.secrets` and `local.iam_resources`, computed as its HCL does."""
    refs = [i.get("credentials") for i in catalog.get("integrations", {}).values()]
    refs += [catalog.get("connector", {}).get(k) for k in ("signing_key", "label_key")]
    secrets = {
        re.match(r"^gcp-sm:(projects/[^/]+/secrets/[^/#]+)", r).group(1)  # type: ignore[union-attr]
        for r in refs if r and r.startswith("gcp-sm:")
    }  # fmt: skip
    resources = {
        r
        for i in catalog.get("integrations", {}).values() if i.get("kind") == "gcp_iam"
        for r in i.get("connection", {}).get("resources", [])
    }  # fmt: skip
    roles = tuple(
        (r, tuple(sorted({
            p["role"]
            for i in catalog.get("integrations", {}).values() if i.get("kind") == "gcp_iam"
            for p in i.get("permissions", {}).values() if r in p.get("resources", [])
        })))
        for r in sorted(resources)
    )  # fmt: skip
    return Facts(
        project, region, name, frozenset(secrets), frozenset(resources), publish_events,
        iam_roles=roles,
    )  # fmt: skip


# The IAM-admin bindings' condition, as the module writes it (the resource key differs).
_GRANTS_BY_ROLE = re.compile(
    r"^api\.getAttribute\('iam\.googleapis\.com/modifiedGrantsByRole', \[\]\)\.hasOnly\("
    r"\$\{jsonencode\(local\.iam_roles\[(.+)\]\)\}\)$"
)


def _condition(body: dict[str, Any], each: dict[str, Any], facts: Facts) -> dict[str, str] | None:
    blocks = body.get("condition")
    if not blocks:
        return None
    block = blocks[0] if isinstance(blocks, list) else blocks
    match = _GRANTS_BY_ROLE.fullmatch(block["expression"])
    if match is None:
        raise AssertionError(f"condition not understood: {block['expression']}")
    key = match.group(1)
    if key == '"projects/${each.value.project}"':
        resource = f"projects/{each['value']['project']}"
    elif key == "each.value.folder":
        resource = str(each["value"]["folder"])
    else:
        raise AssertionError(f"condition key not understood: {key}")
    roles = dict(facts.iam_roles)[resource]
    expression = (
        "api.getAttribute('iam.googleapis.com/modifiedGrantsByRole', []).hasOnly("
        + json.dumps(list(roles), separators=(",", ":"))
        + ")"
    )
    return {"title": block["title"], "description": block["description"], "expression": expression}


def _instances(
    body: dict[str, Any], sets: dict[str, list[str]], facts: Facts
) -> list[dict[str, Any]]:
    """`each` of every instance: {"key": ..., "value": ...}."""
    for_each = body.get("for_each")
    if for_each is None:
        return [{}]
    if for_each == "${toset(var.queue_writers)}":
        return [{"key": v, "value": v} for v in facts.queue_writers]
    switch = re.fullmatch(r"\$\{toset\(var\.publish_events \? (\[[^\]]*\]) : \[\]\)\}", for_each)
    if switch:
        names = re.findall(r'"([^"]*)"', switch.group(1)) if facts.publish_events else []
        return [{"key": v, "value": v} for v in names]
    if for_each.startswith("${toset(["):
        return [{"key": v, "value": v} for v in _literal_set(for_each)]
    if for_each == "${local.secret_access}":
        pairs = itertools.product(sets["secret_readers"], sets["secrets"])
        return [{"value": {"function": f, "secret": s}} for f, s in pairs]
    match = re.fullmatch(
        r"\$\{\{for pair in setproduct\(local\.(\w+), local\.(\w+)\) : .* => "
        r"\{(\w+) = pair\[0\], (\w+) = pair\[1\]\}\}\}",
        for_each,
    )
    if match is None:
        raise AssertionError(f"for_each shape not understood: {for_each}")
    first, second, name0, name1 = match.groups()
    return [
        {"value": {name0: a, name1: b}} for a, b in itertools.product(sets[first], sets[second])
    ]


def _each(text: str, each: dict[str, Any]) -> str:
    if text == "${each.key}":
        return str(each["key"])
    match = re.fullmatch(r"\$\{each\.value\.(\w+)\}", text)
    if match:
        return str(each["value"][match.group(1)])
    raise AssertionError(f"reference not understood: {text}")


def _member(text: str, each: dict[str, Any]) -> str:
    if text == "serviceAccount:${google_service_account.invoker.email}":
        return "invoker"
    if text == "${each.value}":
        return str(each["value"])  # a member the deployment names (queue_writers)
    match = re.fullmatch(
        r'serviceAccount:\$\{google_service_account\.function\[(each\.key|each\.value\.(\w+)|"(\w+)")\]\.email\}',
        text,
    )
    if match is None:
        raise AssertionError(f"member not understood: {text}")
    if match.group(3):
        return match.group(3)
    if match.group(1) == "each.key":
        return str(each["key"])
    return str(each["value"][match.group(2)])


def _member_text(kind: str, body: dict[str, Any]) -> str:
    if kind != "google_bigquery_dataset_access":
        return str(body["member"])
    # An access entry names its member by field: userByEmail is a user or a service account.
    fields = {"user_by_email", "group_by_email", "iam_member", "domain", "special_group", "view"}
    named = sorted(fields & set(body))
    if named != ["user_by_email"] or not str(body["user_by_email"]).startswith(
        "${google_service_account."
    ):
        raise AssertionError(f"dataset access member not understood: {named}")
    return "serviceAccount:" + str(body["user_by_email"])


def custom_roles(facts: Facts, module: Module | None = None) -> dict[str, frozenset[str]]:
    module = module or load(MODULE)
    roles = {}
    for name, body in module.of_kind("google_project_iam_custom_role").items():
        match = re.fullmatch(r'\$\{replace\("\$\{var\.name\}(\w+)", "-", "_"\)\}', body["role_id"])
        if match is None:
            raise AssertionError(f"role_id not understood: {body['role_id']}")
        role_id = (facts.name + match.group(1)).replace("-", "_")
        roles[name] = (f"projects/{facts.project}/roles/{role_id}", frozenset(body["permissions"]))
    return {key: value for key, value in roles.values()}  # type: ignore[misc]


def _role(text: str, facts: Facts, module: Module) -> str:
    match = re.fullmatch(r"\$\{google_project_iam_custom_role\.(\w+)(\[0\])?\.id\}", text)
    if match is None:
        if not text.startswith("roles/"):
            raise AssertionError(f"role not understood: {text}")
        return text
    body = module.resource("google_project_iam_custom_role", match.group(1))
    suffix = re.fullmatch(r'\$\{replace\("\$\{var\.name\}(\w+)", "-", "_"\)\}', body["role_id"])
    assert suffix is not None
    return f"projects/{facts.project}/roles/{(facts.name + suffix.group(1)).replace('-', '_')}"


def _resource(
    kind: str, body: dict[str, Any], each: dict[str, Any], facts: Facts, emails: dict[str, str]
) -> str:
    if kind == "google_secret_manager_secret_iam_member":
        return _each(body["secret_id"], each)
    if kind == "google_cloud_tasks_queue_iam_member":
        assert body["name"] == "${google_cloud_tasks_queue.requests.name}", body["name"]
        return f"projects/{facts.project}/locations/{facts.region}/queues/{facts.name}-requests"
    if kind == "google_service_account_iam_member":
        assert body["service_account_id"] == "${google_service_account.invoker.name}"
        return f"projects/-/serviceAccounts/{emails['invoker']}"
    if kind == "google_project_iam_member":
        return f"projects/{_each(body['project'], each)}"
    if kind == "google_storage_bucket_iam_member":
        if body["bucket"] == "${google_storage_bucket.sync_state.name}":
            return f"buckets/{facts.project}-{facts.name}-sync"
        if body["bucket"] == "${google_storage_bucket.tombstones.name}":
            return f"buckets/{facts.project}-{facts.name}-tombstones"
        return f"buckets/{_each(body['bucket'], each)}"
    if kind == "google_folder_iam_member":
        return _each(body["folder"], each)
    if kind == "google_bigquery_dataset_access":
        dataset = _each("${each.value.dataset}", each)
        assert body["project"] == '${split("/", each.value.dataset)[1]}', body["project"]
        assert body["dataset_id"] == '${split("/", each.value.dataset)[3]}', body["dataset_id"]
        return dataset
    if kind == "google_pubsub_topic_iam_member":
        assert body["topic"] == "${google_pubsub_topic.events[0].name}", body["topic"]
        return f"projects/{facts.project}/topics/{facts.name}-events"
    raise AssertionError(kind)


def bindings(facts: Facts, emails: dict[str, str], module: Module | None = None) -> list[Binding]:
    """Every (service account, role, resource) the module binds for this deployment."""
    module = module or load(MODULE)
    sets = facts.locals_sets(module)
    found = []
    for kind in IAM_KINDS:
        for name, body in module.of_kind(kind).items():
            for each in _instances(body, sets, facts):
                found.append(
                    Binding(
                        address=f"{kind}.{name}",
                        function=_member(_member_text(kind, body), each),
                        role=_role(body["role"], facts, module),
                        resource=_resource(kind, body, each, facts, emails),
                        condition=_condition(body, each, facts),
                    )
                )
    return found
