"""Worker throughput on the real PostgreSQL: `jitc.aws.worker.handler` on SQS batches of 10 and 100
grants, then of their expiry revokes, with moto's server (threaded, loopback) as Secrets
Manager and EventBridge Scheduler, next to the engine alone on the same batches (no AWS at all).

Each batch is one handler invocation, as Lambda makes it from an SQS poll (records built the
way the event source mapping builds them); messages a transient server race failed are handed
back in a further invocation, as the queue would, and the retries are counted. One warm-up
batch first, so no cold start is in the figures; `repeats` batches per size, medians.

    python bench/bench_aws_worker.py [repeats]
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
import psycopg  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402
from psycopg import sql  # noqa: E402

DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
RUN = uuid.uuid4().hex[:4]
PREFIX = f"bawx{RUN}_"
INTEGRATION = f"bench-aws-{RUN}"


class Context:
    function_name = "jitc-worker"
    function_version = "$LATEST"
    memory_limit_in_mb = 128
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:jitc-worker"
    log_group_name = "/aws/lambda/jitc-worker"
    log_stream_name = "bench"

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def record(body: str, group: str) -> dict[str, Any]:
    return {
        "messageId": str(uuid.uuid4()),
        "receiptHandle": "bench",
        "body": body,
        "attributes": {"MessageGroupId": group, "ApproximateReceiveCount": "1",
                       "SentTimestamp": str(int(time.time() * 1000))},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:jitc-requests.fifo",
        "awsRegion": "us-east-1",
    }  # fmt: skip


def invoke(handler: Any, records: list[dict[str, Any]]) -> tuple[float, int]:
    """Seconds until every record succeeded, and how many redeliveries that took."""
    start = time.perf_counter()
    pending, retries = records, 0
    while pending:
        failed = {
            f["itemIdentifier"]
            for f in handler({"Records": pending}, Context())["batchItemFailures"]
        }
        pending = [r for r in pending if r["messageId"] in failed]
        retries += len(pending)
        if retries > 10 * len(records):
            raise RuntimeError("the worker keeps failing; is PostgreSQL up?")
    return time.perf_counter() - start, retries


def run_engine(engine: Any, work: list[Any]) -> float:
    """Seconds until every item succeeded; failed items (transient races) run again."""
    start = time.perf_counter()
    for _ in range(10):
        outcomes = engine.execute_batch(work)
        work = [w for w, o in zip(work, outcomes, strict=True) if o.status == "failed"]
        if not work:
            return time.perf_counter() - start
    raise RuntimeError(f"the engine keeps failing: {outcomes[0].message}")


def drop_roles() -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        for (name,) in conn.execute(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (PREFIX,)
        ).fetchall():
            for _ in range(5):
                try:
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
                    break
                except psycopg.errors.InternalError:
                    time.sleep(0.1)


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update({
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "WARNING",
        "POWERTOOLS_METRICS_DISABLED": "true",
    })  # fmt: skip
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from jitc.aws import runtime, worker
    from jitc.engine import Engine
    from jitc.local import MemorySink, NullScheduler
    from jitc.messages import decode_message, envelope_message, expiry_message
    from jitc.sealing import box_keypair
    from jitc.signing import sign, signing_keypair

    session = boto3.session.Session()
    sqs, sched, sm = (session.client(s) for s in ("sqs", "scheduler", "secretsmanager"))
    queue_url = sqs.create_queue(QueueName="jitc-requests.fifo", Attributes={"FifoQueue": "true"})[
        "QueueUrl"
    ]
    sched.create_schedule_group(Name="jitc-expiry")
    sm.create_secret(
        Name="jitc/pg-admin", SecretString=json.dumps({"password": "unused-trust-auth"})
    )
    sm.create_secret(Name="jitc/label", SecretString=json.dumps({"key": "bench-label-key-" * 2}))
    private, public = signing_keypair()
    box_public = box_keypair()[1]
    folder = tempfile.mkdtemp()
    catalog_path = Path(folder) / "catalog.yaml"
    catalog_path.write_text(json.dumps({
        "control_plane": {"keys": {"cp": public}},
        "connector": {"label_key": "aws-sm:jitc/label#key"},
        "integrations": {INTEGRATION: {
            "kind": "postgresql",
            "connection": {
                "host": "127.0.0.1", "dbname": "test", "user": "postgres", "role_prefix": PREFIX,
            },
            "credentials": "aws-sm:jitc/pg-admin#password",
            "permissions": {"read": {"template": "read-only", "resources": ["public"]}},
        }},
    }))  # fmt: skip
    os.environ.update({
        "JITC_CATALOG_PATH": str(catalog_path), "JITC_QUEUE_URL": queue_url,
        "JITC_QUEUE_ARN": "arn:aws:sqs:us-east-1:123456789012:jitc-requests.fifo",
        "JITC_SCHEDULE_GROUP": "jitc-expiry",
        "JITC_SCHEDULER_ROLE_ARN": "arn:aws:iam::123456789012:role/jitc-scheduler",
    })  # fmt: skip
    runtime.reset()

    def grants(n: int) -> list[tuple[str, str]]:
        out = []
        for _ in range(n):
            rid = f"b-{uuid.uuid4().hex[:12]}"
            body = json.dumps({
                "request_id": rid, "action": "grant", "integration": INTEGRATION,
                "permission": "read",
                "resources": ["public"], "duration": "1h",
                "identity": {"email": "bench@example.com", "public_key": box_public},
            }).encode()  # fmt: skip
            from jitc.models import derive_grant_id

            out.append(
                (envelope_message(sign(body, private, "cp")), derive_grant_id(INTEGRATION, rid))
            )
        return out

    results: dict[str, list[float]] = {}
    retries: dict[str, int] = {}
    try:
        warm = grants(10)
        invoke(worker.handler, [record(m, g) for m, g in warm])
        invoke(worker.handler, [record(expiry_message(g, INTEGRATION), g) for _, g in warm])
        for size in (10, 100):
            for _ in range(repeats):
                batch = grants(size)
                took, r = invoke(worker.handler, [record(m, g) for m, g in batch])
                results.setdefault(f"worker grant x{size}", []).append(size / took)
                retries[f"worker grant x{size}"] = retries.get(f"worker grant x{size}", 0) + r
                took, r = invoke(
                    worker.handler, [record(expiry_message(g, INTEGRATION), g) for _, g in batch]
                )
                results.setdefault(f"worker revoke x{size}", []).append(size / took)
                retries[f"worker revoke x{size}"] = retries.get(f"worker revoke x{size}", 0) + r
                # The same batch through the engine alone: no AWS, no handler.
                engine = Engine(
                    runtime.catalog(), runtime.engine().secrets, NullScheduler(), MemorySink()
                )
                batch = grants(size)
                work = [decode_message(m, engine.catalog, time.time()) for m, _ in batch]
                took = run_engine(engine, work)
                results.setdefault(f"engine grant x{size}", []).append(size / took)
                revokes = [
                    decode_message(expiry_message(g, INTEGRATION), engine.catalog, time.time())
                    for _, g in batch
                ]
                took = run_engine(engine, revokes)
                results.setdefault(f"engine revoke x{size}", []).append(size / took)
    finally:
        drop_roles()
        server.stop()

    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    print(f"machine: {os.cpu_count()} cpu {cpu!r}, Python {platform.python_version()}, "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")  # fmt: skip
    print(f"repeats: {repeats} batches per size, medians of messages/s")
    for size in (10, 100):
        for action in ("grant", "revoke"):
            w = statistics.median(results[f"worker {action} x{size}"])
            e = statistics.median(results[f"engine {action} x{size}"])
            print(
                f"batch {size:3} {action:6}: worker {w:6.1f}/s, engine alone {e:6.1f}/s, "
                f"worker/engine {w / e:4.2f}, redeliveries {retries[f'worker {action} x{size}']}"
            )


if __name__ == "__main__":
    main()
