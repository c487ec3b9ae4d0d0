"""The sd_notify client: environment parsing and real datagrams to a socket bound here."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from proscribe.agent.sdnotify import SystemdNotifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def test_outside_systemd_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier.from_env({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.notify("READY=1") is False


def test_ready_and_watchdog_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    assert notifier.watchdog_interval == 15.0  # half of WatchdogSec=30
    assert notifier.notify("READY=1\nSTATUS=running")
    assert sock.recv(4096) == b"READY=1\nSTATUS=running"
    assert notifier.notify("WATCHDOG=1")
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_abstract_socket_address() -> None:
    name = f"proscribe-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert SystemdNotifier.from_env({"NOTIFY_SOCKET": "@" + name}).notify("READY=1")
        assert sock.recv(64) == b"READY=1"


def test_watchdog_meant_for_another_pid_is_ignored(listener: tuple[socket.socket, str]) -> None:
    _sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert SystemdNotifier.from_env(env).watchdog_interval is None
    env["WATCHDOG_PID"] = str(os.getpid())
    assert SystemdNotifier.from_env(env).watchdog_interval == 0.5
    env["WATCHDOG_USEC"] = "garbage"
    assert SystemdNotifier.from_env(env).watchdog_interval is None


def test_a_vanished_socket_is_reported_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.notify("WATCHDOG=1") is False
    assert notifier.notify("WATCHDOG=1") is False
    assert sum("sd_notify" in r.getMessage() for r in caplog.records) == 1
