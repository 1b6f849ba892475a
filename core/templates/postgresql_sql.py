"""Statement text for the admin session, rendered as it is composed.

`psycopg.sql.SQL(text).format(...)` parses its template on every call, and the `sql.Composed`
tree it makes is walked again when the statement is sent, each constant piece encoded on its own
and each node looking up the connection's encoding: most of the client's work in a grant or a
revoke. A `Renderer` is made once per connection and renders each statement straight to the
bytes psycopg would send for the same `format`: each template is split once and its constant
pieces encoded once, identifiers are escaped by libpq (`PQescapeIdentifier`, as `sql.Identifier`
does), values quoted by psycopg's own adaptation (`sql.Literal`'s). Only bytes a `Renderer` made
go into a slot, so no value is ever put into the template text itself. At run time `%b` refuses
a str, an int or a `sql.Composable`, but takes any bytes (`name.encode()`, a bytea read back):
what a renderer made is therefore typed `Rendered`, and mypy refuses plain bytes in a slot.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NewType

import psycopg
from psycopg import pq, sql
from psycopg.adapt import Transformer

# Bytes a Renderer made: escaped, quoted, or composed of such. Only the Renderer makes them:
# each `type: ignore[return-value]` below marks where bytes become Rendered. (A NewType costs
# nothing at run time, where a bytes subclass would copy every statement.)
Rendered = NewType("Rendered", bytes)


@functools.lru_cache(maxsize=256)
def _pieces(template: str) -> tuple[str, ...]:
    pieces = tuple(template.split("{}"))
    if any("{" in piece or "}" in piece for piece in pieces):
        # Only positional `{}` slots: anything else is a template this helper is not for.
        raise ValueError(f"compose takes '{{}}' slots only: {template!r}")
    return pieces


class Renderer:
    """Statements as the connection's bytes (or, with no connection, as `as_string(None)` makes
    them: the plan's text, never sent). The connection's encoding is read once: the admin
    session never changes it."""

    def __init__(self, conn: psycopg.Connection[Any] | None) -> None:
        self.conn = conn
        self.encoding = conn.info.encoding if conn is not None else "utf-8"
        # Typed as what they give here: bytes escaped or quoted for this connection.
        escape: Any = pq.Escaping(conn.pgconn).escape_identifier if conn is not None else None
        self._escape: Callable[[bytes], Rendered] | None = escape
        # One adaptation context for every value (a Literal given a connection makes its own).
        as_literal: Any = Transformer.from_context(conn).as_literal
        self._literal: Callable[[Any], Rendered] = as_literal
        # Each template as a bytes format, its text's own '%' doubled, and its slot count.
        self._formats: dict[str, tuple[bytes, int]] = {}

    def __call__(self, template: str, *args: Rendered) -> Rendered:
        """`sql.SQL(template).format(*args)` for a template whose slots are all `{}`, each arg
        made by this renderer."""
        found = self._formats.get(template)
        if found is None:
            encoded = (piece.encode(self.encoding) for piece in _pieces(template))
            pieces = [piece.replace(b"%", b"%%") for piece in encoded]
            found = self._formats[template] = (b"%b".join(pieces), len(pieces) - 1)
        if len(args) != found[1]:
            raise ValueError(f"{template!r} takes {found[1]} value(s), not {len(args)}")
        # `%b` takes bytes only: text is never spliced in (a value goes through `literal`, a
        # name through `ident`), and an int or a str raises TypeError.
        return found[0] % args  # type: ignore[return-value]

    def ident(self, name: str) -> Rendered:
        """`sql.Identifier(name)`."""
        if self._escape is None:
            return Rendered(sql.Identifier(name).as_bytes(None))
        return self._escape(name.encode(self.encoding))

    def idents(self, names: Iterable[str]) -> Rendered:
        """`sql.SQL(", ").join(map(sql.Identifier, names))`."""
        return b", ".join(map(self.ident, names))  # type: ignore[return-value]

    def literal(self, value: Any) -> Rendered:
        """`sql.Literal(value)`."""
        return self._literal(value)

    def composed(self, statement: Rendered | sql.Composable) -> bytes:
        """A statement made here, or one composed with `psycopg.sql` elsewhere."""
        if type(statement) is bytes:
            return statement
        assert isinstance(statement, sql.Composable)
        return statement.as_bytes(self.conn)

    def join(self, statements: Sequence[Rendered | sql.Composable]) -> bytes:
        """Statements for one round trip: `sql.SQL(";\\n").join(statements)`."""
        try:
            return b";\n".join(statements)  # type: ignore[arg-type]
        except TypeError:  # some composed with psycopg.sql
            return b";\n".join(map(self.composed, statements))

    def text(self, statement: Rendered | sql.Composable) -> str:
        """A statement as `as_string` shows it."""
        return self.composed(statement).decode(self.encoding)
