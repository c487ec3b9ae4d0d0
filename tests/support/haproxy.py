"""Debian's haproxy in front of collector replicas, on a free loopback port (benchmarks).

The proxy runs in the foreground as a child (``haproxy -db -f FILE``), round-robin over the
replicas, HTTP mode with keep-alive to the backends, ``X-Forwarded-For`` added (so replicas set
``behind_proxy = true`` see each client's own address, as in production). Stopping it (or leaving
the ``with`` block) sends SIGTERM to that child only.
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
    def __init__(self, workdir: Path, backends: list[int], *, maxconn: int = 4000) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        servers = "\n".join(
            f"    server r{i} 127.0.0.1:{port} maxconn 256" for i, port in enumerate(backends)
        )
        self.config = self.workdir / "haproxy.cfg"
        self.config.write_text(
            f"""global
    maxconn {maxconn}
    nbthread 1

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout queue 60s
    option forwardfor
    http-reuse safe
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
