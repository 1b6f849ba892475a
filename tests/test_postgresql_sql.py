"""Statement composition of the admin session (jitc.templates.postgresql_sql): what psycopg's own
`format` makes, for values chosen to break quoting, and refused for anything else."""

from __future__ import annotations

import pytest
from psycopg import sql

from jitc.templates.postgresql_sql import compose

HOSTILE = [
    'a"b',
    "a'b",
    "a\\b",
    "x'; DROP ROLE postgres; --",
    'jitc:mac.{"k":"v\\"w"}',
    "é ñ 漢字 \u2028",
    "$$ $tag$ ${}",
    "{} {0} {name}",
    "",
]


def test_compose_is_what_format_makes() -> None:
    for template in (
        "GRANT {} TO {} WITH INHERIT TRUE, SET FALSE",
        "{} IN ROLE {}",
        "COMMENT ON ROLE {} IS {}",
    ):
        for value in HOSTILE:
            args = (sql.Identifier(value or "x"), sql.Literal(value))
            assert compose(template, *args).as_string(None) == (
                sql.SQL(template).format(*args).as_string(None)
            )


def test_compose_refuses_what_it_is_not_for() -> None:
    with pytest.raises(ValueError):
        compose("SELECT {name}", sql.Literal(1))
    with pytest.raises(ValueError):
        compose("SELECT {}, {}", sql.Literal(1))


def test_a_bare_value_is_bound_as_a_literal_never_as_sql() -> None:
    value = "1; DROP ROLE postgres"
    composed = compose("SELECT {}", value)  # type: ignore[arg-type]
    assert composed.as_string(None) == "SELECT '1; DROP ROLE postgres'"
