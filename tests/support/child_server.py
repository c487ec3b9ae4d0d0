"""The lifecycle shared by the servers tests and benchmarks run as children (the collector,
haproxy): stop with SIGTERM (SIGKILL after ``stop_timeout``), a ``with`` block, and the CPU time
the child has used (Linux /proc)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any, Self


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ChildServer:
    stop_timeout = 10.0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        return 0.0 if self.proc is None else cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        _t: type[BaseException] | None,
        _e: BaseException | None,
        _tb: TracebackType | None,
    ) -> Any:
        self.stop()
        return None
