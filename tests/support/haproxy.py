"""Debian's haproxy in front of collector replicas, on a free loopback port (benchmarks).

The proxy runs in the foreground as a child (``haproxy -db -f FILE``), round-robin over the
replicas, HTTP mode with keep-alive to the backends, ``X-Forwarded-For`` added (so replicas set
``behind_proxy = true`` see each client's own address, as in production). Stopping it (or leaving
the ``with`` block) sends SIGTERM to that child only.

``http-reuse always`` by default: any idle replica connection carries the next request, even the
first of a new client connection. The agent API allows it: every request is signed on its own and
carries its client's address in ``X-Forwarded-For``; nothing is bound to a connection. And the
fleet needs it: a heartbeat is the only request of its client connection, and under ``safe``
haproxy 2.6 opened a new replica connection for every heartbeat once the replicas fell behind
(3,000 of 3,000 at 200/s, against 137–208 of 3,000 with ``always``; docs/scale.md), adding
uvicorn's connection set-up to an already full machine. The race it could bring (a request sent
on an idle connection just as the replica closes it: a 502, seen once in 1,000 ingest batches)
is closed on the replica's side: ``collector serve`` with ``behind_proxy = true`` keeps an idle
connection 300 s (cli/collector/serve.py), and haproxy purges its idle ones long before.
``nbthread 1``: with 2 threads on these 2 cores, haproxy reused no
replica connection at all (1,800 of 1,800 opened at 120/s) and used no less CPU.

``maxconn 4000`` is also the listen backlog (haproxy gives a bind its frontend's maxconn, which
is the global one here; ``ss -ltn`` shows 4000; the kernel's cap, ``net.core.somaxconn``, is 4096
on this machine). At 1,667 new connections/s answered in ~10 ms about 20 are open at once; 4000
is 2.4 s of arrivals if the replicas stall. Each replica takes at most 256 at once (``maxconn
256``); the rest wait in haproxy's queue (``timeout queue 60s``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support.child_server import ChildServer
from tests.support.ports import free_tcp_port

HAPROXY = "haproxy"


def haproxy_path() -> str | None:
    return shutil.which(HAPROXY) or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )


class Haproxy(ChildServer):
    def __init__(
        self,
        workdir: Path,
        backends: list[int],
        *,
        maxconn: int = 4000,
        http_reuse: str = "always",
        nbthread: int = 1,
    ) -> None:
        if http_reuse not in ("never", "safe", "aggressive", "always"):
            raise ValueError(f"http-reuse {http_reuse!r}: never, safe, aggressive or always")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        servers = "\n".join(
            f"    server r{i} 127.0.0.1:{port} maxconn 256" for i, port in enumerate(backends)
        )
        self.config = self.workdir / "haproxy.cfg"
        self.stats_socket = self.workdir / "admin.sock"
        self.config.write_text(
            f"""global
    maxconn {maxconn}
    nbthread {int(nbthread)}
    stats socket {self.stats_socket} mode 600

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout queue 60s
    option forwardfor
    http-reuse {http_reuse}
    timeout http-keep-alive 60s

frontend collectors
    bind 127.0.0.1:{self.port}
    default_backend replicas

backend replicas
    balance roundrobin
{servers}
""",
            encoding="utf-8",
        )
        self.log = self.workdir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def backend_connections(self) -> tuple[int, int]:
        """(connections opened to the replicas, requests sent on a reused one) so far, summed
        over the servers (the ``connect`` and ``reuse`` columns of ``show stat``)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        columns = lines[0].lstrip("# ").split(",")
        opened = reused = 0
        for line in lines[1:]:
            row = dict(zip(columns, line.split(","), strict=False))
            if row.get("type") == "2":  # a server (0 frontend, 1 backend)
                opened += int(row.get("connect") or 0)
                reused += int(row.get("reuse") or 0)
        return opened, reused

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        binary = haproxy_path()
        if binary is None:
            raise RuntimeError("haproxy is not installed (Debian: apt-get install haproxy)")
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(
                [binary, "-db", "-f", str(self.config)], stdout=handle, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("haproxy did not start in time")
