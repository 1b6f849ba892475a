"""Every request checked against botocore's service model, as AWS checks it and moto does not.

botocore's own validator checks types, required members and lower bounds only; AWS also
enforces each string's `pattern` (matched against the whole value), `min`/`max` lengths,
integer ranges, list and map sizes, and enum values. `violations` walks a request's params over
the operation's input shape and names every breach; the harness runs it on each call and
answers a breach with the ValidationException AWS would send.

Patterns are Java regular expressions; the Unicode classes (`\\p{L}` ...) that Python's `re`
lacks are widened to a Python class that accepts at least as much, so a breach reported here
is one AWS would report too.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import botocore.session
from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape

# Widening translations: each accepts a superset of the Java class it replaces.
_UNICODE_CLASSES = {
    r"\p{L}": r"\w",
    r"\p{N}": r"\w",
    r"\p{M}": r"\W",
    r"\p{S}": r"\W",
    r"\p{P}": r"\W",
    r"\p{Z}": r"\s",
}


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    translated = pattern
    for java, python in _UNICODE_CLASSES.items():
        translated = translated.replace(java, python)
    return re.compile(translated, re.DOTALL)


@cache
def operation(service: str, name: str) -> OperationModel:
    return botocore.session.get_session().get_service_model(service).operation_model(name)


def _check_scalar(shape: Shape, value: Any, where: str, found: list[str]) -> None:
    meta = shape.metadata
    if shape.type_name == "string" and isinstance(value, str):
        if "min" in meta and len(value) < meta["min"]:
            found.append(f"{where}: length {len(value)} < min {meta['min']}")
        if "max" in meta and len(value) > meta["max"]:
            found.append(f"{where}: length {len(value)} > max {meta['max']}")
        if shape.enum and value not in shape.enum:
            found.append(f"{where}: {value!r} is not one of {shape.enum}")
        pattern = meta.get("pattern")
        if pattern and _compiled(pattern).fullmatch(value) is None:
            found.append(f"{where}: {value!r} does not match {pattern!r}")
    elif shape.type_name in ("integer", "long") and isinstance(value, int):
        if "min" in meta and value < meta["min"]:
            found.append(f"{where}: {value} < min {meta['min']}")
        if "max" in meta and value > meta["max"]:
            found.append(f"{where}: {value} > max {meta['max']}")
    elif shape.type_name == "blob" and isinstance(value, bytes | str):
        size = len(value.encode() if isinstance(value, str) else value)
        if "max" in meta and size > meta["max"]:
            found.append(f"{where}: {size} bytes > max {meta['max']}")


def _walk(shape: Shape, value: Any, where: str, found: list[str]) -> None:
    if isinstance(shape, StructureShape):
        if not isinstance(value, dict):
            return
        for name in shape.required_members:
            if name not in value:
                found.append(f"{where}.{name}: required")
        for name, item in value.items():
            member = shape.members.get(name)
            if member is None:
                found.append(f"{where}.{name}: not a member of {shape.name}")
            else:
                _walk(member, item, f"{where}.{name}", found)
    elif isinstance(shape, ListShape):
        if not isinstance(value, list | tuple):
            return
        meta = shape.metadata
        if "min" in meta and len(value) < meta["min"]:
            found.append(f"{where}: {len(value)} items < min {meta['min']}")
        if "max" in meta and len(value) > meta["max"]:
            found.append(f"{where}: {len(value)} items > max {meta['max']}")
        for index, item in enumerate(value):
            _walk(shape.member, item, f"{where}[{index}]", found)
    elif isinstance(shape, MapShape):
        if not isinstance(value, dict):
            return
        meta = shape.metadata
        if "max" in meta and len(value) > meta["max"]:
            found.append(f"{where}: {len(value)} entries > max {meta['max']}")
        for key, item in value.items():
            _walk(shape.key, key, f"{where} key", found)
            _walk(shape.value, item, f"{where}[{key!r}]", found)
    else:
        _check_scalar(shape, value, where, found)


def violations(service: str, operation_name: str, params: dict[str, Any]) -> list[str]:
    """What AWS would refuse in this request, as `Member.Path: reason` lines (empty: none)."""
    model = operation(service, operation_name)
    if model.input_shape is None:
        return []
    found: list[str] = []
    _walk(model.input_shape, params, operation_name, found)
    return found
