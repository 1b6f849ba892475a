"""Catalog loading: the example works as is, and a bad catalog names the integration and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from jitc.catalog import load_catalog, parse_catalog
from jitc.errors import CatalogError, SecretError
from jitc.secrets import EnvSecretStore, FileSecretStore, SecretRef, local_stores

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "catalog.yaml"


def _doc(**integration: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "kind": "postgresql",
        "connection": {"dbname": "test", "user": "postgres"},
        "permissions": {"read-only": {"template": "read-only", "resources": ["public"]}},
    }
    base.update(integration)
    return {"connector": {"label_key": "env:JITC_LABEL_KEY"}, "integrations": {"billing-db": base}}


def test_example_catalog_loads_and_offers_what_the_readme_says() -> None:
    catalog = load_catalog(EXAMPLE)
    pg = catalog.integration("local-postgres")
    assert pg.kind == "postgresql" and set(pg.permissions) == {"read-only", "read-write"}
    assert pg.connection.dbname == "test"  # type: ignore[attr-defined]
    assert all(p.resources == ["public"] for p in pg.permissions.values())


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"kind": "oracle"}, "kind: unknown target kind 'oracle'"),
        ({"connection": {"dbname": "test"}}, "connection.user"),
        ({"connection": {"dbname": "test", "user": "u", "port": 70000}}, "connection.port"),
        (
            {"connection": {"dbname": "test", "user": "u", "statement_timeout": "1; DROP"}},
            "connection.statement_timeout",
        ),
        ({"connection": {"dbname": "test", "user": "u", "hots": "x"}}, "connection.hots"),
        ({"permissions": {"ro": {"template": "read-only"}}}, "permissions.ro.resources"),
        (
            {"permissions": {"ro": {"template": "everything", "resources": ["public"]}}},
            "permissions.ro.template",
        ),
        ({"permissions": {"ro": {"resources": ["public"]}}}, "permissions.ro"),
        (
            {
                "permissions": {
                    "ro": {"statements": ["GRANT ALL ON {schema} TO postgres"], "resources": ["x"]}
                }
            },
            "must name {role}",
        ),
        (
            {
                "permissions": {
                    "ro": {
                        "template": "read-only",
                        "resources": ["public"],
                        "max_duration": "forever",
                    }
                }
            },
            "permissions.ro.max_duration",
        ),
        (
            {"permissions": {"Bad Name": {"template": "read-only", "resources": ["public"]}}},
            "permissions.Bad Name",
        ),
        ({"max_duration": "eternity"}, "max_duration"),
        ({"credentials": "vault"}, "credentials"),
    ],
)
def test_bad_catalog_names_integration_and_field(change: dict[str, Any], needle: str) -> None:
    with pytest.raises(CatalogError) as err:
        parse_catalog(_doc(**change))
    message = str(err.value)
    assert "'billing-db'" in message and needle in message, message


def test_bad_control_plane_key_and_bad_yaml(tmp_path: Path) -> None:
    doc = _doc()
    doc["control_plane"] = {"keys": {"cp": "not-a-key"}}
    with pytest.raises(CatalogError, match=r"control_plane\.keys"):
        parse_catalog(doc)
    path = tmp_path / "c.yaml"
    path.write_text("integrations: [unclosed")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(path)
    path.write_text(yaml.safe_dump(_doc()))
    assert load_catalog(path).integration("billing-db").kind == "postgresql"


def test_secret_references_resolve_from_env_and_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "pg.json"
    secret_file.write_text(json.dumps({"password": "s3cret-file"}))
    assert (
        FileSecretStore().resolve(SecretRef(f"file:{secret_file}#password")).reveal()
        == "s3cret-file"
    )
    env = EnvSecretStore({"PG": "s3cret-env"})
    value = env.resolve(SecretRef("env:PG"))
    assert value.reveal() == "s3cret-env"
    assert "s3cret" not in repr(value) and "s3cret" not in str(value) and "s3cret" not in f"{value}"


@pytest.mark.parametrize(
    "ref", ["env:JITC_SURELY_UNSET_VAR", "file:/nonexistent/secret", "vault:x"]
)
def test_unresolvable_secret_names_the_reference_only(ref: str) -> None:
    with pytest.raises(SecretError) as err:
        local_stores().resolve(SecretRef(ref))
    assert ref.split(":", 1)[1].split("#")[0] in str(err.value)


def test_json_field_missing(tmp_path: Path) -> None:
    secret_file = tmp_path / "pg.json"
    secret_file.write_text(json.dumps({"password": "do-not-print-me"}))
    with pytest.raises(SecretError) as err:
        FileSecretStore().resolve(SecretRef(f"file:{secret_file}#user"))
    assert "do-not-print-me" not in str(err.value)
