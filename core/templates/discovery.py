"""Google's discovery documents cut down to the methods the connector calls.

googleapiclient builds a client from a discovery document: the whole API (the one it ships for
Cloud Resource Manager v3 is 181 KB, BigQuery's 478 KB) is parsed and turned into methods at
every cold start, for the two or so methods a function calls. The documents here are the ones
googleapiclient ships, with only those methods and the schemas they reach, and without the
prose it only turns into docstrings: the same client, making the same requests, for a fraction
of the parse (12M instructions less in a `gcp_iam` worker's cold start).
`tests/gcp/test_gcp_discovery.py` checks that each document is exactly the cut of the one the
installed googleapiclient ships; after an upgrade of it, make them again with
`python -m jitc.templates.discovery`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).with_name("discovery_documents")

# (API, version): the methods called, as resource path and method name.
METHODS: dict[tuple[str, str], tuple[str, ...]] = {
    ("cloudresourcemanager", "v3"): (
        "projects.getIamPolicy", "projects.setIamPolicy",
        "folders.getIamPolicy", "folders.setIamPolicy",
    ),
    ("storage", "v1"): ("buckets.getIamPolicy", "buckets.setIamPolicy"),
    ("secretmanager", "v1"): ("projects.secrets.getIamPolicy", "projects.secrets.setIamPolicy"),
    ("bigquery", "v2"): ("datasets.get", "datasets.patch"),
    ("pubsub", "v1"): ("projects.topics.publish",),
}  # fmt: skip


def build(name: str, version: str, credentials: Any, client_options: Any = None) -> Any:
    """The googleapiclient client of this API, from its cut document."""
    from googleapiclient import discovery

    document = (FOLDER / f"{name}.{version}.json").read_text(encoding="utf-8")
    return discovery.build_from_document(
        document, credentials=credentials, client_options=client_options
    )


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _undescribed(node: Any) -> Any:
    """The node without its descriptions (the prose googleapiclient only puts in docstrings); a
    property named "description" is a schema, not prose, and stays."""
    if isinstance(node, dict):
        return {
            key: _undescribed(value)
            for key, value in node.items()
            if not (key == "description" and isinstance(value, str))
        }
    if isinstance(node, list):
        return [_undescribed(value) for value in node]
    return node


def cut(document: dict[str, Any], methods: tuple[str, ...]) -> dict[str, Any]:
    """The document with only these methods (`projects.secrets.getIamPolicy`) in its resources,
    and only the schemas they reach, without descriptions; everything else as it was."""
    root: dict[str, Any] = {}
    for path in methods:
        *names, method = path.split(".")
        source, target = document, root
        for resource in names:
            source = source["resources"][resource]
            target = target.setdefault("resources", {}).setdefault(
                resource, {k: v for k, v in source.items() if k not in ("methods", "resources")}
            )
        target.setdefault("methods", {})[method] = source["methods"][method]
    kept = {k: v for k, v in document.items() if k not in ("methods", "resources", "schemas")}
    kept["resources"] = root["resources"]
    schemas = document.get("schemas", {})
    reached: set[str] = set()
    pending = list(_refs(kept["resources"]))
    while pending:
        ref = pending.pop()
        if ref not in reached and ref in schemas:
            reached.add(ref)
            pending.extend(_refs(schemas[ref]))
    kept["schemas"] = {name: schemas[name] for name in sorted(reached)}
    undescribed: dict[str, Any] = _undescribed(kept)
    return undescribed


def main() -> None:
    """Write each cut document from the ones the installed googleapiclient ships."""
    from googleapiclient.discovery_cache import get_static_doc

    # The source tree's folder, also where an editable install links it from.
    folder = Path(__file__).resolve().with_name(FOLDER.name)
    folder.mkdir(exist_ok=True)
    for (name, version), methods in METHODS.items():
        shipped = get_static_doc(name, version)
        if shipped is None:
            raise SystemExit(f"googleapiclient ships no document for {name} {version}")
        text = json.dumps(cut(json.loads(shipped), methods), indent=1, sort_keys=True)
        (folder / f"{name}.{version}.json").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
