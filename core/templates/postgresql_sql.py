"""Statement composition for the admin session, without parsing a format string per call.

`psycopg.sql.SQL(text).format(...)` parses its template on every call, which is most of the
cost of building a grant's or a revoke's statements. `compose` splits each template once and
interleaves the same `sql.Composable` values `format` would: identifiers are still
`sql.Identifier`, values still `sql.Literal`, escaped by the driver when the statement is sent.
No value is ever put into the template text itself.
"""

from __future__ import annotations

import functools

from psycopg import sql


@functools.lru_cache(maxsize=256)
def _pieces(template: str) -> tuple[sql.SQL, ...]:
    pieces = template.split("{}")
    if any("{" in piece or "}" in piece for piece in pieces):
        # Only positional `{}` slots: anything else is a template this helper is not for.
        raise ValueError(f"compose takes '{{}}' slots only: {template!r}")
    return tuple(sql.SQL(piece) for piece in pieces)


def compose(template: str, *args: sql.Composable) -> sql.Composed:
    """`sql.SQL(template).format(*args)` for a template whose slots are all `{}`."""
    pieces = _pieces(template)
    if len(args) != len(pieces) - 1:
        raise ValueError(f"{template!r} takes {len(pieces) - 1} value(s), not {len(args)}")
    parts: list[sql.Composable] = [pieces[0]]
    for arg, piece in zip(args, pieces[1:], strict=True):
        parts += (arg, piece)
    # Composed takes a value that is not a Composable as a Literal, as format does: a bare
    # value is bound as data, never spliced in as SQL.
    return sql.Composed(parts)
