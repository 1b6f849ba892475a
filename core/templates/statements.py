"""Catalog statements with placeholders (the SQL templates): what a catalog may write in one,
checked when the catalog loads, before any statement reaches a server."""

from __future__ import annotations

import string
from collections.abc import Collection


def check_placeholders(
    statements: list[str] | None, allowed: Collection[str], required: str
) -> list[str] | None:
    """Each statement may name only the `allowed` placeholders, bare (no format spec or
    conversion, which could reshape a bound value), and must name `{required}`, the principal
    the grant is for: a statement without it would change something else."""
    for index, text in enumerate(statements or []):
        for _, name, spec, conversion in string.Formatter().parse(text):
            if name is None:
                continue
            if name not in allowed or spec or conversion:
                raise ValueError(
                    f"statement {index}: unknown placeholder {{{name}}} "
                    f"(allowed: {', '.join(sorted('{' + p + '}' for p in allowed))})"
                )
        if "{" + required + "}" not in text:
            raise ValueError(f"statement {index}: must name {{{required}}}")
    return statements
