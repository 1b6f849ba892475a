"""Redis: grant+revoke latency through the engine vs. the raw client, and batch throughput.

Two floors, both raw redis-py with the session's client settings, on the same server in the
same run, interleaved with the engine (see `_userbench` for the shapes: per-op, kept, shared):
  writes:     only the writes: the template's own planned `ACL SETUSER` (a real SHA-256 in place
              of the masked password and a stand-in MAC) and `ACL DELUSER`;
  same calls: the commands the template sends, pipelined as it pipelines them: the grant reads
              the user and its tombstone, then writes the user and looks for the tombstone; the
              revoke reads both, then writes the tombstone, kills the user's connections,
              deletes the user and reads it back. Engine / this floor is the connector's own
              cost; engine / writes adds the reads every decision takes from the server.
Goal: engine / floor <= 1.3. Then where the engine's time goes: in all, and in the kept shape
round trip by round trip, with the engine's own work before, between and after them. Last, N
grants in one batch (engine) vs. the floor's N `ACL SETUSER` on one connection, and the sweep of
those N: grants and revokes per second. The server's own cost of each command comes first.

    python bench/bench_redis.py [iterations] [batch size]
"""

from __future__ import annotations

import hashlib
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import redis
from _userbench import Target, batch, latency, machine

from jitc.messages import Work, parse_request
from jitc.models import utcnow
from jitc.templates import redis_session
from jitc.templates.redis_session import NO_SETINFO, RedisSession

# JITC_BENCH_PREFIX: runs side by side on one server each clean up only their own users.
PREFIX = os.environ.get("JITC_BENCH_PREFIX", "benchr") + "-"
TARGET = Target(
    integration="bench-redis",
    kind="redis",
    # The shared server has no ACL file: `acl_save: never`.
    connection={"host": "127.0.0.1", "tls": False, "user_prefix": PREFIX, "acl_save": "never"},
    resource="benchr:*",
    secrets={},
)
PLANNER = TARGET.engine()
KEPT: list[redis.Redis] = []


def connect() -> redis.Redis:
    # The same client settings as the template's session, and the same login: the session
    # logs in as its admin user (`AUTH default ""` here, the shared server's user without a
    # password) on each new connection, a round trip of its own before the first command.
    return redis.Redis(
        host="127.0.0.1",
        port=6379,
        username="default",
        password="",
        decode_responses=True,
        protocol=2,
        client_name="jit-floor",
        **NO_SETINFO,
    )


def opened(shape: str) -> redis.Redis:
    """The floor's connection for an operation: kept for the whole run in the kept shape."""
    if shape != "kept":
        return connect()
    if not KEPT:
        KEPT.append(connect())
    return KEPT[0]


def done(client: redis.Redis, shape: str) -> None:
    if shape != "kept":
        client.close()


def acl(client: redis.Redis, *args: str) -> Any:
    command: Any = client.execute_command
    return command("ACL", *args)


def floor_rules(request_id: str) -> tuple[str, list[str]]:
    """The template's plan for this grant, with a real password hash and a stand-in MAC."""
    (text,) = PLANNER.plan(TARGET.grant(request_id)).statements
    parts = text.split()
    digest = hashlib.sha256(secrets.token_urlsafe(24).encode()).hexdigest()
    rules = [p.replace("********", digest if p.startswith("#") else "M" * 43) for p in parts[3:]]
    return parts[2], rules


def pipelined(client: redis.Redis, *commands: tuple[str, ...]) -> list[Any]:
    """One round trip the way the template sends one: redis-py's connection API on one
    connection the client holds (its packer, then each reply), no pipeline object."""
    conn: Any = getattr(client, "_floor_connection", None)
    if conn is None:
        conn = client.connection_pool.get_connection()
        setattr(client, "_floor_connection", conn)  # noqa: B010 - a bench-only attribute
    conn.send_packed_command(conn.pack_commands(commands))
    return [conn.read_response() for _ in commands]


def writes(request_id: str) -> Callable[[str], None]:
    name, rules = floor_rules(request_id)

    def run(shape: str) -> None:
        c = opened(shape)
        acl(c, "SETUSER", name, *rules)
        if shape == "per-op":
            c.close()
            c = connect()
        acl(c, "DELUSER", name)
        done(c, shape)

    return run


def same_calls(request_id: str) -> Callable[[str], None]:
    name, rules = floor_rules(request_id)
    stone = PREFIX + "x-" + name[len(PREFIX) :]

    # On a kept connection the template logs in again ahead of each batch's first commands.
    def login(shape: str) -> tuple[tuple[str, ...], ...]:
        return (("AUTH", "default", ""),) if shape == "kept" else ()

    def run(shape: str) -> None:
        c = opened(shape)
        pipelined(c, *login(shape), ("ACL", "GETUSER", name), ("ACL", "GETUSER", stone))
        pipelined(c, ("ACL", "SETUSER", name, *rules), ("ACL", "GETUSER", stone))
        if shape == "per-op":
            c.close()
            c = connect()
        pipelined(c, *login(shape), ("ACL", "GETUSER", name), ("ACL", "GETUSER", stone))
        pipelined(
            c,
            ("ACL", "SETUSER", stone, "reset", "resetchannels", "&jitc1:" + "M" * 80),
            ("CLIENT", "KILL", "USER", name),
            ("ACL", "DELUSER", name),
            ("ACL", "GETUSER", name),
        )
        done(c, shape)

    return run


def batch_floor(
    root: redis.Redis,
) -> Callable[[int], tuple[Callable[[], None], Callable[[], None]]]:
    def prepare(size: int) -> tuple[Callable[[], None], Callable[[], None]]:
        planned = [floor_rules(f"fl-{i}-{secrets.token_hex(3)}") for i in range(size)]

        def grants() -> None:
            for name, rules in planned:
                acl(root, "SETUSER", name, *rules)

        def revokes() -> None:
            for name, _ in planned:
                acl(root, "DELUSER", name)

        return grants, revokes

    return prepare


def cleanup(client: redis.Redis) -> None:
    names = [n for n in acl(client, "USERS") if n.startswith(PREFIX)]
    if names:
        acl(client, "DELUSER", *names)


def server_costs(client: redis.Redis, n: int = 300) -> None:
    """What the server charges for each command the template sends, on its own: reading an
    existing user (`ACL GETUSER`) makes Redis 7.0 describe its command rules."""
    name, rules = floor_rules("costs")
    acl(client, "SETUSER", name, *rules)

    def median_ms(*command: str) -> float:
        times = []
        run: Any = client.execute_command
        for _ in range(n):
            start = time.perf_counter()
            run(*command)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    print(
        f"server, one command per round trip: PING {median_ms('PING'):.3f} ms, "
        f"ACL GETUSER of a missing user {median_ms('ACL', 'GETUSER', 'nobody-here'):.3f} ms, "
        f"of a granted user {median_ms('ACL', 'GETUSER', name):.3f} ms, "
        f"ACL SETUSER {median_ms('ACL', 'SETUSER', name, *rules):.3f} ms"
    )
    acl(client, "DELUSER", name)


def breakdown(iterations: int, shape: str) -> None:
    """Where the engine's time goes in the shared shape (one batch, a new client) or the kept
    one (two batches on the kept client): inside the session's pipelines (the round trips, and
    a connect) and everywhere else (request checks, the client object, sealing the credentials,
    the audit events)."""
    engine = TARGET.engine(keep=shape == "kept")
    spent = [0.0]
    send = RedisSession._send

    def timed(self: RedisSession, commands: Any, meanwhile: Any = None) -> list[Any]:
        start = time.perf_counter()
        try:
            return send(self, commands, meanwhile)
        finally:
            spent[0] += time.perf_counter() - start

    RedisSession._send = timed  # type: ignore[method-assign]
    totals, trips = [], []
    try:
        for i in range(iterations + 3):
            rid = f"bd-{i}-{secrets.token_hex(3)}"
            works = [Work(TARGET.grant(rid), utcnow()), Work(TARGET.revoke(rid), utcnow())]
            spent[0] = 0.0
            start = time.perf_counter()
            if shape == "kept":
                for work in works:
                    engine.execute_batch([work])
            else:
                engine.execute_batch(works)
            if i >= 3:
                totals.append(time.perf_counter() - start)
                trips.append(spent[0])
    finally:
        RedisSession._send = send  # type: ignore[method-assign]
    total, rt = statistics.median(totals), statistics.median(trips)
    print(
        f"{shape}, where the engine's time goes: {total * 1000:.2f} ms, of which the 4 pipelined "
        f"round trips (and any connect) {rt * 1000:.2f} ms, the rest {(total - rt) * 1000:.2f} ms"
    )


_TRIPS = (
    "grant's reads (AUTH, GETUSER of the user and the tombstone)",
    "grant's write (SETUSER, GETUSER of the tombstone)",
    "revoke's reads (AUTH, GETUSER of the user and the tombstone)",
    "revoke's writes (tombstone, CLIENT KILL USER, DELUSER, GETUSER)",
)
_GAPS = (
    "grant, before its first round trip (the message read, the request checked, the kept "
    "session taken: secrets, label key, health check)",
    "grant, between its round trips (labels checked)",
    "grant, after its last round trip (outcome, audit event, session given back)",
    "revoke, before its first round trip",
    "revoke, between its round trips (labels checked, tombstone made)",
    "revoke, after its last round trip (results, outcome, audit event, session given back)",
)


def phases(iterations: int) -> None:
    """The kept shape, piece by piece, the engine taking turns with the floor 'same calls':
    each round trip (the commands packed and sent; on the engine's side what it
    does while the server works; the replies waited for and read) and the engine's own work
    before, between and after them. Medians, microseconds."""
    global pipelined
    floor_send = pipelined
    engine_send = redis_session._pipelined
    marks: list[int] = []
    now = time.perf_counter_ns

    def engine_trip(conn: Any, commands: Any, meanwhile: Any = None) -> list[Any]:
        marks.append(now())

        def timed_meanwhile() -> None:
            marks.append(now())
            if meanwhile is not None:
                meanwhile()
            marks.append(now())

        replies = engine_send(conn, commands, timed_meanwhile)
        marks.append(now())
        return replies

    def floor_trip(client: redis.Redis, *commands: tuple[str, ...]) -> list[Any]:
        marks.append(now())
        replies = floor_send(client, *commands)
        marks.append(now())
        return replies

    engine = TARGET.engine()
    ours: list[list[int]] = []
    theirs: list[list[int]] = []
    redis_session._pipelined = engine_trip  # type: ignore[assignment]
    pipelined = floor_trip
    try:
        for i in range(iterations + 3):
            rid = f"ph-{i}-{secrets.token_hex(3)}"
            floor = same_calls(f"{rid}-f")
            marks.clear()
            marks.append(now())
            floor("kept")
            marks.append(now())
            if i >= 3:
                theirs.append(marks[:])
            grant, revoke = TARGET.grant_message(rid), TARGET.revoke_message(rid)
            marks.clear()
            marks.append(now())
            engine.execute(parse_request(grant))
            marks.append(now())
            engine.execute(parse_request(revoke))
            marks.append(now())
            if i >= 3:
                ours.append(marks[:])
    finally:
        redis_session._pipelined = engine_send
        pipelined = floor_send

    def med(rows: list[list[int]], index: int) -> float:
        """The median time from the mark before `index` to it."""
        return statistics.median(row[index] - row[index - 1] for row in rows) / 1000

    # Engine marks: start, then per round trip [packed+sent ... meanwhile ... read] as four
    # marks, with a mark between the grant and the revoke, then the end.
    # Indexes: 0 start; trips at 1-4, 5-8; 9 mid; trips at 10-13, 14-17; 18 end.
    trip_at = (1, 5, 10, 14)
    gap_at = (1, 5, 9, 10, 14, 18)
    floor_at = (1, 3, 5, 7)  # floor marks: 0 start; per trip [start, end]; 9 end
    total_engine = statistics.median(row[-1] - row[0] for row in ours) / 1000
    total_floor = statistics.median(row[-1] - row[0] for row in theirs) / 1000
    # No ratio here: the latency loop's, where every shape and floor takes its turn, is the
    # measure. With only these two sides taking turns the floor runs 30-50 us slower than it
    # does there, the engine about as fast: a ratio from this loop would flatter the engine.
    print(
        f"kept, piece by piece (medians of {iterations}, us): engine {total_engine:.0f}, "
        f"floor 'same calls' {total_floor:.0f}"
    )
    engine_gaps = 0.0
    for name, index in zip(_GAPS, gap_at, strict=True):
        gap = med(ours, index)
        engine_gaps += gap
        print(f"  engine only: {name}: {gap:.0f}")
    for name, e, f in zip(_TRIPS, trip_at, floor_at, strict=True):
        send, meanwhile, read = med(ours, e + 1), med(ours, e + 2), med(ours, e + 3)
        print(
            f"  {name}: engine {send + meanwhile + read:.0f} (send {send:.0f}, meanwhile "
            f"{meanwhile:.0f}, read {read:.0f}), floor {med(theirs, f + 1):.0f}"
        )
    print(f"  the engine's own work outside its round trips: {engine_gaps:.0f}")


def main() -> None:
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    root = connect()
    version = root.info("server")["redis_version"]
    print(machine(f"Redis {version} on 127.0.0.1:6379", f"redis-py {redis.__version__}"))
    cleanup(root)
    try:
        server_costs(root)
        latency(TARGET, iterations, {"writes": writes, "same calls": same_calls})
        breakdown(iterations, "shared")
        breakdown(iterations, "kept")
        phases(max(iterations, 100))
        batch(TARGET, size, batch_floor(root), "DELUSER")
    finally:
        cleanup(root)
        root.close()
        for kept in KEPT:
            kept.close()


if __name__ == "__main__":
    main()
