"""The killer against real processes this test starts: pid-reuse check, protected pids,
children, and hashing a binary deleted after it started."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proscribe.agent.enforce.kill import Killer
from proscribe.agent.sensors.enrich import Enricher
from tests.support.waits import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


@pytest.fixture
def sleeper() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["/bin/sleep", "30"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_kills_the_judged_process(sleeper: subprocess.Popen[bytes]) -> None:
    enricher = Enricher()
    start = enricher.start_time_of(sleeper.pid)
    outcome = Killer(enricher).kill(sleeper.pid, start)
    assert outcome.killed and outcome.reason == "killed"
    assert sleeper.wait(5) == -signal.SIGKILL


def test_pid_reuse_is_detected_and_nothing_is_sent(sleeper: subprocess.Popen[bytes]) -> None:
    enricher = Enricher()
    start = enricher.start_time_of(sleeper.pid)
    assert start is not None
    # the judged process started at another time: this pid now belongs to someone else
    outcome = Killer(enricher).kill(sleeper.pid, start - 10)
    assert not outcome.killed and outcome.reason == "pid_reused"
    time.sleep(0.1)  # time for a wrongly sent signal to land: the process must still run
    assert sleeper.poll() is None


def test_never_kills_pid_1_itself_its_parent_or_kernel_threads() -> None:
    enricher = Enricher()
    killer = Killer(enricher)
    for pid in (1, os.getpid(), os.getppid(), 2):
        outcome = killer.kill(pid, enricher.start_time_of(pid))
        assert not outcome.killed and outcome.reason.startswith("protected"), pid
    kthreads = [
        int(n)
        for n in os.listdir("/proc")
        if n.isdigit() and (s := _stat(int(n))) is not None and s.kernel_thread
    ]
    if kthreads:  # containers may not show any
        pid = kthreads[-1]
        assert killer.kill(pid, enricher.start_time_of(pid)).reason.startswith("protected")


def _stat(pid: int):  # type: ignore[no-untyped-def]
    from proscribe.agent.sensors.enrich import read_stat

    return read_stat(pid)


def test_gone_process_is_reported_gone() -> None:
    proc = subprocess.Popen(["/bin/true"])
    proc.wait()
    enricher = Enricher()
    assert Killer(enricher).kill(proc.pid, 1.0).reason in ("gone", "pid_reused")


def test_children_are_killed_too(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        ["/bin/sh", "-c", "/bin/sleep 30 & /bin/sleep 30 & wait"], start_new_session=True
    )
    try:
        assert wait_for(lambda: len(_children(parent.pid)) == 2, 5)
        children = _children(parent.pid)
        enricher = Enricher()
        outcome = Killer(enricher).kill(
            parent.pid, enricher.start_time_of(parent.pid), children=True
        )
        assert outcome.killed
        assert sorted(outcome.children_killed) == sorted(children)
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.wait()
        for pid in _children(parent.pid):  # only if the test failed half-way
            os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(x) for x in path.read_text().split()]
    except OSError:
        return []


def test_a_deleted_binary_still_hashes_through_proc_exe(tmp_path: Path) -> None:
    import subprocess

    binary = tmp_path / "sleepy"
    binary.write_bytes(Path("/bin/sleep").read_bytes())
    binary.chmod(0o755)
    expected = hashlib.sha256(binary.read_bytes()).hexdigest()
    proc = subprocess.Popen([str(binary), "30"])
    try:
        binary.unlink()
        facts = Enricher().facts(proc.pid, with_sha256=True)
        assert facts is not None
        assert facts.exe.endswith(" (deleted)")
        assert facts.sha256 == expected
    finally:
        proc.kill()
        proc.wait()
