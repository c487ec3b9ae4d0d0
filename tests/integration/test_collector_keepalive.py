"""A bug on a dashboard page, under a real uvicorn with a keep-alive client (issue 15): the page
answers an HTML 500 (not JSON), the traceback is logged once, and the next request on the same
connection is answered — on main the server closed the connection under it (Starlette
re-raises after its 500, and uvicorn then drops the connection and logs a second traceback).

The bug is a route this test adds to the real app: no code path of the product should raise,
so one is made to."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from proscribe.collector.app import create_app
from proscribe.collector.config import settings_from_mapping
from tests.support.ports import free_tcp_port

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    app = create_app(settings_from_mapping({"database": {"url": f"sqlite:///{tmp_path / 'k.db'}"}}))

    def broken_page() -> None:
        raise RuntimeError("a bug behind a dashboard page")

    app.add_api_route("/hosts-broken", broken_page, include_in_schema=False)
    port = free_tcp_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info", ws="none")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        running.should_exit = True
        thread.join(timeout=15)


def _exchange(sock: socket.socket, path: str) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on an open connection; the whole response (Content-Length)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before the answer to {path}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed in the answer to {path}")
        body += chunk
    return status, headers, body


def test_a_page_bug_is_an_html_500_and_the_connection_lives_on(
    server: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        status, headers, body = _exchange(sock, "/hosts-broken")
        assert status == 500
        assert headers["content-type"].startswith("text/html")
        assert b"a bug behind" not in body and b"Traceback" not in body
        assert headers["x-content-type-options"] == "nosniff"
        assert headers.get("connection") != "close"
        again: Any = _exchange(sock, "/login")  # same socket, same connection
        assert again[0] == 200
        assert b"Sign in" in again[2] or b"sign in" in again[2].lower()
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]
