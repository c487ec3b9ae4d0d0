"""The real daemon under a stand-in for systemd's notify socket (``Type=notify`` with
``WatchdogSec=``): READY once it runs, keep-alives at half the watchdog period, STOPPING on
SIGTERM. The keep-alive is withheld when a process sensor thread has died."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from proscribe.agent.daemon import Daemon
from proscribe.agent.sdnotify import SystemdNotifier
from proscribe.agent.sensors.process import ProcessSensor
from tests.support.agent_harness import Signer, policy_text, running_agent, write_config
from tests.support.waits import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def _messages(sock: socket.socket, until: float) -> list[str]:
    out = []
    while time.monotonic() < until:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return out


@pytest.mark.slow
def test_agent_sends_ready_keepalives_and_stopping(tmp_path: Path) -> None:
    signer = Signer()
    signer.write(tmp_path / "policy.toml", policy_text("sdnotify"))
    config = write_config(tmp_path, signer, mode="monitor", process="poll")
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(0.1)
        env = dict(os.environ, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="400000")
        with running_agent(config, tmp_path / "agent.log", env=env) as proc:
            seen = _messages(sock, time.monotonic() + 2.0)
            assert seen and seen[0].startswith("READY=1\n"), seen
            assert "STATUS=running in monitor mode" in seen[0]
            # one keep-alive every 0.2 s: about 10 in 2 s; a loaded machine may send fewer
            assert seen.count("WATCHDOG=1") >= 4, seen
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        assert "STOPPING=1" in _messages(sock, time.monotonic() + 0.5)


def test_a_process_sensor_turned_off_is_healthy() -> None:
    """``[sensors] process = "off"``: no thread to die, so the keep-alive is never withheld."""
    sensor = ProcessSensor("off", lambda facts, sighting: None)
    sensor.start()
    try:
        assert sensor.state == "off" and sensor.healthy()
    finally:
        sensor.stop()


def test_process_sensor_reports_a_dead_thread() -> None:
    sensor = ProcessSensor("poll", lambda facts, sighting: None, poll_interval=0.2)
    sensor.start()
    try:
        assert sensor.healthy()
    finally:
        sensor.stop()
    broken = ProcessSensor("poll", lambda facts, sighting: None, poll_interval=0.2)
    broken.checker._consume = lambda run: None  # type: ignore[method-assign]  # ends at once
    broken.start()
    try:
        assert wait_for(lambda: not broken.healthy(), 5)
    finally:
        broken.stop()


def test_keepalive_is_withheld_while_the_sensor_is_unhealthy(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(0.2)
        healthy = [True]
        models_healthy = [True]
        fake = SimpleNamespace(
            sensor=SimpleNamespace(healthy=lambda: healthy[0]),
            models=SimpleNamespace(healthy=lambda: models_healthy[0]),
            systemd=SystemdNotifier(str(path), 1_000_000),
            errors=0,
            _watchdog_withheld=False,
        )
        Daemon._feed_watchdog(fake)  # type: ignore[arg-type]
        assert sock.recv(64) == b"WATCHDOG=1"
        models_healthy[0] = False  # a model sensor thread died: withheld too
        Daemon._feed_watchdog(fake)  # type: ignore[arg-type]
        with pytest.raises(TimeoutError):
            sock.recv(64)
        models_healthy[0] = True
        fake._watchdog_withheld = False
        fake.errors = 0
        Daemon._feed_watchdog(fake)  # type: ignore[arg-type]
        assert sock.recv(64) == b"WATCHDOG=1"
        healthy[0] = False
        Daemon._feed_watchdog(fake)  # type: ignore[arg-type]
        Daemon._feed_watchdog(fake)  # type: ignore[arg-type]
        with pytest.raises(TimeoutError):
            sock.recv(64)
        assert fake.errors == 1  # counted (and logged) once
