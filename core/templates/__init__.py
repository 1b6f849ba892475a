"""The template registry: one explicit entry per target kind, imported only when used."""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jitc.templates.base import Template

REGISTRY: dict[str, str] = {
    "postgresql": "jitc.templates.postgresql:PostgreSQLTemplate",
    "aws_iam": "jitc.templates.aws_iam:AwsIamTemplate",
    "aws_identity_center": "jitc.templates.aws_identity_center:AwsIdentityCenterTemplate",
    "mysql": "jitc.templates.mysql:MySQLTemplate",
    "redis": "jitc.templates.redis:RedisTemplate",
    "rabbitmq": "jitc.templates.rabbitmq:RabbitMQTemplate",
    "gcp_iam": "jitc.templates.gcp_iam:GcpIamTemplate",
    "azure_rbac": "jitc.templates.azure_rbac:AzureRbacTemplate",
}


@cache
def get_template(kind: str) -> Template:
    """The template for a target kind; its driver is imported here, not at `import core`."""
    try:
        path = REGISTRY[kind]
    except KeyError:
        raise KeyError(
            f"unknown target kind {kind!r} (known: {', '.join(sorted(REGISTRY))})"
        ) from None
    module_name, _, class_name = path.partition(":")
    template: Template = getattr(importlib.import_module(module_name), class_name)()
    return template
