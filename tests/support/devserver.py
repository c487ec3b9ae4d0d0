"""A real collector in a child process on a free loopback port (benchmarks, tests, the demo).

It runs exactly what an operator runs, ``proscribe collector serve --config FILE``, with a
config written to ``workdir``. Stopping it (or leaving the ``with`` block) sends SIGTERM and
waits; :meth:`kill9` is for crash tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.child_server import ChildServer
from tests.support.ports import free_tcp_port


class CollectorProcess(ChildServer):
    stop_timeout = 15.0

    def __init__(
        self,
        workdir: Path,
        database_url: str | None = None,
        *,
        port: int | None = None,
        extra_toml: str = "",
        server_toml: str = "",
        log_level: str = "warning",
        verbose: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_tcp_port()
        self.database_url = database_url or f"sqlite:///{self.workdir / 'collector.db'}"
        self.config = self.workdir / "collector.toml"
        self.config.write_text(
            f'[server]\nlisten = "127.0.0.1:{self.port}"\n{server_toml}'
            f'[database]\nurl = "{self.database_url}"\n{extra_toml}',
            encoding="utf-8",
        )
        self.log = self.workdir / "collector.log"
        self.log_level = log_level
        self.verbose = verbose  # proscribe -v: the collector's own info lines in the log
        self.proc: subprocess.Popen[bytes] | None = None

        self.scheme = "https" if "tls_cert" in server_toml else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        if self.proc is not None:
            raise RuntimeError("already running")
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "proscribe.cli",
                    *(["-v"] if self.verbose else []),
                    "collector",
                    "serve",
                    "--config",
                    str(self.config),
                    "--log-level",
                    self.log_level,
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"collector exited: {self.log.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("collector did not start in time")

    def kill9(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None
