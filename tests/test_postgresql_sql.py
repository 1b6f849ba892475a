"""Statement text of the admin session (jitc.templates.postgresql_sql): byte for byte what
psycopg's own `format` makes, with a connection (what is sent) and without (the plan), for
values chosen to break quoting; refused for anything else."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from jitc.templates.postgresql_sql import Renderer

HOSTILE = [
    'a"b',
    "a'b",
    "a\\b",
    "x'; DROP ROLE postgres; --",
    'jitc:mac.{"k":"v\\"w"}',
    "é ñ 漢字 \u2028",
    "$$ $tag$ ${}",
    "{} {0} {name}",
    "100% %s %b %%",
    "",
]
VALUES: list[Any] = [*HOSTILE, 0, 3, -5623031420806969371, 2**63 - 1]


def _contexts(admin: psycopg.Connection[Any]) -> list[psycopg.Connection[Any] | None]:
    return [None, admin]


def test_rendered_is_what_format_makes(admin: psycopg.Connection[Any]) -> None:
    for conn in _contexts(admin):
        r = Renderer(conn)
        for value in VALUES:
            name = str(value) or "x"
            for template in (
                "GRANT {} TO {} WITH INHERIT TRUE, SET FALSE",
                "{} IN ROLE {}",
                "COMMENT ON ROLE {} IS {}",
                "SELECT {} LIKE '100%' -- %s %b %% {}",
            ):
                made = r(template, r.ident(name), r.literal(value))
                expected = sql.SQL(template).format(sql.Identifier(name), sql.Literal(value))
                assert made == expected.as_bytes(conn)
                assert r.text(made) == expected.as_string(conn)
            names = [name, "b", name]
            joined = sql.SQL(", ").join(map(sql.Identifier, names))
            assert r.idents(names) == joined.as_bytes(conn)
            nested = r("{} IN ROLE {}", r("CREATE ROLE {}", r.ident(name)), r.idents(names))
            assert nested == sql.SQL("{} IN ROLE {}").format(
                sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)), joined
            ).as_bytes(conn)


def test_statements_join_as_psycopg_joins_them(admin: psycopg.Connection[Any]) -> None:
    for conn in _contexts(admin):
        r = Renderer(conn)
        other = sql.SQL("DROP ROLE {}").format(sql.Identifier('a"b'))
        statements = [r("BEGIN"), r("CREATE ROLE {}", r.ident("é")), other, r("COMMIT")]
        expected = sql.SQL(";\n").join(
            [
                sql.SQL("BEGIN"),
                sql.SQL("CREATE ROLE {}").format(sql.Identifier("é")),
                other,
                sql.SQL("COMMIT"),
            ]
        )
        assert r.join(statements) == expected.as_bytes(conn)
        assert r.text(other) == other.as_string(conn)


def test_rendering_refuses_what_it_is_not_for() -> None:
    r = Renderer(None)
    with pytest.raises(ValueError):
        r("SELECT {name}", r.literal(1))
    with pytest.raises(ValueError):
        r("SELECT {}, {}", r.literal(1))


def test_text_is_never_spliced_into_a_slot() -> None:
    r = Renderer(None)
    with pytest.raises(TypeError):
        r("SELECT {}", "1; DROP ROLE postgres")  # type: ignore[arg-type]
    assert r("SELECT {}", r.literal("1; DROP ROLE postgres")) == b"SELECT '1; DROP ROLE postgres'"


def test_bytes_not_made_by_a_renderer_are_refused_by_the_type_checker(tmp_path: Any) -> None:
    # `%b` takes any bytes at run time: a name's `.encode()` or a bytea read back would go into a
    # slot unescaped. Only the type (Rendered) tells the renderer's bytes from those.
    api = pytest.importorskip("mypy.api")
    source = tmp_path / "mistake.py"
    source.write_text(
        "from jitc.templates.postgresql_sql import Renderer\n"
        "r = Renderer(None)\n"
        "r('SELECT {}', r.literal('x'))\n"
        "r.join([r('SELECT {}', r.ident('x'))])\n"
        "r('SELECT {}', 'x'.encode())\n"
        "r.join([b'DROP ROLE x'])\n"
    )
    out, _, status = api.run(["--strict", "--follow-imports=silent", str(source)])
    assert status == 1, out
    assert [line.split(":")[1] for line in out.splitlines() if ": error:" in line] == ["5", "6"]
