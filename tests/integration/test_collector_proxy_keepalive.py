"""Behind a proxy that reuses its connections to the replicas (haproxy's ``http-reuse``), a
replica must not close an idle connection first: a request the proxy sends on it at that moment
is lost as a 502. A real ``collector serve`` with ``behind_proxy = true`` keeps an idle
connection past uvicorn's 5 s; without a proxy it closes it as before."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.support.devserver import CollectorProcess

pytestmark = pytest.mark.slow


def _get(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


@pytest.mark.parametrize(("behind_proxy", "kept"), [(True, True), (False, False)])
def test_an_idle_connection_outlives_uvicorns_five_seconds_only_behind_a_proxy(
    tmp_path: Path, behind_proxy: bool, kept: bool
) -> None:
    toml = "behind_proxy = true\n" if behind_proxy else ""
    with CollectorProcess(tmp_path / "srv", server_toml=toml) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            assert _get(sock).startswith(b"HTTP/1.1 200")
            time.sleep(6.5)  # idle past uvicorn's default keep-alive (5 s)
            try:
                answer = _get(sock)
            except OSError:
                answer = b""
        assert answer.startswith(b"HTTP/1.1 200") is kept
