"""Revocation lag of `jitc serve`: how long after their expiry grants that expire together are
revoked, with 1, 2 and 4 workers (same run), and after a kill -9 + restart.

Each scenario starts a real `jitc serve` process on the local PostgreSQL with its own journal,
integration and role prefix, sends signed grants that all expire at the same moment, and reads
`revocation_lag_seconds` (revoke done - recorded expiry) from the outcomes serve writes. The
restart scenario kills serve with SIGKILL once the grants are made, starts it again at once on
the same journal, and reports when its timers were back and whether every accepted request got
its outcome. A burst scenario kills serve while it is still accepting and working.

    python bench/bench_serve_lag.py [N ...]          (default: 20 200)
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from _common import drop_roles, machine

from jitc.models import derive_grant_id
from jitc.sealing import box_keypair
from jitc.signing import sign, signing_keypair

ROOT = Path(__file__).resolve().parent.parent
PRIVATE, PUBLIC = signing_keypair()
BOX_PUBLIC = box_keypair()[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    def __init__(self, folder: Path, integration: str, prefix: str, workers: int) -> None:
        self.folder, self.integration, self.workers = folder, integration, workers
        self.port = _port()
        self.events = folder / "events.jsonl"
        self.journal = folder / "journal.sqlite3"
        self.catalog = folder / "catalog.yaml"
        self.catalog.write_text(
            yaml.safe_dump(
                {
                    "control_plane": {"keys": {"cp": PUBLIC}, "max_skew": "5m"},
                    "integrations": {
                        integration: {
                            "kind": "postgresql",
                            "connection": {
                                "host": "127.0.0.1",
                                "dbname": "test",
                                "user": "postgres",
                                "role_prefix": prefix,
                            },
                            "max_duration": "8h",
                            "permissions": {
                                "read-only": {"template": "read-only", "resources": ["public"]}
                            },
                        }
                    },
                }
            )
        )
        self.proc: subprocess.Popen[str] | None = None
        self.started = 0.0
        self.timers_line = ""

    def start(self) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jitc.cli",
                "serve",
                "--catalog",
                str(self.catalog),
                "--port",
                str(self.port),
                "--events",
                str(self.events),
                "--journal",
                str(self.journal),
                "--workers",
                str(self.workers),
                "--sweep-interval",
                "3600",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=self.folder,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "timer(s) rebuilt from the targets" in line:
                launched = time.monotonic() - self.started
                self.timers_line = f"{line.strip()} ({launched:.2f}s after the process launched)"
                break

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if self.proc.stdout is not None:
            self.proc.stdout.read()
        self.proc.wait(timeout=120)

    def send(self, request_id: str, expires_at: datetime) -> int:
        body = json.dumps(
            {
                "request_id": request_id,
                "action": "grant",
                "integration": self.integration,
                "permission": "read-only",
                "resources": ["public"],
                "identity": {"email": "bench@example.com", "public_key": BOX_PUBLIC},
                "expires_at": expires_at.isoformat(),
            }
        ).encode()
        envelope = sign(body, PRIVATE, "cp")
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/requests",
            data=body,
            method="POST",
            headers=envelope.headers(),
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0  # the process was killed mid-request: not accepted

    def outcomes(self) -> list[dict[str, Any]]:
        if not self.events.exists():
            return []
        return [
            json.loads(line)["outcome"]
            for line in self.events.read_text().splitlines()
            if line.startswith('{"outcome"')
        ]

    def wait(self, want: set[str], status: str, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [o for o in self.outcomes() if o["request_id"] in want and o["status"] == status]
            if {o["request_id"] for o in got} >= want:
                return got
            time.sleep(0.1)
        raise SystemExit(f"timed out waiting for {status}: {len(got)} of {len(want)}")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _scenario(n: int, workers: int, restart: bool = False) -> dict[str, Any]:
    run = secrets.token_hex(3)
    integration, prefix = f"bench-serve-{run}", f"bsl{run}_"
    with tempfile.TemporaryDirectory(prefix="jitc-bench-serve-") as folder:
        serve = Serve(Path(folder), integration, prefix, workers)
        try:
            serve.start()
            # All expire at one moment, far enough ahead for every grant to be made first.
            expires = datetime.now(UTC) + timedelta(seconds=4 + n * 0.06 + (6 if restart else 0))
            ids = [f"lag-{run}-{i}" for i in range(n)]
            accepted = [rid for rid in ids if serve.send(rid, expires) == 202]
            serve.wait(set(accepted), "granted", timeout=n * 0.5 + 30)
            made_in_time = datetime.now(UTC) < expires
            result: dict[str, Any] = {"accepted": len(accepted), "made_before_expiry": made_in_time}
            if restart:
                serve.stop(signal.SIGKILL)
                serve.start()
                result["timers"] = serve.timers_line
            want = {f"expire-{derive_grant_id(integration, rid)}" for rid in accepted}
            wait_for = (expires - datetime.now(UTC)).total_seconds() + n * 0.5 + 60
            revokes = serve.wait(want, "revoked", timeout=wait_for)
            lags = [float(o["revocation_lag_seconds"]) for o in revokes]
            result.update(p50=statistics.median(lags), p99=_pct(lags, 0.99), max=max(lags))
            serve.stop()
            return result
        finally:
            if serve.proc is not None and serve.proc.poll() is None:
                serve.proc.kill()
            drop_roles(prefix)


def _burst(n: int) -> dict[str, Any]:
    """kill -9 while accepting and working; every 202 must end in an outcome after restart."""
    run = secrets.token_hex(3)
    integration, prefix = f"bench-burst-{run}", f"bsb{run}_"
    with tempfile.TemporaryDirectory(prefix="jitc-bench-serve-") as folder:
        serve = Serve(Path(folder), integration, prefix, 4)
        try:
            serve.start()
            expires = datetime.now(UTC) + timedelta(hours=1)
            statuses: dict[str, int] = {}

            def send(rid: str) -> None:
                statuses[rid] = serve.send(rid, expires)

            threads = [threading.Thread(target=send, args=(f"burst-{run}-{i}",)) for i in range(n)]
            for thread in threads:
                thread.start()
            while sum(1 for s in statuses.values() if s == 202) < n // 2:
                time.sleep(0.005)
            serve.stop(signal.SIGKILL)
            for thread in threads:
                thread.join()
            accepted = {rid for rid, s in statuses.items() if s == 202}
            done_before = {o["request_id"] for o in serve.outcomes()} & accepted
            serve.start()
            serve.wait(accepted, "granted", timeout=n * 0.5 + 60)
            serve.stop()
            return {
                "sent": n,
                "accepted": len(accepted),
                "done_before_kill": len(done_before),
                "with_outcome_after_restart": len(accepted),
            }
        finally:
            if serve.proc is not None and serve.proc.poll() is None:
                serve.proc.kill()
            drop_roles(prefix)


def main(sizes: list[int]) -> None:
    print(machine())
    for n in sizes:
        runs = {workers: _scenario(n, workers=workers) for workers in (1, 2, 4)}
        figures = "; ".join(
            f"{w} worker{'s' if w > 1 else ''} p50 {r['p50']:.2f}s p99 {r['p99']:.2f}s"
            for w, r in runs.items()
        )
        in_time = all(r["made_before_expiry"] for r in runs.values())
        print(
            f"{n} grants expiring at once: {figures}; p50 1 worker / 2 workers "
            f"{runs[1]['p50'] / runs[2]['p50']:.1f}x, / 4 workers "
            f"{runs[1]['p50'] / runs[4]['p50']:.1f}x (all made before expiry: {in_time})",
            flush=True,
        )
    n = max(sizes)
    after = _scenario(n, workers=4, restart=True)
    print(
        f"{n} grants, kill -9 after granting, restart: {after['timers']}; "
        f"lag p50 {after['p50']:.2f}s p99 {after['p99']:.2f}s; "
        f"accepted {after['accepted']}, all revoked",
        flush=True,
    )
    burst = _burst(n)
    print(
        f"kill -9 during a burst of {burst['sent']} grants: {burst['accepted']} accepted, "
        f"{burst['done_before_kill']} done before the kill, "
        f"{burst['with_outcome_after_restart']} with their outcome after the restart",
        flush=True,
    )


if __name__ == "__main__":
    os.environ.pop("JITC_CATALOG", None)
    main([int(a) for a in sys.argv[1:]] or [20, 200])
