"""Behind a proxy that reuses its connections to the replicas (haproxy's ``http-reuse``), a
replica must not close an idle connection first: a request the proxy sends on it at that moment
is lost as a 502. A real ``collector serve`` with ``behind_proxy = true`` keeps an idle
connection past uvicorn's 5 s; without a proxy it closes it as before."""

from __future__ import annotations

import contextlib
import re
import socket
import time

import pytest

from tests.support.devserver import CollectorProcess

pytestmark = pytest.mark.slow


def _get(sock: socket.socket) -> bytes:
    """One request and its whole answer, body included (a body left unread would be taken for
    the start of the next answer); what arrived if the server closed the connection first."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    assert length is not None, head
    while len(body) < int(length.group(1)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.fixture(scope="module")
def after_idle(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, bytes]:
    """The answer on a connection left idle past uvicorn's 5 s, for a collector with and one
    without ``behind_proxy`` (both servers idle through the same wait); b"" if it was closed."""
    tmp_path = tmp_path_factory.mktemp("keepalive")
    with contextlib.ExitStack() as stack:
        socks = {}
        for behind_proxy in (True, False):
            toml = "behind_proxy = true\n" if behind_proxy else ""
            folder = tmp_path / f"srv-{behind_proxy}"
            server = stack.enter_context(CollectorProcess(folder, server_toml=toml))
            sock = stack.enter_context(
                socket.create_connection(("127.0.0.1", server.port), timeout=10)
            )
            assert _get(sock).startswith(b"HTTP/1.1 200")
            socks[behind_proxy] = sock
        time.sleep(6.5)  # idle past uvicorn's default keep-alive (5 s)
        answers = {}
        for behind_proxy, sock in socks.items():
            try:
                answers[behind_proxy] = _get(sock)
            except OSError:
                answers[behind_proxy] = b""
    return answers


@pytest.mark.parametrize(("behind_proxy", "kept"), [(True, True), (False, False)])
def test_an_idle_connection_outlives_uvicorns_five_seconds_only_behind_a_proxy(
    after_idle: dict[bool, bytes], behind_proxy: bool, kept: bool
) -> None:
    assert after_idle[behind_proxy].startswith(b"HTTP/1.1 200") is kept
