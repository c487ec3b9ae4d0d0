"""``proscribe demo`` runs the whole job and its output says so (the README's first command)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import dns.message
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.linux]


def _demo(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "proscribe.cli",
            "demo",
            "--once",
            "--timeout",
            "60",
            "--dir",
            str(tmp_path / "demo"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _check_common(out: str) -> None:
    assert "signed with a throwaway key" in out
    assert re.search(r"started .*/bin/deepseek 300 -> killed by the agent after \d+ ms", out), out
    assert re.search(r"process\s+killed\s+rule=deepseek-desktop", out), out
    assert "NOT killed" not in out and "warning" not in out
    assert "answered NXDOMAIN by the agent's proxy, EDE 15 Blocked" in out
    assert "process rules match only programs under" in out  # it says it is scoped
    # --once: the collector stops with the demo, so no login to a dead dashboard.
    assert "log in as" not in out and "stopped with the demo" in out


@dataclass(frozen=True)
class DemoRan:
    """One ``proscribe demo --once`` run, with outsiders around it: programs the demo's pack
    names started outside its directory, and another program asking for the denied name on
    loopback port 53 all along."""

    out: str
    work: Path
    outsiders: list[tuple[int, str]]  # (pid, program)
    killed: list[str]  # outsiders that were not running when the demo ended
    left: str  # what pgrep found of the demo's directory once the outsiders were gone


@pytest.fixture(scope="module")
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> DemoRan:
    """The demo as root or ``--unprivileged`` (``request.param``), run once for the tests that
    read what it did (each run starts a collector and an agent: ~10 s)."""
    mode = request.param
    tmp_path = tmp_path_factory.mktemp(f"demo-{mode}")
    outsiders = _outsiders(tmp_path)
    stop = threading.Event()
    asker = threading.Thread(target=_ask_for_deepseek, args=(stop,), daemon=True)
    asker.start()
    try:
        result = _demo(tmp_path, *(["--unprivileged"] if mode == "unprivileged" else []))
        killed = [str(proc.args[0]) for proc in outsiders if proc.poll() is not None]
    finally:
        stop.set()
        asker.join(5)
        for proc in outsiders:
            proc.kill()
            proc.wait(10)
    # Nothing it started is left running (looked for once the outsiders, whose sibling
    # directory starts like the demo's, are gone).
    work = tmp_path / "demo"
    left = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True).stdout
    return DemoRan(
        result.stdout, work, [(p.pid, str(p.args[0])) for p in outsiders], killed, left.strip()
    )


@pytest.mark.root
@pytest.mark.parametrize("demo", ["root"], indirect=True)
def test_demo_as_root_uses_netlink(demo: DemoRan) -> None:
    out = demo.out
    assert "root: netlink process sensor, DNS through the agent's own proxy" in out
    _check_common(out)
    report = (demo.work / "report.csv").read_text()
    assert "deepseek-desktop" in report and "deepseek-web" in report
    html = (demo.work / "report.html").read_text()
    assert "us-navy-deepseek-2025" in html and "deepseek-desktop" in html
    assert demo.left == "", demo.left


@pytest.mark.parametrize("demo", ["unprivileged"], indirect=True)
def test_demo_unprivileged_uses_polling_and_the_proxy(demo: DemoRan) -> None:
    out = demo.out
    assert "not root: polling process sensor" in out
    _check_common(out)
    assert re.search(
        r"dns\s+sinkholed\s+rule=deepseek-web\s+chat\.deepseek\.com \(asked by pid \d+", out
    )


def _outsiders(tmp_path: Path) -> list[subprocess.Popen[bytes]]:
    """Programs the demo's pack names, started by this test outside the demo's directory: one
    elsewhere, and look-alikes in a sibling whose path starts like the demo's."""
    sleep = shutil.which("sleep") or "/bin/sleep"
    procs = []
    for place in ("outside/bin/deepseek", "outside/dsh", "demo-sibling/bin/deepseek-r1"):
        exe = tmp_path / place
        exe.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(sleep, exe)
        procs.append(subprocess.Popen([str(exe), "600"]))
    return procs


def _ask_for_deepseek(stop: threading.Event) -> None:
    """Another program's DNS queries for the denied name, on loopback port 53, all along."""
    query = dns.message.make_query("chat.deepseek.com", "A").to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while not stop.wait(0.2):
            with contextlib.suppress(OSError):
                sock.sendto(query, ("127.0.0.1", 53))


@pytest.mark.parametrize(
    "demo", [pytest.param("root", marks=pytest.mark.root), "unprivileged"], indirect=True
)
def test_demo_never_touches_what_it_did_not_start(demo: DemoRan) -> None:
    assert demo.killed == [], f"the demo killed {demo.killed}"
    out = demo.out
    _check_common(out)
    listed = out.split("violation(s) stored:", 1)[1].split("==> report", 1)[0]
    events = [line for line in listed.splitlines() if line.strip()]
    assert len(events) == 2, listed  # the demo's own process kill and its own query
    work = str(demo.work)
    demo_process = next(e for e in events if " process " in e)
    assert f"{work}/bin/deepseek" in demo_process
    [dns_event] = [e for e in events if " dns " in e]
    # The query was asked by the demo itself (its agent's proxy is asked by nobody else).
    assert "(asked by pid " in dns_event and str(os.getpid()) not in dns_event
    for pid, program in demo.outsiders:
        assert str(pid) not in listed and program not in listed


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_kill_stops_everything_the_demo_started(tmp_path: Path, sig: int) -> None:
    work = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "proscribe.cli", "demo", "--unprivileged", "--timeout", "60",
         "--dir", str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "press Ctrl-C" in line:
                break
        assert any("press Ctrl-C" in ln for ln in lines), "".join(lines)
        children = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True)
        assert len(children.stdout.split()) >= 2  # the collector and the agent are running
        proc.send_signal(sig)
        rest = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, rest
        assert "stopping" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    left = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout


def test_a_step_that_outlasts_the_timeout_is_one_line_and_exit_1(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "proscribe.cli", "demo", "--timeout", "0.01", "--once",
         "--dir", str(work)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "TimeoutExpired" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("proscribe: error: demo step") and "--timeout 0.01s" in line
    left = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout


@pytest.mark.parametrize("flags", [["--timeout", "0"], ["--timeout", "x"], ["--port", "70000"]])
def test_bad_flags_are_usage_errors(tmp_path: Path, flags: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proscribe.cli", "demo", "--once", "--dir", str(tmp_path), *flags],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert not any(tmp_path.iterdir())  # nothing was started or written
