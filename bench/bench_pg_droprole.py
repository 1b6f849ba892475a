"""The server's floor under the sweep: DROP ROLE of N bare roles (no privileges, no comment,
no sessions), 200 per statement as the sweep does. What the sweep cannot go below.

    python bench/bench_pg_droprole.py [sizes, default 1000,10000]
"""

from __future__ import annotations

import sys
import time

import psycopg
from _common import DSN, drop_roles, machine
from psycopg import sql

PREFIX = "benchd_"
CHUNK = 200


def floor(count: int) -> float:
    names = [f"{PREFIX}{i}" for i in range(count)]
    with psycopg.connect(DSN, autocommit=True) as conn:
        with conn.transaction():
            for start in range(0, count, 500):
                conn.execute(
                    sql.SQL(";").join(
                        sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(n))
                        for n in names[start : start + 500]
                    )
                )
        began = time.perf_counter()
        for start in range(0, count, CHUNK):
            chunk = sql.SQL(", ").join(map(sql.Identifier, names[start : start + CHUNK]))
            conn.execute(sql.SQL("DROP ROLE {}").format(chunk))
        return time.perf_counter() - began


def main() -> None:
    sizes = [int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "1000,10000").split(",")]
    print(machine())
    try:
        for size in sizes:
            took = floor(size)
            print(
                f"DROP ROLE of {size} bare roles, {CHUNK} per statement: {took:.2f} s "
                f"({size / took:.0f} roles/s)"
            )
    finally:
        drop_roles(PREFIX)


if __name__ == "__main__":
    main()
