"""Events that are true at the edges, with real processes and the real daemon (its eBPF guard
off: this is the process sensor's own kill, the fallback everywhere BPF is unavailable).

* ``killed`` only for a process the signal killed; one that exited first is ``exited``;
* a process is pinned by a pidfd when first seen: an innocent process that takes its pid (made
  with ``clone3`` + ``set_tid``, the same pid at once) is never signalled;
* a denied program's double-forked child is caught at the process sensor's latency (its fork
  event), not at the next sweep.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proscribe.agent.enforce.kill import Killer
from proscribe.agent.sensors.enrich import Enricher
from proscribe.agent.sensors.process import ProcessSensor, Sighting
from tests.support.agent_harness import (
    Procs,
    Signer,
    policy_text,
    running_agent,
    spool_events,
    write_config,
)
from tests.support.waits import wait_for

pytestmark = [pytest.mark.root, pytest.mark.linux]

# Runs in a helper process: clone3 with set_tid = [PID] makes a child with exactly that pid,
# which execs sleep; the helper prints the child's pid and waits for it.
_CLONE_AT = r"""
import ctypes, os, sys
class CloneArgs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("flags", "pidfd", "child_tid", "parent_tid",
        "exit_signal", "stack", "stack_size", "tls", "set_tid", "set_tid_size", "cgroup")]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
tid = (ctypes.c_int32 * 1)(int(sys.argv[1]))
args = CloneArgs(exit_signal=17, set_tid=ctypes.addressof(tid), set_tid_size=1)
pid = libc.syscall(435, ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
if pid == 0:
    os.execv("/bin/sleep", ["sleep", "30"])
if pid < 0:
    print("error", ctypes.get_errno(), flush=True); sys.exit(1)
print(pid, flush=True)
os.waitpid(pid, 0)
"""


@pytest.fixture
def procs() -> Iterator[Procs]:
    started = Procs()
    yield started
    started.cleanup()


def test_an_innocent_process_that_takes_the_pid_is_never_signalled(procs: Procs) -> None:
    killer = Killer(Enricher())
    for _ in range(5):
        denied = subprocess.Popen(["sleep", "30"])
        pid = denied.pid
        pidfd = os.pidfd_open(pid)  # pinned when first seen, as the process sensor does
        start = killer.enricher.start_time_of(pid)
        try:
            denied.kill()
            denied.wait(5)  # gone and reaped: the pid is free
            helper = procs.start(
                [sys.executable, "-c", _CLONE_AT, str(pid)], stdout=subprocess.PIPE
            )
            assert helper.stdout is not None
            line = helper.stdout.readline().decode().strip()
            assert line == str(pid), line  # the innocent process has the very same pid
            # same pid, and the start time may well fall in the same clock tick
            outcome = killer.kill(pid, start, pidfd=pidfd)
        finally:
            os.close(pidfd)
        assert not outcome.killed and outcome.gone, outcome
        time.sleep(0.05)
        stat = Path(f"/proc/{pid}/stat").read_text()
        assert ") S " in stat or ") R " in stat, stat  # the innocent sleep still runs


def test_a_pinned_process_is_killed_and_an_exited_one_is_not_called_killed(procs: Procs) -> None:
    killer = Killer(Enricher())
    live = procs.start(["sleep", "30"])
    fd = os.pidfd_open(live.pid)
    try:
        assert killer.running(live.pid, None, fd)
        assert killer.kill(live.pid, None, pidfd=fd).killed
    finally:
        os.close(fd)
    assert live.wait(5) == -signal.SIGKILL
    zombie = subprocess.Popen(["true"])
    fd = os.pidfd_open(zombie.pid)
    try:
        assert wait_for(lambda: "Z" in Path(f"/proc/{zombie.pid}/stat").read_text().split()[2])
        assert not killer.running(zombie.pid, None, fd)
        outcome = killer.kill(zombie.pid, None, pidfd=fd)
        assert not outcome.killed and outcome.reason == "gone"
    finally:
        os.close(fd)
        zombie.wait(5)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, Path]]:
    tmp = tmp_path_factory.mktemp("outcomes")
    token = secrets.token_hex(3)
    signer = Signer()
    signer.write(tmp / "policy.toml", policy_text(token))
    config = write_config(tmp, signer, process="netlink")  # kernel_guard off: the sensor kills
    bindir = tmp / "bin"
    bindir.mkdir()
    with running_agent(config, tmp / "agent.log"):
        yield tmp / "state", token, bindir


def test_every_killed_event_is_a_process_the_signal_killed(
    agent: tuple[Path, str, Path], procs: Procs
) -> None:
    """40 very short denied programs: each event says ``killed`` only if that process died of
    SIGKILL, ``exited`` only if it exited on its own."""
    state, token, bindir = agent
    program = bindir / f"dsk{token}-short"
    shutil.copy("/bin/true", program)
    started = [procs.start([str(program)]) for _ in range(40)]
    codes = {p.pid: p.wait(10) for p in started}
    time.sleep(1.5)  # let the checker catch up and the repeats fold
    events = [e for e in spool_events(state) if (e.get("process") or {}).get("pid") in codes]
    assert events, "no event at all: the sensor saw none of them"
    for event in events:
        code = codes[event["process"]["pid"]]
        if event["action"] == "killed":
            assert code == -signal.SIGKILL, event
        else:
            assert event["action"] == "exited" and code == 0, event


def test_a_double_forked_child_is_judged_at_sensor_latency(tmp_path: Path, procs: Procs) -> None:
    """The fork event of a new process is a sighting: a denied program's child, or the
    grandchild of a double fork whose parents exit at once, is judged within the sensor's
    latency (the sweep here runs every 60 s, so it cannot be what found it)."""
    token = secrets.token_hex(4)
    python = tmp_path / f"dsk{token}-fork"
    shutil.copy(os.path.realpath(sys.executable), python)
    pidfile = tmp_path / "grandchild.pid"
    seen: list[Sighting] = []
    sensor = ProcessSensor(
        "netlink",
        lambda facts, sighting: seen.append(sighting),
        sweep_interval=60,
        interesting=lambda facts: token in facts.name,
    )
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    if os.fork() == 0:\n"
        f"        open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
        "        time.sleep(30)\n"
        "    os._exit(0)\n"
        "os._exit(0)\n"
    )
    sensor.start()
    try:
        assert wait_for(lambda: sensor.stats()["seen"], timeout=5)  # the first sweep is done
        seen.clear()
        procs.start([str(python), "-c", code]).wait(10)
        assert wait_for(lambda: pidfile.exists() and pidfile.read_text(), timeout=5)
        grandchild = int(pidfile.read_text())
        assert wait_for(lambda: any(s.pid == grandchild for s in seen), timeout=2), (
            grandchild,
            seen,
        )
        assert next(s for s in seen if s.pid == grandchild).source == "fork"
    finally:
        sensor.stop()
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)  # our own grandchild, by pid


def test_a_second_users_run_is_its_own_event(agent: tuple[Path, str, Path], procs: Procs) -> None:
    state, token, _bindir = agent
    shared = Path(tempfile.mkdtemp(prefix="proscribe-users-"))
    try:
        shared.chmod(0o755)
        program = shared / f"dsk{token}-shared"
        shutil.copy("/bin/sleep", program)
        program.chmod(0o755)
        by_root = [procs.start([str(program), "30"]) for _ in range(2)]
        by_nobody = procs.start(
            [str(program), "30"], preexec_fn=lambda: (os.setgid(65534), os.setuid(65534))
        )
        for proc in (*by_root, by_nobody):
            assert proc.wait(10) == -signal.SIGKILL
        time.sleep(1.2)  # a fold pass
        events = [
            e for e in spool_events(state) if (e.get("process") or {}).get("exe") == str(program)
        ]
        by_user = {e["process"]["user"]: e["_count"] for e in events}
        assert by_user == {"root": 2, "nobody": 1}, events
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_program_run_through_the_dynamic_loader_is_judged_as_that_program(
    agent: tuple[Path, str, Path], procs: Procs
) -> None:
    """Without the eBPF guard too: ``ld.so FILE`` and ``ld.so --argv0 x ./FILE`` have the
    loader's exe and comm; the process sensor judges FILE."""
    state, token, bindir = agent
    program = bindir / f"dsk{token}-viald"
    shutil.copy("/bin/sleep", program)
    loader = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
    for argv, cwd in (
        ([loader, str(program), "30"], None),
        ([loader, "--argv0", "vim", f"./{program.name}", "30"], bindir),  # relative to its cwd
    ):
        proc = procs.start(argv, cwd=cwd)
        assert proc.wait(10) == -signal.SIGKILL, argv

    def judged_as_program() -> int:
        return sum(
            int(e["_count"])
            for e in spool_events(state)
            if (e.get("process") or {}).get("exe") == str(program)
        )

    # the two starts of one program by one user: one event, count 2
    assert wait_for(lambda: judged_as_program() == 2, timeout=5), spool_events(state)
