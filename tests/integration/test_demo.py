"""``proscribe demo`` runs the whole job and its output says so (the README's first command)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.linux]


def _demo(tmp_path: Path, *extra: str) -> str:
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
    return result.stdout


def _check_common(out: str) -> None:
    assert "signed with a throwaway key" in out
    assert re.search(r"started .*/bin/deepseek 300 -> killed by the agent after \d+ ms", out), out
    assert re.search(r"process\s+killed\s+rule=deepseek-desktop", out), out
    assert re.search(r"dashboard http://127\.0\.0\.1:\d+/", out), out
    assert "NOT killed" not in out and "warning" not in out


@pytest.mark.root
def test_demo_as_root_uses_netlink_and_capture(tmp_path: Path) -> None:
    out = _demo(tmp_path)
    assert "root: netlink process sensor, passive DNS capture" in out
    _check_common(out)
    # The captured query is attributed to the demo process that sent it.
    assert re.search(
        r"dns\s+reported\s+rule=deepseek-web\s+chat\.deepseek\.com \(asked by pid \d+", out
    )
    report = (tmp_path / "demo" / "report.csv").read_text()
    assert "deepseek-desktop" in report and "deepseek-web" in report
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "us-navy-deepseek-2025" in html and "deepseek-desktop" in html
    # Nothing it started is left running.
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout


def test_demo_unprivileged_uses_polling_and_the_proxy(tmp_path: Path) -> None:
    out = _demo(tmp_path, "--unprivileged")
    assert "not root: polling process sensor, DNS proxy on a high port" in out
    _check_common(out)
    assert "answered NXDOMAIN by the agent's proxy, EDE 15 Blocked" in out
    assert re.search(
        r"dns\s+sinkholed\s+rule=deepseek-web\s+chat\.deepseek\.com \(asked by pid \d+", out
    )


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
