"""10,000 live grants on one table: no ACL ceiling.

Per-grant GRANTs put an entry per grantee in the table's ACL, and PostgreSQL refuses the table's
catalog row past 8,160 bytes (about 2,436 grantees), after which every grant and the company's
own GRANT on that table fail. With bundle roles the ACL holds the bundle once. This grants N
(default 10,000) through the engine in batches of 1,000, then checks that the last grantee can
log in and read the table, that the company can still GRANT on it, and the ACL's size.

    python bench/bench_pg_ceiling.py [grants]
"""

from __future__ import annotations

import sys
import time

import psycopg
from _common import DSN, drop_roles, drop_schema, engine, machine, make_schema, works
from psycopg import sql

from jitc.models import utcnow

INTEGRATION, PREFIX, SCHEMA = "bench-ceiling", "benchc_", "bench_ceiling"


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    print(machine())
    make_schema(SCHEMA, 1)
    eng, _ = engine(INTEGRATION, PREFIX, schema=SCHEMA)
    tag = f"{int(time.time())}"
    try:
        start = time.perf_counter()
        last = None
        for offset in range(0, count, 1000):
            ids = [f"c-{tag}-{i}" for i in range(offset, min(count, offset + 1000))]
            pending = works(INTEGRATION, ids, utcnow(), "1h", SCHEMA)
            while pending:  # a failed message is redelivered by the queue: do the same
                outcomes = eng.execute_batch(pending, plain=True)
                failed = {o.request_id for o in outcomes if o.status != "granted"}
                last = next((o for o in outcomes if o.status == "granted"), last)
                pending = [w for w in pending if w.request.request_id in failed]
        took = time.perf_counter() - start
        assert last is not None and last.credentials is not None
        with psycopg.connect(DSN, autocommit=True) as admin:
            live = admin.execute(
                "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, %s) AND rolcanlogin",
                (PREFIX,),
            ).fetchone()
            acl = admin.execute(
                "SELECT pg_column_size(relacl), cardinality(relacl) FROM pg_class "
                "WHERE oid = %s::regclass",
                (f"{SCHEMA}.t0",),
            ).fetchone()
            admin.execute(  # the company's own GRANT on the table still works
                sql.SQL("GRANT SELECT ON {}.t0 TO pg_monitor").format(sql.Identifier(SCHEMA))
            )
        creds = last.credentials
        with psycopg.connect(
            DSN.replace("user=postgres", f"user={creds['username']}"),
            password=creds["password"],
        ) as grantee:
            rows = grantee.execute(
                sql.SQL("SELECT count(*) FROM {}.t0").format(sql.Identifier(SCHEMA))
            ).fetchone()
        assert live and acl and rows is not None
        print(
            f"{live[0]} live grants on one table in {took:.1f} s ({count / took:.0f}/s); "
            f"its ACL: {acl[1]} entries, {acl[0]} bytes; the last grantee reads it; "
            "the company's GRANT on it works"
        )
    finally:
        drop_roles(PREFIX)
        drop_schema(SCHEMA)


if __name__ == "__main__":
    main()
