"""The module's IAM policy documents rendered to JSON from the HCL, for a given deployment.

`render(name, bindings)` turns `data.aws_iam_policy_document.<name>` into the document Terraform
would produce, with each `${...}` reference replaced by its binding. A `dynamic "statement"`
is kept when every reference in its content is bound (the deployment has that feature) and
dropped when one is not (e.g. no `iam_target`): the bindings say which features exist. The
statements of the documents a document takes in (`source_policy_documents`, each made only
when its feature is deployed) are kept or dropped the same way, and come first, as Terraform
puts them.
"""

from __future__ import annotations

import re
from typing import Any

from tfmodule import Module, as_list, load

INTERPOLATION = re.compile(r"\$\{([^}]*)\}")


class Unbound(KeyError):
    """A reference the deployment has no value for: the feature is not deployed."""


def _value(text: str, bindings: dict[str, Any]) -> Any:
    whole = INTERPOLATION.fullmatch(text)
    if whole:
        expression = whole.group(1).strip()
        if expression not in bindings:
            raise Unbound(expression)
        return bindings[expression]

    def substitute(match: re.Match[str]) -> str:
        expression = match.group(1).strip()
        if expression not in bindings:
            raise Unbound(expression)
        return str(bindings[expression])

    return INTERPOLATION.sub(substitute, text)


def _statement(block: dict[str, Any], bindings: dict[str, Any]) -> dict[str, Any]:
    resources: list[str] = []
    for item in as_list(block.get("resources", [])):
        value = _value(item, bindings) if isinstance(item, str) else item
        resources += as_list(value)
    statement: dict[str, Any] = {
        "Effect": block.get("effect", "Allow"),
        "Action": [_value(a, bindings) for a in as_list(block["actions"])],
        "Resource": resources,
    }
    if "sid" in block:
        statement["Sid"] = block["sid"]
    conditions: dict[str, dict[str, list[str]]] = {}
    for condition in as_list(block.get("condition", [])):
        values = [_value(v, bindings) for v in as_list(condition["values"])]
        conditions.setdefault(condition["test"], {})[condition["variable"]] = values
    if conditions:
        statement["Condition"] = conditions
    return statement


def render(name: str, bindings: dict[str, Any], module: Module | None = None) -> dict[str, Any]:
    module = module or load()
    body = module.policy(name)
    statements = _conditional(body.get("source_statements", []), bindings)
    statements += [_statement(s, bindings) for s in as_list(body.get("statement", []))]
    for dynamic in as_list(body.get("dynamic", [])):
        statements += _conditional(dynamic["statement"]["content"], bindings)
    return {"Version": "2012-10-17", "Statement": statements}


def _conditional(blocks: Any, bindings: dict[str, Any]) -> list[dict[str, Any]]:
    """The statements of `blocks` whose every reference is bound."""
    kept = []
    for block in as_list(blocks):
        try:
            kept.append(_statement(block, bindings))
        except Unbound:
            continue
    return kept
