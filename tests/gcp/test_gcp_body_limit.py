"""The entry file's body limit against a caller who sends no Content-Length: the real
functions-framework server, a chunked body far beyond anything the connector accepts."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gcpharness import ENTRY, Function, _wait_up, free_port

CHUNK = b"x" * 65536


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Function]:
    tmp: Path = tmp_path_factory.mktemp("gcpbody")
    port = free_port()
    log = tmp / "worker.log"
    # No JITC_* settings: a request that gets past the body check answers 500 (misconfigured).
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    process = subprocess.Popen(
        [
            sys.executable, "-m", "functions_framework", "--source", str(ENTRY),
            "--target", "worker", "--host", "127.0.0.1", "--port", str(port),
        ],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp,
    )  # fmt: skip
    function = Function("worker", f"http://127.0.0.1:{port}/", "", process, log)
    _wait_up(function)
    yield function
    process.terminate()
    process.wait(timeout=10)


def _port(function: Function) -> int:
    return int(function.url.rsplit(":", 1)[1].strip("/"))


def test_a_chunked_body_beyond_the_limit_is_refused(worker: Function) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", _port(worker), timeout=30)
    connection.putrequest("POST", "/")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.putheader("Content-Type", "application/json")
    connection.endheaders()
    try:
        for _ in range(64):  # 4 MiB, no Content-Length
            connection.send(b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n")
        connection.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading: also a refusal
    response = connection.getresponse()
    answer = json.loads(response.read())
    assert response.status == 413, answer
    assert answer["field"] == "body"


def test_a_small_chunked_body_still_reaches_the_handler(worker: Function) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", _port(worker), timeout=30)
    connection.putrequest("POST", "/")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    connection.send(b"2\r\n{}\r\n0\r\n\r\n")
    response = connection.getresponse()
    response.read()
    assert response.status == 500  # the handler ran: this server has no settings
