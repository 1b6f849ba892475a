"""The entry module's garbage collection over a cold start: rare young collections while the
connector loads and serves its first request, then one collection, what survived frozen, and
the usual thresholds again, whatever the first request's answer. In a process of its own: it
sets the interpreter's collector."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MAIN = Path(__file__).resolve().parents[2] / "gcp" / "main.py"
PROBE = """
import gc, io, json, sys
usual = gc.get_threshold()
import functions_framework
app = functions_framework.create_app(target="intake", source=sys.argv[1])
loaded = gc.get_threshold()
frozen = gc.get_freeze_count()
# Cyclic garbage the cold start leaves, as the first request's libraries leave some.
import weakref
class Node:
    pass
nodes = []
for _ in range(50):
    a, b = Node(), Node()
    a.other, b.other = b, a
    nodes += [weakref.ref(a), weakref.ref(b)]
del a, b
left = sum(ref() is not None for ref in nodes)
def serve(length):
    environ = {
        "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b"x" * int(length)),
        "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": False,
        "wsgi.run_once": False, "CONTENT_LENGTH": length,
    }
    started = []
    body = b"".join(app(environ, lambda line, headers, exc_info=None: started.append(line)))
    return int(started[0].split()[0]), body.decode()[:200]
status, body = serve(sys.argv[2])
after = gc.get_threshold()
print(json.dumps({
    "usual": usual, "loaded": loaded, "after": after, "status": status, "body": body,
    "left": left, "alive": sum(ref() is not None for ref in nodes),
    "frozen_at_load": frozen, "frozen_after": gc.get_freeze_count(),
    "second": serve(sys.argv[2])[0], "after_second": gc.get_threshold(),
}))
"""


@pytest.mark.parametrize("length", ["0", str(1024 * 1024)])
def test_cold_start_collects_rarely_then_once_then_as_usual(length: str) -> None:
    """A body too large (413, refused before it is read) or a deployment without its settings
    (500): the cold start ends with the first answer, whatever it is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JITC_", "GOOGLE_", "GCE_"))}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(MAIN), length],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["status"] == (500 if length == "0" else 413), seen["body"]
    usual = seen["usual"]
    assert seen["loaded"] == [100_000, *usual[1:]]
    # The first answer ended the cold start: the garbage it left was collected, the rest frozen.
    assert seen["after"] == usual and seen["after_second"] == usual
    assert seen["left"] == 100 and seen["alive"] == 0
    assert seen["frozen_after"] > seen["frozen_at_load"] > 0
    assert seen["second"] == seen["status"]


OVERLAP = """
import gc, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("main", sys.argv[1])
main = importlib.util.module_from_spec(spec)
spec.loader.exec_module(main)
cold = main._cold_start
seen = [gc.get_threshold()[0]]
cold.begin(); cold.begin()  # two requests served at once
cold.end()                   # the first ends: the other's objects are not frozen yet
seen += [cold.over, gc.get_threshold()[0]]
cold.end()                   # the last one ends the cold start
seen += [cold.over, list(gc.get_threshold()) == list(cold.thresholds)]
cold.begin(); cold.end()     # and later requests leave it as it is
seen += [cold.over, list(gc.get_threshold()) == list(cold.thresholds)]
print(json.dumps(seen))
"""


def test_the_cold_start_ends_when_no_request_is_being_served() -> None:
    """With more than one request per instance, the first to end must not freeze what another
    is still using: the last one being served ends the cold start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JITC_", "GOOGLE_", "GCE_"))}
    out = subprocess.run(
        [sys.executable, "-c", OVERLAP, str(MAIN)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [
        100_000, False, 100_000, True, True, True, True,
    ]  # fmt: skip
