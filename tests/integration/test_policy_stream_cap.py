"""An endless policy download from a (hostile) HTTP server stops at the 1 MiB cap."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from proscribe.core.errors import PolicyRejected
from proscribe.core.policy.bundle import MAX_POLICY_BYTES, read_stream_capped


class _Endless(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    sent = 0

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")  # no length: it never ends
        self.end_headers()
        chunk = b"#" * 65536
        try:
            while True:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                type(self).sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def endless_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v1/policy"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_endless_http_body_is_aborted_at_the_cap(endless_server: str) -> None:
    session = requests.Session()
    session.trust_env = False
    started = time.monotonic()
    with (
        session.get(endless_server, stream=True, timeout=10) as response,
        pytest.raises(PolicyRejected, match="reading stopped at the cap"),
    ):
        read_stream_capped(response.iter_content(65536), MAX_POLICY_BYTES, endless_server)
    session.close()
    # wall clock, generous: the read stopped at the cap instead of streaming on until the
    # test's timeout (the server never stops sending)
    assert time.monotonic() - started < 10
