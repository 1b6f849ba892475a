"""The Terraform module and example as data, parsed with python-hcl2 (no providers needed).

Keys and plain string values are unquoted; an interpolation stays as written (`${...}`), so a
test can ask which resource an argument refers to without evaluating anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import hcl2

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "infra" / "terraform" / "aws"
MEMBER_MODULE = MODULE / "member-account"
EXAMPLE = ROOT / "infra" / "terraform" / "examples" / "aws"


def unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, dict):
        return {unquote(k): unquote(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [unquote(v) for v in value]
    return value


# A document another takes in: `data.aws_iam_policy_document.NAME[*].json` (made with count).
SOURCE_DOCUMENT = re.compile(r"data\.aws_iam_policy_document\.(\w+)\[\*\]\.json")


@dataclass
class Module:
    path: Path
    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    data: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        return self.resources[(kind, name)]

    def of_kind(self, kind: str) -> dict[str, dict[str, Any]]:
        return {name: body for (k, name), body in self.resources.items() if k == kind}

    def policy(self, name: str) -> dict[str, Any]:
        """`data.aws_iam_policy_document.NAME`, with the statements of the documents its
        `source_policy_documents` takes in under `source_statements`: each of those documents
        is made only when its feature is deployed (`count`), so its statements are as
        conditional as a `dynamic "statement"`."""
        body = self.data[("aws_iam_policy_document", name)]
        if "source_policy_documents" not in body:
            return body
        taken = [
            statement
            for source in SOURCE_DOCUMENT.findall(str(body["source_policy_documents"]))
            for statement in as_list(self.policy(source).get("statement", []))
        ]
        return {**body, "source_statements": taken}


@cache
def load(path: Path = MODULE) -> Module:
    module = Module(path)
    for tf in sorted(path.glob("*.tf")):
        text = tf.read_text()
        module.texts[tf.name] = text
        parsed = unquote(hcl2.loads(text))
        for block in parsed.get("resource", []):
            for kind, named in block.items():
                for name, body in named.items():
                    module.resources[(kind, name)] = body
        for block in parsed.get("data", []):
            for kind, named in block.items():
                for name, body in named.items():
                    module.data[(kind, name)] = body
        for block in parsed.get("locals", []):
            module.locals.update(block)
        for block in parsed.get("variable", []):
            module.variables.update(block)
        for block in parsed.get("output", []):
            module.outputs.update(block)
        for block in parsed.get("module", []):
            module.modules.update(block)
    return module


def statements(block: Any) -> list[dict[str, Any]]:
    """Every statement of a policy document, static or inside a `dynamic "statement"`."""
    found: list[dict[str, Any]] = []
    if isinstance(block, dict):
        if "actions" in block:
            found.append(block)
        for value in block.values():
            found += statements(value)
    elif isinstance(block, list):
        for item in block:
            found += statements(item)
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


REFERENCE = re.compile(
    r"(?<![\w.])(var|local|data|module|aws_[a-z0-9_]+|archive_[a-z_]+|each|count|path)"
    r"\.([A-Za-z_][\w-]*)(?:\.([A-Za-z_][\w-]*))?"
)


def env_value(name: str, module: Module | None = None) -> str:
    """What the functions' environment sets NAME to, as written (a reference or a string).

    The environment is a `merge(...)` expression, which python-hcl2 keeps as text."""
    module = module or load()
    for text in module.texts.values():
        match = re.search(rf"^\s*{re.escape(name)}\s*=\s*(.+?)\s*$", text, re.MULTILINE)
        if match:
            value = match.group(1)
            return value if value.startswith('"') else f"${{{value}}}"
    raise KeyError(name)


def role_policies(role_reference: str, module: Module | None = None) -> list[dict[str, Any]]:
    """The statements of every inline policy of the role `${aws_iam_role.NAME.arn}` names."""
    module = module or load()
    name = role_reference.removeprefix("${aws_iam_role.").split(".")[0].split("[")[0]
    found: list[dict[str, Any]] = []
    for body in module.of_kind("aws_iam_role_policy").values():
        # `aws_iam_role.NAME.id`, or `aws_iam_role.NAME[0].id` for a role made with count.
        if body["role"].startswith((f"${{aws_iam_role.{name}.", f"${{aws_iam_role.{name}[")):
            document = body["policy"].removeprefix("${data.aws_iam_policy_document.")
            found += statements(module.policy(document.split(".")[0].split("[")[0]))
    return found
