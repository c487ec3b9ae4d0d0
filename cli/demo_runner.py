"""What ``proscribe demo`` needs to run the product's own commands and wait for them.

Every child is started by the demo, in its own session, and stopped by pid; nothing is ever
looked up or stopped by name. Any way a step can fail (a non-zero exit, ``--timeout``
passing, the collector not answering) becomes :class:`DemoFailed`: one line naming the step
and where its log is, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from proscribe.core.errors import ProscribeError

__all__ = [
    "PROSCRIBE",
    "DemoFailed",
    "DemoRun",
    "field_value",
    "free_port",
    "http_json",
    "say",
    "wait_for",
    "workspace",
]

PROSCRIBE = (sys.executable, "-m", "proscribe.cli")
T = TypeVar("T")


class DemoFailed(ProscribeError):
    """The demo ran but a step did not work (exit 1; bad flags are usage errors, exit 2)."""

    exit_code = 1


@dataclass
class DemoRun:
    """The work directory, the children started so far and their logs."""

    work: Path
    timeout: float
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)

    def cli(self, *args: str) -> str:
        """Run ``proscribe ARGS`` and return its stdout; a failure stops the demo clearly."""
        step = f"proscribe {' '.join(args[:3])}"
        try:
            result = subprocess.run(
                [*PROSCRIBE, *args],
                check=False,
                capture_output=True,
                text=True,
                timeout=self.timeout,
            )
        except subprocess.TimeoutExpired:
            raise DemoFailed(
                f"demo step '{step}' did not finish within --timeout {self.timeout:g}s "
                "(fix: a larger --timeout on a slow or busy machine)"
            ) from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise DemoFailed(
                f"demo step '{step}' failed: "
                f"{detail[-1] if detail else f'exit {result.returncode}'}"
            )
        return result.stdout

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.work / f"{name}.log").open("wb")
        self.logs.append(log)
        proc = subprocess.Popen(
            [*PROSCRIBE, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for log in self.logs:
            log.close()

    def tail(self, name: str, lines: int = 8) -> str:
        path = self.work / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def say(step: str, text: str = "") -> None:
    print(f"\033[1m==> {step}\033[0m {text}" if sys.stdout.isatty() else f"==> {step} {text}")
    sys.stdout.flush()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(
    url: str, token: str | None = None, method: str = "GET", body: Any = None
) -> tuple[int, Any]:
    """One request to the demo's own collector; OSError when it cannot be reached."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if not url.startswith("http://127.0.0.1:"):
        raise DemoFailed(f"demo: refusing to call a non-loopback URL {url!r}")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def wait_for(what: str, timeout: float, check: Callable[[], T | None]) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise DemoFailed(f"demo: timed out after {timeout:g}s waiting for {what}")


def field_value(output: str, label: str) -> str:
    for line in output.splitlines():
        if line.lower().startswith(label):
            return line.split(":", 1)[1].strip()
    raise DemoFailed(f"demo: expected a '{label}' line in: {output.strip()!r}")


@contextlib.contextmanager
def workspace(path: Path | None, keep: bool) -> Iterator[Path]:
    if path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ProscribeError(
                f"--dir {path}: cannot create the work directory: {err.strerror} "
                "(fix: pass a writable directory)"
            ) from err
        yield path
        return
    work = Path(tempfile.mkdtemp(prefix="proscribe-demo-"))
    try:
        yield work
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
