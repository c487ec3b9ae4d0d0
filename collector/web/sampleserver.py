"""A real collector in a subprocess on a free loopback port, for screenshots, the dashboard
benchmark and the browser tests: ``proscribe collector serve --config …`` exactly as an admin
runs it, so what they measure and see is the shipped server, not a test double."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from proscribe.collector.storage import Database, open_database, upgrade
from proscribe.collector.storage.users import add_user


def proscribe_command() -> str:
    """The ``proscribe`` entry point installed beside this interpreter (a virtualenv's bin)."""
    beside = Path(sys.executable).with_name("proscribe")
    return str(beside) if beside.exists() else "proscribe"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class RunningCollector:
    url: str
    config: Path
    database_url: str
    process: subprocess.Popen[bytes]


def write_config(folder: Path, port: int, database_url: str, heartbeat_window: int = 180) -> Path:
    config = folder / "collector.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nheartbeat_window = {heartbeat_window}\n\n'
        f'[database]\nurl = "{database_url}"\n',
        encoding="utf-8",
    )
    return config


def prepare_database(database_url: str) -> Database:
    db = open_database(database_url)
    upgrade(db)
    return db


def create_user(db: Database, name: str, role: str) -> str:
    """A dashboard user; returns the generated password."""
    with db.write() as conn:
        password, _token = add_user(conn, name, role, int(time.time() * 1e6))
    return password


@contextlib.contextmanager
def running_collector(
    folder: Path, database_url: str, *, timeout: float = 30.0, log_path: Path | None = None
) -> Iterator[RunningCollector]:
    """Start ``proscribe collector serve`` and wait until ``/healthz`` answers; stop it (by
    pid, SIGTERM then SIGKILL) on exit."""
    port = free_port()
    config = write_config(folder, port, database_url)
    log = (log_path or folder / "collector.log").open("wb")
    process = subprocess.Popen(
        [proscribe_command(), "collector", "serve", "--config", str(config),
         "--log-level", "warning"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"collector exited with {process.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as reply:  # noqa: S310
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"collector did not answer within {timeout} s; see {log.name}")
            time.sleep(0.1)
        yield RunningCollector(url, config, database_url, process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        log.close()
