"""``proscribe policy test``: a real denied process and a real file under a temp HOME are found."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from proscribe.cli import main
from tests.support.waits import wait_for

POLICY = """
[meta]
schema = 1
id     = "policy-test-cmd"
serial = 1
issued = 2025-01-24T00:00:00Z
title  = "integration test"

[[process]]
id     = "{process_rule}"
names  = ["{process_name}"]
action = "block"

[[file]]
id    = "weights"
globs = ["~/.cache/huggingface/hub/models--{file_marker}--*"]
"""


def write_policy(path: Path, process_name: str, file_marker: str) -> Path:
    path.write_text(
        POLICY.format(
            process_rule="denied-binary", process_name=process_name, file_marker=file_marker
        ),
        encoding="utf-8",
    )
    return path


def run_cmd(policy: Path, home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "proscribe.cli", "policy", "test", str(policy), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def has_exec(pid: int, binary: Path) -> bool:
    """True once the forked child has exec'd ``binary`` (until then it is still Python)."""
    try:
        return os.readlink(f"/proc/{pid}/exe") == str(binary)
    except OSError:
        return False


@pytest.fixture
def denied_process(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    binary = tmp_path / "bin" / "deepseek-test"
    binary.parent.mkdir()
    shutil.copy("/bin/sleep", binary)
    proc = subprocess.Popen([str(binary), "60"])
    try:
        assert wait_for(lambda: has_exec(proc.pid, binary), 5)
        yield proc
    finally:
        proc.kill()  # by pid: only the process this test started
        proc.wait(timeout=5)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".cache" / "huggingface" / "hub" / "models--deepseek-ai--DeepSeek-R1").mkdir(
        parents=True
    )
    return home


@pytest.mark.linux
def test_reports_running_process_and_file(
    tmp_path: Path,
    denied_process: subprocess.Popen[bytes],
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    policy = write_policy(tmp_path / "p.toml", "deepseek-test", "deepseek-ai")
    result = run_cmd(policy, home, "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    procs = [f for f in report["findings"] if f["kind"] == "process"]
    assert any(f"pid {denied_process.pid} " in f["subject"] for f in procs), procs
    ours = next(f for f in procs if f"pid {denied_process.pid} " in f["subject"])
    assert ours["rule_id"] == "denied-binary"
    assert ours["explanation"] == (
        "rule denied-binary: name glob 'deepseek-test' matched comm 'deepseek-test'"
    )
    files = [f for f in report["findings"] if f["kind"] == "file"]
    assert [f["subject"] for f in files] == [
        str(home / ".cache/huggingface/hub/models--deepseek-ai--DeepSeek-R1")
    ]
    assert report["violations"] >= 2

    monkeypatch.setenv("HOME", str(home))
    assert main(["policy", "test", str(policy)]) == 1  # the text form, in-process
    text = capsys.readouterr().out
    assert f"would kill: process pid {denied_process.pid} 'deepseek-test'" in text
    assert "would report: file " in text
    assert "models--deepseek-ai--DeepSeek-R1: rule weights: file glob" in text


@pytest.mark.linux
def test_exit_zero_when_nothing_matches(
    tmp_path: Path,
    denied_process: subprocess.Popen[bytes],
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    unique = f"no-such-program-{uuid.uuid4().hex[:8]}"
    policy = write_policy(tmp_path / "p.toml", unique, unique)
    monkeypatch.setenv("HOME", str(home))
    assert main(["policy", "test", str(policy)]) == 0  # in-process this time
    out = capsys.readouterr().out
    assert "0 would violate" in out
    assert "processes checked" in out


def test_bad_file_is_one_line_exit_2(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[meta]\nschema = 1\nid = "x"\nbogus = [\n', encoding="utf-8")
    assert main(["policy", "test", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert str(bad) in lines[0]
    assert "Traceback" not in captured.err
    assert main(["policy", "test", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err
    # the same through a real process: no traceback either
    result = run_cmd(bad, home)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


@pytest.mark.linux
def test_hostile_process_name_is_shown_escaped(tmp_path: Path, home: Path) -> None:
    hostile = "dsx-\x1b[2J\u202e"  # clear-screen escape and a right-to-left override
    binary = tmp_path / hostile
    shutil.copy("/bin/sleep", binary)
    proc = subprocess.Popen([str(binary), "60"])
    try:
        policy = tmp_path / "p.toml"
        policy.write_text(
            '[meta]\nschema = 1\nid = "esc"\nserial = 1\nissued = 2025-01-24T00:00:00Z\n'
            'title = "t"\n[[process]]\nid = "dsx"\nnames = ["dsx-*"]\n',
            encoding="utf-8",
        )
        assert wait_for(lambda: has_exec(proc.pid, binary), 5)
        result = run_cmd(policy, home)
        assert result.returncode == 1, result.stdout + result.stderr
        line = next(ln for ln in result.stdout.splitlines() if f"pid {proc.pid} " in ln)
        assert "\x1b" not in line
        assert "\u202e" not in line
        assert "\\x1b[2J" in line
    finally:
        proc.kill()
        proc.wait(timeout=5)
