"""The fleet bench's load generator: cheap enough that the machine's CPU goes to what it measures.

Each worker process runs one ``epoll`` loop over raw non-blocking sockets and sends request bytes
built and signed before its step's clock starts (``signed_request``): what is left per request
on the clock is a socket, a ``connect``, one ``send``, the reads of the answer and a ``close`` (or,
keep-alive, only the ``send`` and the reads). Two shapes:

- :func:`open_loop`: requests leave on their schedule whether or not earlier ones have answered,
  each on a new TCP connection (an agent's once-a-minute heartbeat finds no keep-alive connection
  open); one more than ``abandon_s`` behind its schedule is counted failed instead of sent.
- :func:`closed_loop`: each agent sends its requests one after the other on one keep-alive
  connection (the reporter draining its spool).

Latency is from the request's socket being made to the last byte of its answer. Failures are
counted by kind (``HTTP 503``, ``timeout``, ``ConnectionRefusedError``, ``abandoned``, …).
:func:`run_workers` forks the workers, waits until each has built its requests, then gives them
one start time, so the bench can read its CPU meters around the sending only.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import select
import socket
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proscribe.core.wire.auth import sign_request

RECV_BYTES = 65_536
TIMEOUT_CHECK_S = 0.5  # how often in-flight requests are checked against their timeout


def signed_request(
    key: Ed25519PrivateKey, agent_id: str, path: str, body: bytes, host: str
) -> bytes:
    """The whole ``POST`` as bytes, signed now (fresh nonce, current time) as the agent's reporter
    signs it; the server accepts the time for ``MAX_SKEW_SECONDS`` (300 s) either way."""
    headers = sign_request(key, agent_id, "POST", path, body)
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


class ResponseError(Exception):
    """The bytes received are not an HTTP/1.1 response this parser understands."""


class Response:
    """One HTTP/1.1 response read incrementally: :meth:`feed` each chunk received, then
    :meth:`eof` if the peer closed. Bodies framed by ``Content-Length``, ``chunked`` or the end of
    the connection; ``1xx`` interim answers are skipped."""

    __slots__ = ("_chunked", "_head_end", "_length", "buf", "done", "keep_alive", "status")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.status = 0
        self.keep_alive = True
        self.done = False
        self._head_end = -1
        self._length: int | None = None
        self._chunked = False

    def feed(self, data: bytes) -> bool:
        """Add received bytes; True once the response is complete."""
        self.buf += data
        while self._head_end < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            if not self._head(end):  # a 1xx answer: the real one follows
                del self.buf[: end + 4]
        self.done = self._body_complete()
        return self.done

    def eof(self) -> bool:
        """The peer closed: True if that completes the response (a body read to the end)."""
        self.keep_alive = False
        if self._head_end >= 0 and self._length is None and not self._chunked:
            self.done = True
        return self.done

    @property
    def body(self) -> bytes:
        return bytes(self.buf[self._head_end + 4 :]) if self._head_end >= 0 else b""

    def _head(self, end: int) -> bool:
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ResponseError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
        status = int(parts[1])
        if 100 <= status < 200:
            return False
        self.status = status
        self.keep_alive = parts[0] == "HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                if not value.isdigit():
                    raise ResponseError(f"bad Content-Length {value[:20]!r}")
                self._length = int(value)
            elif name == "transfer-encoding":
                self._chunked = value.endswith("chunked")
            elif name == "connection":
                self.keep_alive = "close" not in value and (
                    self.keep_alive or "keep-alive" in value
                )
        if status in (204, 304):
            self._length = 0
        self._head_end = end
        return True

    def _body_complete(self) -> bool:
        start = self._head_end + 4
        if self._chunked:
            return _chunks_complete(self.buf, start)
        if self._length is None:
            return False  # read to the end of the connection
        return len(self.buf) - start >= self._length


def _chunks_complete(buf: bytearray, pos: int) -> bool:
    """Whether ``buf[pos:]`` holds a whole chunked body (trailers included)."""
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return False
        size_text = bytes(buf[pos:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as err:
            raise ResponseError(f"bad chunk size {size_text[:20]!r}") from err
        if size == 0:
            return buf.find(b"\r\n\r\n", line_end) >= 0
        pos = line_end + 2 + size + 2
        if len(buf) < pos:
            return False


# ----------------------------------------------------------------------------- results


@dataclass
class Outcome:
    """What one worker saw: latencies (s) of the answered requests, send lags behind schedule
    (s), HTTP statuses of answers, failures by kind, a few example failures, and its CPU."""

    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    prep_cpu: float = 0.0  # building and signing the requests, before the clock
    send_cpu: float = 0.0  # from the start time to the last answer
    end: float = 0.0  # monotonic time of its last answer

    def fail(self, kind: str, example: str = "") -> None:
        self.failures[kind] += 1
        if example and len(self.examples) < 5:
            self.examples.append(f"{kind}: {example}")


@dataclass
class _Flight:
    sock: socket.socket
    payload: bytes
    started: float
    due: float
    sent: int = 0
    response: Response = field(default_factory=Response)
    connected: bool = False


def _error_kind(err: BaseException) -> str:
    """``timeout``, the exception's class (``ConnectionRefusedError``), or for a plain OSError
    its errno's name (``EADDRNOTAVAIL``: out of ephemeral ports)."""
    if isinstance(err, TimeoutError):
        return "timeout"
    if type(err) is OSError and err.errno in errno.errorcode:
        return errno.errorcode[err.errno]
    return type(err).__name__


def _os_error(code: int) -> OSError:
    """The exception for an errno (``OSError`` picks the subclass: ConnectionRefusedError …)."""
    return OSError(code, os.strerror(code))


# ----------------------------------------------------------------------------- open loop


class _OpenLoop:
    """One worker's open-loop run: a socket per request, all on one epoll."""

    def __init__(self, port: int, timeout_s: float, out: Outcome) -> None:
        self.addr = ("127.0.0.1", port)
        self.timeout_s = timeout_s
        self.out = out
        self.poller = select.epoll()
        self.flights: dict[int, _Flight] = {}

    def launch(self, payload: bytes, due: float) -> None:
        started = time.monotonic()
        self.out.lags.append(max(0.0, started - due))
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as err:  # out of descriptors (EMFILE): this request fails, not the run
            self.out.fail(_error_kind(err), str(err))
            return
        sock.setblocking(False)
        flight = _Flight(sock, payload, started, due)
        code = sock.connect_ex(self.addr)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.out.fail(_error_kind(_os_error(code)))
            return
        mask = select.EPOLLOUT
        if code == 0:  # connected at once (loopback often is): send without a poll round
            flight.connected = True
            try:
                flight.sent = sock.send(payload)
            except OSError as err:
                sock.close()
                self.out.fail(_error_kind(err), str(err))
                return
            if flight.sent == len(payload):
                mask = select.EPOLLIN
        self.flights[sock.fileno()] = flight
        self.poller.register(sock.fileno(), mask)

    def on_event(self, fd: int, mask: int) -> None:
        flight = self.flights.get(fd)
        if flight is None:
            return
        try:
            if not flight.connected:
                code = flight.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise _os_error(code)
                flight.connected = True
            if flight.sent < len(flight.payload):
                self._send(fd, flight)
            elif mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                self._receive(fd, flight)
        except (OSError, ResponseError) as err:
            self._finish(fd, flight, _error_kind(err), str(err))

    def _send(self, fd: int, flight: _Flight) -> None:
        flight.sent += flight.sock.send(flight.payload[flight.sent :])
        if flight.sent == len(flight.payload):
            self.poller.modify(fd, select.EPOLLIN)

    def _receive(self, fd: int, flight: _Flight) -> None:
        data = flight.sock.recv(RECV_BYTES)
        if data:
            if flight.response.feed(data):
                self._finish(fd, flight, "", "")
        elif flight.response.eof():
            self._finish(fd, flight, "", "")
        else:
            self._finish(fd, flight, "closed before the answer", "")

    def _finish(self, fd: int, flight: _Flight, failure: str, detail: str) -> None:
        self.poller.unregister(fd)
        flight.sock.close()
        del self.flights[fd]
        if failure:
            self.out.fail(failure, detail)
            return
        self.out.latencies.append(time.monotonic() - flight.started)
        status = flight.response.status
        self.out.statuses[status] += 1
        if status != 200:
            self.out.fail(f"HTTP {status}", flight.response.body[:160].decode("utf-8", "replace"))

    def expire(self, now: float) -> None:
        for fd, flight in list(self.flights.items()):
            if now - flight.started > self.timeout_s:
                self._finish(fd, flight, "timeout", f"no answer in {self.timeout_s:.0f} s")

    def close(self) -> None:
        for fd, flight in list(self.flights.items()):
            self._finish(fd, flight, "unfinished", "")
        self.poller.close()


def open_loop(
    port: int,
    schedule: Sequence[tuple[float, bytes]],
    start: float,
    *,
    abandon_s: float,
    timeout_s: float = 60.0,
) -> Outcome:
    """Send ``payload`` at ``start + offset`` for each ``(offset, payload)`` of ``schedule``
    (sorted by offset), each on a new connection, without waiting for earlier answers."""
    out = Outcome()
    loop = _OpenLoop(port, timeout_s, out)
    pending = deque(schedule)
    next_check = start + TIMEOUT_CHECK_S
    try:
        while pending or loop.flights:
            now = time.monotonic()
            while pending and start + pending[0][0] <= now:
                offset, payload = pending.popleft()
                due = start + offset
                if now - due > abandon_s:
                    # Far behind schedule (the servers cannot keep up): counted as failed, not
                    # sent, so an overloaded step ends in bounded time.
                    out.fail("abandoned")
                    continue
                loop.launch(payload, due)
                now = time.monotonic()
            if now >= next_check:
                loop.expire(now)
                next_check = now + TIMEOUT_CHECK_S
            wait = TIMEOUT_CHECK_S
            if pending:
                wait = min(wait, max(0.0, start + pending[0][0] - now))
            for fd, mask in loop.poller.poll(wait):
                loop.on_event(fd, mask)
    finally:
        loop.close()
    return out


# ----------------------------------------------------------------------------- closed loop


@dataclass
class Agent:
    """One keep-alive agent of a closed loop: its signed requests in order, and ``resign`` to
    sign request ``i`` afresh when it must be sent again on a new connection."""

    payloads: list[bytes]
    resign: Callable[[int], bytes]


@dataclass
class _Stream:
    agent: Agent
    index: int = 0
    sock: socket.socket | None = None
    flight: _Flight | None = None
    retried: bool = False
    answered_here: int = 0  # answers on the current connection (0: a new connection)
    mask: int = 0  # what its socket is registered for


class _ClosedLoop:
    def __init__(self, port: int, timeout_s: float, out: Outcome) -> None:
        self.addr = ("127.0.0.1", port)
        self.timeout_s = timeout_s
        self.out = out
        self.poller = select.epoll()
        self.streams: dict[int, _Stream] = {}

    def next_request(self, stream: _Stream, payload: bytes | None = None) -> None:
        """Send the stream's next request (``payload``, or the next prepared one), on its
        connection or a new one; a request that cannot be sent fails and the next one goes."""
        while stream.index < len(stream.agent.payloads):
            try:
                self._send_on(stream, payload or stream.agent.payloads[stream.index])
                return
            except OSError as err:
                self._drop(stream)
                self.out.fail(_error_kind(err), str(err))
                stream.index += 1
                payload = None
        self._drop(stream)

    def _send_on(self, stream: _Stream, payload: bytes) -> None:
        sock = stream.sock
        connected = sock is not None
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            stream.sock, stream.answered_here = sock, 0
            code = sock.connect_ex(self.addr)
            if code not in (0, errno.EINPROGRESS):
                raise _os_error(code)
            connected = code == 0
            self.streams[sock.fileno()] = stream
            self.poller.register(sock.fileno(), 0)
            stream.mask = 0
        now = time.monotonic()
        flight = _Flight(sock, payload, now, now, connected=connected)
        stream.flight = flight
        if connected:
            flight.sent = sock.send(payload)
        self._want(stream, select.EPOLLIN if flight.sent == len(payload) else select.EPOLLOUT)

    def _want(self, stream: _Stream, mask: int) -> None:
        if stream.sock is not None and stream.mask != mask:
            self.poller.modify(stream.sock.fileno(), mask)
            stream.mask = mask

    def on_event(self, fd: int, mask: int) -> None:
        stream = self.streams.get(fd)
        if stream is None or stream.flight is None:
            return
        flight = stream.flight
        try:
            if not flight.connected:
                code = flight.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise _os_error(code)
                flight.connected = True
            if flight.sent < len(flight.payload):
                flight.sent += flight.sock.send(flight.payload[flight.sent :])
                if flight.sent == len(flight.payload):
                    self._want(stream, select.EPOLLIN)
            elif mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                data = flight.sock.recv(RECV_BYTES)
                complete = flight.response.feed(data) if data else flight.response.eof()
                if complete:
                    self._answered(stream, flight)
                elif not data:
                    raise ConnectionResetError("closed before the answer")
        except (OSError, ResponseError) as err:
            self._broken(stream, err)

    def _answered(self, stream: _Stream, flight: _Flight) -> None:
        self.out.latencies.append(time.monotonic() - flight.started)
        status = flight.response.status
        self.out.statuses[status] += 1
        if status != 200:
            self.out.fail(f"HTTP {status}", flight.response.body[:160].decode("utf-8", "replace"))
        stream.answered_here += 1
        if not flight.response.keep_alive:
            self._drop(stream)
        stream.index += 1
        stream.retried = False
        self.next_request(stream)

    def _broken(self, stream: _Stream, err: BaseException) -> None:
        """A connection failed. One that had answered before was a keep-alive connection the
        server closed under us: the reporter reconnects and sends again (event ids make it
        exactly-once), signed afresh (a new nonce). Otherwise the request fails."""
        reused = stream.answered_here > 0
        self._drop(stream)
        if reused and not stream.retried:
            stream.retried = True
            self.next_request(stream, stream.agent.resign(stream.index))
            return
        self.out.fail(_error_kind(err), str(err))
        stream.index += 1
        stream.retried = False
        self.next_request(stream)

    def _drop(self, stream: _Stream) -> None:
        if stream.sock is not None:
            fd = stream.sock.fileno()
            if self.streams.pop(fd, None) is not None:
                self.poller.unregister(fd)
            stream.sock.close()
            stream.sock = None
        stream.flight = None

    def expire(self, now: float) -> None:
        for stream in list(self.streams.values()):
            if stream.flight is not None and now - stream.flight.started > self.timeout_s:
                self._drop(stream)
                self.out.fail("timeout", f"no answer in {self.timeout_s:.0f} s")
                stream.index += 1
                self.next_request(stream)


def closed_loop(port: int, agents: Sequence[Agent], *, timeout_s: float = 120.0) -> Outcome:
    """Every agent sends its requests in order, each after the previous one's answer, on one
    keep-alive connection of its own (a new one if the server closes it)."""
    out = Outcome()
    loop = _ClosedLoop(port, timeout_s, out)
    try:
        for agent in agents:
            loop.next_request(_Stream(agent))
        next_check = time.monotonic() + TIMEOUT_CHECK_S
        while loop.streams:
            for fd, mask in loop.poller.poll(TIMEOUT_CHECK_S):
                loop.on_event(fd, mask)
            now = time.monotonic()
            if now >= next_check:
                loop.expire(now)
                next_check = now + TIMEOUT_CHECK_S
    finally:
        for stream in list(loop.streams.values()):
            loop._drop(stream)
        loop.poller.close()
    return out


# ----------------------------------------------------------------------------- processes

Prepare = Callable[[Any], Any]  # worker argument -> the requests, built before the clock
Send = Callable[[Any, float], Outcome]  # (requests, start) -> what it saw


def _worker_main(pipe: Connection, prepare: Prepare, send: Send, arg: Any) -> None:
    try:
        cpu0 = time.process_time()
        work = prepare(arg)
        prep_cpu = time.process_time() - cpu0
        pipe.send(("ready", None))
        start = pipe.recv()
        delay = start - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        cpu1 = time.process_time()
        out = send(work, start)
        out.send_cpu = time.process_time() - cpu1
        out.prep_cpu = prep_cpu
        out.end = time.monotonic()
        pipe.send(("done", out))
    except BaseException:
        pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()


def run_workers(
    prepare: Prepare,
    send: Send,
    args: Sequence[Any],
    on_start: Callable[[], None],
    on_end: Callable[[], None],
    lead_s: float = 0.2,
) -> tuple[float, list[Outcome]]:
    """Fork a worker per argument; each runs ``prepare(arg)``; once all are ready, ``on_start``
    is called (the bench reads its meters), every worker runs ``send(work, start)`` from one
    start time ``lead_s`` later, and ``on_end`` is called once all have answered, before the
    workers are reaped (so their CPU is not yet in the parent's ``RUSAGE_CHILDREN``: each
    reports its own, :attr:`Outcome.send_cpu`). Returns the start time and the outcomes."""
    ctx = multiprocessing.get_context("fork")
    pipes: list[Connection] = []
    procs = []
    for arg in args:
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(there, prepare, send, arg), daemon=True)
        proc.start()
        there.close()
        pipes.append(here)
        procs.append(proc)
    try:
        for pipe in pipes:
            _expect(pipe, "ready")
        on_start()
        start = time.monotonic() + lead_s
        for pipe in pipes:
            pipe.send(start)
        outcomes = [_expect(pipe, "done") for pipe in pipes]
        on_end()
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for pipe in pipes:
            pipe.close()
    return start, outcomes


def _expect(pipe: Connection, kind: str) -> Any:
    try:
        got, value = pipe.recv()
    except EOFError as err:
        raise RuntimeError("a load-generator worker died") from err
    if got == "error":
        raise RuntimeError(f"load-generator worker failed:\n{value}")
    if got != kind:
        raise RuntimeError(f"load-generator worker: expected {kind!r}, got {got!r}")
    return value
