"""The kernel's process connector, for real (root, Linux): exec and comm events arrive, and the
sensor hands a started process to its handler within milliseconds."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from proscribe.agent.sensors.process import ProcessSensor, Sighting
from proscribe.core.policy.matchers.process import ProcessFacts
from tests.support.waits import wait_for

pytestmark = [pytest.mark.root, pytest.mark.linux]


def test_connector_reports_exec_and_comm_events() -> None:
    from proscribe.agent.sensors._netlink_linux import (
        PROC_EVENT_COMM,
        PROC_EVENT_EXEC,
        PROC_EVENT_FORK,
        ProcConnector,
    )

    connector = ProcConnector()
    connector.open()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "open('/proc/self/comm','w').write('renamed-x')"]
        )
        proc.wait()
        seen: set[int] = set()
        others: set[int] = set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not {PROC_EVENT_EXEC, PROC_EVENT_COMM} <= seen:
            events, _overflow = connector.read(0.2)
            for e in events:
                others.add(e.what)
                if e.tgid == proc.pid:
                    seen.add(e.what)
                    if e.what == PROC_EVENT_COMM:
                        assert e.comm == "renamed-x"
        assert {PROC_EVENT_EXEC, PROC_EVENT_COMM} <= seen
        # the socket filter keeps exit events (and thread creations) in the kernel
        assert others <= {PROC_EVENT_EXEC, PROC_EVENT_COMM, PROC_EVENT_FORK}
    finally:
        connector.close()


def test_sensor_delivers_a_new_process_in_milliseconds() -> None:
    got: dict[int, tuple[ProcessFacts, Sighting, float]] = {}

    def handler(facts: ProcessFacts, sighting: Sighting) -> None:
        if sighting.source != "fork":  # the fork (still the parent's image) comes first
            got.setdefault(facts.pid, (facts, sighting, time.monotonic()))

    sensor = ProcessSensor("netlink", handler, sweep_interval=3600)
    sensor.start()
    try:
        assert sensor.backend == "netlink"
        time.sleep(0.3)  # let the start-up sweep finish (its end is not observable from outside)
        before = time.monotonic()
        proc = subprocess.Popen(["/bin/sleep", "5"])
        # (it may arrive before Popen returns: the pid is looked for afterwards)
        assert wait_for(lambda: proc.pid in got, 5)
        facts, sighting, when = got[proc.pid]
        assert sighting.source == "exec"
        assert facts.exe == "/usr/bin/sleep" and facts.cmdline == ("/bin/sleep", "5")
        # The kernel path's latency on the wall clock is the point: netlink delivers in
        # milliseconds; 0.5 s is generous for a loaded machine (the sweep is an hour away).
        assert when - before < 0.5
    finally:
        sensor.stop()
        proc.kill()
        proc.wait()


def test_netlink_requested_without_root_falls_back_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sensor = ProcessSensor("netlink", lambda f, s: None, is_root=False, poll_interval=5)
    sensor.start()
    try:
        assert sensor.backend == "poll"
        assert "netlink unavailable" in sensor.detail
        assert any(r.levelname == "ERROR" for r in caplog.records)
    finally:
        sensor.stop()


def test_a_full_socket_buffer_is_reported_as_overflow() -> None:
    from proscribe.agent.sensors._netlink_linux import ProcConnector

    connector = ProcConnector(rcvbuf=4096)  # a few messages' worth
    connector.open()
    try:
        for _ in range(100):  # execs while nobody reads
            subprocess.run(["/bin/true"], check=True)
        # each read blocks up to 0.2 s itself: no pause between reads
        assert wait_for(lambda: connector.read(0.2)[1], 5, step=0)
    finally:
        connector.close()


def test_sensor_counts_an_overflow_and_sweeps_at_once() -> None:
    """The reader's reaction to ENOBUFS, with a connector that reports one overflow."""

    class OverflowingConnector:
        def __init__(self) -> None:
            self.overflow_now = threading.Event()

        def read(self, timeout: float) -> tuple[list[object], bool]:
            if self.overflow_now.is_set():
                self.overflow_now.clear()
                return [], True
            time.sleep(min(timeout, 0.05))
            return [], False

        def close(self) -> None:
            pass

    swept = threading.Event()

    def handler(facts: ProcessFacts, sighting: Sighting) -> None:
        if sighting.source == "sweep":
            swept.set()

    connector = OverflowingConnector()
    sensor = ProcessSensor("netlink", handler, sweep_interval=3600)
    sensor._open_netlink = lambda: None  # type: ignore[method-assign]
    sensor._connector = connector
    sensor.start()
    try:
        assert swept.wait(5)  # the start-up sweep has begun
        time.sleep(0.3)  # and has ended (a sweep's end is not observable from outside)
        swept.clear()
        sensor.scanner.forget_all()  # so the next sweep has processes to hand over
        connector.overflow_now.set()
        assert wait_for(lambda: sensor.drops["overflow"] == 1, 5)
        assert swept.wait(5)  # the sweep the overflow asked for (the periodic one is an hour)
    finally:
        sensor.stop()
