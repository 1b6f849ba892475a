"""The Azure Terraform module as data (python-hcl2, no provider needed), and a small evaluator
that renders what a test needs from it for given variable values: the app settings, the queue
names, and every role assignment with its role's actions and its scope.

Only the expression forms the module uses are understood (references, string interpolation,
`sha256`, `tostring`, `join`, `concat` of literal lists and a `var.x ? [...] : []`); anything else
raises, so the module cannot drift into something the tests silently stop reading.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import azspec
import hcl2
from azfakes import Assignment

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "infra" / "terraform" / "azure"
EXAMPLE = ROOT / "infra" / "terraform" / "examples" / "azure"


def unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, dict):
        return {unquote(k): unquote(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [unquote(v) for v in value]
    return value


@dataclass
class Module:
    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    def of_kind(self, kind: str) -> dict[str, dict[str, Any]]:
        return {name: body for (k, name), body in self.resources.items() if k == kind}


@cache
def load(path: Path = MODULE) -> Module:
    module = Module()
    for tf in sorted(path.glob("*.tf")):
        text = tf.read_text()
        module.texts[tf.name] = text
        parsed = unquote(hcl2.loads(text))
        for block in parsed.get("resource", []):
            for kind, named in block.items():
                for name, body in named.items():
                    module.resources[(kind, name)] = body
        for block in parsed.get("locals", []):
            module.locals.update(block)
        for block in parsed.get("variable", []):
            module.variables.update(block)
        for block in parsed.get("output", []):
            module.outputs.update(block)
    return module


class Evaluator:
    def __init__(self, module: Module, refs: dict[str, Any]) -> None:
        self.module = module
        self.refs = refs

    def ref(self, name: str) -> Any:
        if name.startswith("each.value."):
            return getattr(self.refs["each.value"], name.split(".", 2)[2])
        if name in self.refs:
            return self.refs[name]
        if name.startswith("var."):
            var = name[4:]
            if var in self.refs.get("vars", {}):
                return self.refs["vars"][var]
            return self.module.variables[var]["default"]
        if name.startswith("local."):
            return self.value(self.module.locals[name[6:]])
        raise KeyError(f"no value for {name} in this test's rendering")

    def expr(self, text: str) -> Any:
        text = text.strip()
        joined = re.fullmatch(r'join\("([^"]*)", (var\.\w+)\)', text)
        if joined:
            return joined.group(1).join(str(v) for v in self.ref(joined.group(2)))
        call = re.fullmatch(r"(sha256|tostring)\((.+)\)", text)
        if call:
            inner = self.expr(call.group(2))
            return (
                hashlib.sha256(str(inner).encode()).hexdigest()
                if call.group(1) == "sha256"
                else str(inner)
            )
        if re.fullmatch(r"[A-Za-z_][\w.\-\[\]\"]*", text):
            return self.ref(text.replace('["', ".").replace('"]', ""))
        raise ValueError(f"expression {text!r} is not understood by tfazure")

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            whole = re.fullmatch(r"\$\{(.+)\}", value, re.DOTALL)
            if whole and "${" not in whole.group(1):
                return self.expr(whole.group(1))
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(self.expr(m.group(1))), value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value


def _local_block(text: str, name: str) -> str:
    start = text.index(f"  {name} = ")
    depth, end = 0, text.index("(", start)
    for index in range(end, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            end = index
            break
    return text[start : end + 1]


def rbac_actions(module: Module, pim: bool) -> list[str]:
    """The custom role's actions: the literal list, plus the PIM list when `rbac_pim`."""
    block = _local_block(module.texts["main.tf"], "rbac_actions")
    base, _, conditional = block.partition("var.rbac_pim ?")
    actions = re.findall(r'"(Microsoft\.Authorization/[^"]+)"', base)
    if pim:
        actions += re.findall(r'"(Microsoft\.Authorization/[^"]+)"', conditional.split(":", 1)[0])
    return actions


def rbac_condition(evaluator: Evaluator) -> str:
    """The condition on the RBAC target's assignment: the module's `join(" AND ", [...])` of
    literal strings, rendered."""
    text = evaluator.module.texts["main.tf"]
    start = text.index('  rbac_condition = join(" AND ", [')
    block = text[start : text.index("])", start)]
    parts = re.findall(r'^\s*"(.*)",?$', block, re.MULTILINE)
    return " AND ".join(evaluator.value(p.replace('\\"', '"')) for p in parts)


@dataclass
class Rendered:
    queue_name: str
    poison_queue_name: str
    assignments: list[Assignment]
    settings: dict[str, str]
    evaluator: Evaluator

    def app_settings(
        self, queue_service_uri: str, catalog: str, blob_service_uri: str = ""
    ) -> dict[str, str]:
        self.evaluator.refs["azurerm_storage_account.app.primary_queue_endpoint"] = (
            queue_service_uri + "/"
        )
        self.evaluator.refs["azurerm_storage_account.app.primary_blob_endpoint"] = blob_service_uri
        self.evaluator.refs["local.catalog"] = catalog
        body = load().resources[("azurerm_function_app_flex_consumption", "app")]
        return {k: str(v) for k, v in self.evaluator.value(body["app_settings"]).items()}


def render(
    variables: dict[str, Any],
    *,
    storage_account_id: str,
    principal: str,
    client_id: str = "client-id",
) -> Rendered:
    module = load()
    refs: dict[str, Any] = {
        "vars": variables,
        "azurerm_storage_account.app.id": storage_account_id,
        "azurerm_storage_account.app.name": storage_account_id.rsplit("/", 1)[1],
        "data.azurerm_client_config.current.subscription_id": storage_account_id.split("/")[2],
        "azurerm_user_assigned_identity.app.principal_id": principal,
        "azurerm_user_assigned_identity.app.client_id": client_id,
        "azurerm_application_insights.app.id": storage_account_id.rsplit("/providers/", 1)[0]
        + "/providers/Microsoft.Insights/components/app",
    }
    evaluator = Evaluator(module, refs)
    queues = module.of_kind("azurerm_storage_queue")
    queue_name = evaluator.value(queues["requests"]["name"])
    poison_name = evaluator.value(queues["poison"]["name"])
    refs["azurerm_storage_queue.requests.name"] = queue_name
    refs["azurerm_storage_queue.poison.name"] = poison_name
    containers = module.of_kind("azurerm_storage_container")
    for container in ("sync", "rbac_ledger"):
        refs[f"azurerm_storage_container.{container}.name"] = evaluator.value(
            containers[container]["name"]
        )
    assignments: list[Assignment] = []
    for name, body in module.of_kind("azurerm_role_assignment").items():
        for each in _instances(evaluator, body):
            refs["each.value"], refs["each.key"] = each
            scope = evaluator.value(body["scope"])
            who = evaluator.value(body["principal_id"])
            if "role_definition_name" in body:
                role = body["role_definition_name"]
                _, actions, data = azspec.BUILTIN_ROLES[role]
                allowed = None
            else:
                role = "rbac_target"
                actions, data = rbac_actions(module, bool(variables.get("rbac_pim"))), []
                condition = rbac_condition(evaluator)
                allowed = _condition_roles(condition)
            assignments.append(
                Assignment(who, f"{name}:{role}", tuple(actions), tuple(data), scope, allowed)
            )
    return Rendered(queue_name, poison_name, assignments, {}, evaluator)


def _instances(evaluator: Evaluator, body: dict[str, Any]) -> list[tuple[Any, Any]]:
    if "count" in body:
        text = body["count"].strip("${}")
        var = re.match(r"var\.(\w+) == null", text)
        if var and evaluator.ref(f"var.{var.group(1)}") is None:
            return []
        if text == "local.rbac_enabled ? 1 : 0":
            return [(None, None)] if evaluator.ref("var.rbac_scopes") else []
        if var is None and text != "1":
            raise ValueError(f"count {text!r} is not understood by tfazure")
        return [(None, None)]
    if "for_each" not in body:
        return [(None, None)]
    text = body["for_each"].strip("${}").strip()
    if text.startswith("toset(var."):
        values = evaluator.ref(text[len("toset(") : -1])
        return [(v, v) for v in values]
    if text.startswith("local.rbac_enabled ?"):
        values = evaluator.ref("var.rbac_scopes")
        return [(v, v) for v in values]
    if text == "local.queue_scopes":
        scopes = evaluator.value(evaluator.module.locals["queue_scopes"])
        return [(v, k) for k, v in scopes.items()]
    if text == "azurerm_storage_container.host":
        names = evaluator.module.locals["host_containers"]
        return [(_Named(n), n) for n in names]
    raise ValueError(f"for_each {text!r} is not understood by tfazure")


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name


def _condition_roles(condition: str) -> frozenset[str]:
    """The role GUIDs of the module's "constrain roles" condition, which must constrain both
    writes and deletes to the same set."""
    sets = re.findall(r"ForAnyOfAnyValues:GuidEquals \{([^}]*)\}", condition)
    assert (
        len(sets) == 2
        and "roleAssignments/write" in condition
        and "roleAssignments/delete" in condition
    )
    found = [frozenset(g.strip().lower() for g in s.split(",") if g.strip()) for s in sets]
    assert found[0] == found[1], condition
    return found[0]
