"""The fleet bench's raw-socket load generator (bench/loadgen.py): its HTTP response parser, and
its open and closed loops against a real local server that answers, refuses, stalls, drops
keep-alive connections or answers badly: every failure is counted by kind, none is lost."""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.loadgen import (
    Agent,
    Outcome,
    Response,
    ResponseError,
    closed_loop,
    open_loop,
    run_workers,
    signed_request,
)
from proscribe.core.wire.auth import verify_request
from tests.support.ports import free_tcp_port

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"


# ----------------------------------------------------------------------------- the parser


def _feed_bytewise(raw: bytes) -> Response:
    response = Response()
    for i in range(len(raw)):
        done = response.feed(raw[i : i + 1])
        assert done == (i == len(raw) - 1), i
    return response


def test_a_response_split_anywhere_completes_exactly_at_its_last_byte() -> None:
    response = _feed_bytewise(OK)
    assert (response.status, response.body, response.keep_alive) == (200, b"{}", True)


def test_chunked_body_with_trailers_completes_at_the_end_only() -> None:
    raw = (
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;x=y\r\nbusy\r\n3\r\n!!!\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    response = _feed_bytewise(raw)
    assert response.status == 503


def test_a_body_that_looks_like_the_end_of_chunks_is_not_the_end() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n0\r\n\r\n\r\n"
    response = Response()
    assert not response.feed(raw)  # the 5-byte chunk holds "0\r\n\r\n"; the last chunk is to come
    assert response.feed(b"0\r\n\r\n")


def test_interim_100_continue_is_skipped() -> None:
    response = Response()
    assert not response.feed(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert response.feed(OK)
    assert response.status == 200


def test_body_read_to_the_end_of_the_connection() -> None:
    response = Response()
    assert not response.feed(b"HTTP/1.0 200 OK\r\n\r\nabc")
    assert response.eof() and response.body == b"abc" and not response.keep_alive


def test_truncated_answer_is_not_complete_at_eof() -> None:
    response = Response()
    assert not response.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert not response.eof()


def test_connection_close_is_seen() -> None:
    response = Response()
    assert response.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert not response.keep_alive


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_garbage_is_a_response_error(raw: bytes) -> None:
    with pytest.raises(ResponseError):
        Response().feed(raw)


def test_signed_request_verifies_on_the_servers_side() -> None:
    key = Ed25519PrivateKey.generate()
    body = b'{"hostname": "ws-1"}'
    raw = signed_request(key, "agent-1", "/api/v1/heartbeat", body, "127.0.0.1:1")
    head, _, sent_body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /api/v1/heartbeat HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert sent_body == body and headers["Content-Length"] == str(len(body))
    verify_request(key.public_key(), headers, "POST", "/api/v1/heartbeat", sent_body)
    again = signed_request(key, "agent-1", "/api/v1/heartbeat", body, "127.0.0.1:1")
    assert again != raw  # a fresh nonce per request


# ----------------------------------------------------------------------------- a real server


class _Handler(socketserver.StreamRequestHandler):
    """Reads requests (Content-Length bodies) and answers by the path's first word: ``ok``,
    ``busy`` (503), ``stall`` (never), ``garbage``, ``once`` (answers, then closes without
    saying so: a keep-alive connection dropped under the client)."""

    requests: ClassVar[list[str]] = []

    def handle(self) -> None:
        while True:
            line = self.rfile.readline()
            if not line:
                return
            path = line.split()[1].decode()
            length = 0
            while (header := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = header.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            self.rfile.read(length)
            self.requests.append(path)
            kind = path.strip("/").split("/")[0]
            if kind == "stall":
                time.sleep(3)
                return
            if kind == "garbage":
                self.wfile.write(b"nonsense\r\n\r\n")
                return
            if kind == "busy":
                self.wfile.write(b"HTTP/1.1 503 Busy\r\ncontent-length: 4\r\n\r\nbusy")
                continue
            self.wfile.write(OK)
            if kind == "once":
                return


@pytest.fixture
def server() -> Iterator[int]:
    _Handler.requests = []
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _get(path: str) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode()


def test_open_loop_sends_on_schedule_and_counts_each_kind(server: int) -> None:
    start = time.monotonic() + 0.05
    schedule = [(0.01 * i, _get("/ok")) for i in range(20)]
    schedule += [(0.3, _get("/busy")), (0.31, _get("/garbage"))]
    out = open_loop(server, schedule, start, abandon_s=10)
    assert out.statuses == {200: 20, 503: 1}
    assert out.failures == {"HTTP 503": 1, "ResponseError": 1}
    assert len(out.latencies) == 21 and len(out.lags) == 22
    assert max(out.lags) < 0.05  # none left late by the loop itself
    assert time.monotonic() - start >= 0.31  # the schedule was kept, not sent all at once


def test_open_loop_abandons_what_is_far_behind_and_times_out_what_stalls(server: int) -> None:
    start = time.monotonic()
    schedule = [(-20.0, _get("/ok")), (0.0, _get("/stall")), (0.0, _get("/ok"))]
    out = open_loop(server, schedule, start, abandon_s=10, timeout_s=0.5)
    assert out.failures == {"abandoned": 1, "timeout": 1}
    assert out.statuses == {200: 1}
    assert "/ok" in _Handler.requests and _Handler.requests.count("/ok") == 1  # not sent


def test_open_loop_counts_refused_connections() -> None:
    port = free_tcp_port()  # nothing listens there
    out = open_loop(port, [(0.0, _get("/ok"))] * 3, time.monotonic(), abandon_s=10)
    assert out.failures == {"ConnectionRefusedError": 3}


def test_a_plain_os_error_is_named_by_its_errno() -> None:
    from bench.loadgen import _error_kind, _os_error

    assert _error_kind(_os_error(99)) == "EADDRNOTAVAIL"
    assert _error_kind(_os_error(111)) == "ConnectionRefusedError"
    assert _error_kind(TimeoutError()) == "timeout"


def _agent(paths: list[str]) -> Agent:
    return Agent([_get(p) for p in paths], lambda i: _get(paths[i] + "?again"))


def test_closed_loop_keeps_one_connection_and_answers_in_order(server: int) -> None:
    out = closed_loop(server, [_agent([f"/ok/{i}" for i in range(5)]), _agent(["/busy", "/ok"])])
    assert out.statuses == {200: 6, 503: 1} and out.failures == {"HTTP 503": 1}
    assert [p for p in _Handler.requests if p.startswith("/ok/")] == [f"/ok/{i}" for i in range(5)]


def test_closed_loop_resends_once_signed_afresh_when_a_kept_connection_drops(
    server: int,
) -> None:
    # "/once" answers and then drops the connection without "Connection: close": the next
    # request finds it closed, is sent again on a new connection (re-signed), and answered.
    out = closed_loop(server, [_agent(["/once", "/ok/a", "/ok/b"])])
    assert out.statuses == {200: 3} and not out.failures, out
    assert _Handler.requests.count("/ok/a?again") == 1


def test_closed_loop_a_request_that_fails_on_a_new_connection_is_not_retried(
    server: int,
) -> None:
    out = closed_loop(server, [_agent(["/garbage", "/ok"])])
    assert out.failures == {"ResponseError": 1} and out.statuses == {200: 1}
    assert _Handler.requests == ["/garbage", "/ok"]


def test_workers_start_together_and_report_their_own_cpu(server: int) -> None:
    marks: list[str] = []

    def prepare(n: int) -> list[tuple[float, bytes]]:
        sum(i * i for i in range(200_000))  # visible preparation CPU
        return [(0.0, _get(f"/ok/{n}"))]

    def send(schedule: list[tuple[float, bytes]], start: float) -> Outcome:
        return open_loop(server, schedule, start, abandon_s=10)

    start, outs = run_workers(
        prepare, send, [1, 2], lambda: marks.append("start"), lambda: marks.append("end")
    )
    assert marks == ["start", "end"]
    assert [o.statuses for o in outs] == [{200: 1}, {200: 1}]
    assert all(o.prep_cpu > 0.005 and o.end >= start for o in outs)


def test_a_failing_worker_is_one_clear_error() -> None:
    def prepare(n: int) -> None:
        raise ValueError("no keys")

    with pytest.raises(RuntimeError, match="no keys"):
        run_workers(prepare, lambda w, s: None, [1], lambda: None, lambda: None)  # type: ignore[arg-type,return-value]


def test_every_socket_is_closed_when_the_loops_return(server: int) -> None:
    def client_sockets() -> int:  # established TCP sockets whose far end is the server
        rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        return sum(1 for row in rows if row[2].endswith(f":{server:04X}") and row[3] == "01")

    open_loop(server, [(0.0, _get("/ok"))] * 10, time.monotonic(), abandon_s=10)
    closed_loop(server, [_agent(["/ok", "/once", "/ok"])])
    assert client_sockets() == 0
