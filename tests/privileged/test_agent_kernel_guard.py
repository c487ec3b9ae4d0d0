"""The real daemon with the eBPF exec guard (``kernel_guard = "required"``): a denied program
dies in the kernel before its first instruction, one exec is one event, and what the kernel may
not judge (an exemption by user) stays with the process sensor.

The policy only matches names carrying a random token and files this module created; the
agent detaches its programs when it stops (checked at the end).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proscribe.agent.enforce.bpf.plan import resolve_loaders
from tests.support.agent_harness import (
    PROSCRIBE,
    Procs,
    Signer,
    events_for,
    policy_text,
    running_agent,
    spool_events,
    write_config,
)
from tests.support.waits import wait_for

pytestmark = [pytest.mark.root, pytest.mark.linux]

LOADER = next(iter(resolve_loaders().values()), "/lib64/ld-linux-x86-64.so.2")


@dataclass
class Env:
    tmp: Path
    token: str
    bin: Path
    state: Path
    log: Path
    hashed: Path  # a binary only this module runs, denied by its sha256
    path_denied: Path  # denied by its path
    agent: subprocess.Popen[bytes] | None = None

    def copy(self, name: str, source: str = "/bin/touch") -> Path:
        target = self.bin / name
        shutil.copy(source, target)
        target.chmod(0o755)
        return target


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("kagent")
    token = secrets.token_hex(3)
    bindir = Path(tempfile.mkdtemp(prefix="proscribe-kguard-"))
    bindir.chmod(0o755)  # "nobody" runs from here
    hashed = bindir / "hashed-sleep"
    hashed.write_bytes(Path("/bin/sleep").read_bytes() + secrets.token_bytes(64))
    hashed.chmod(0o755)
    path_denied = bindir / "by-path"
    shutil.copy("/bin/touch", path_denied)
    env = Env(tmp, token, bindir, tmp / "state", tmp / "agent.log", hashed, path_denied)
    digest = hashlib.sha256(hashed.read_bytes()).hexdigest()
    signer = Signer()
    signer.write(
        tmp / "policy.toml",
        policy_text(
            token,
            extra=f"""
[[process]]
id     = "hash-rule"
sha256 = ["{digest}"]
action = "block"

[[process]]
id     = "path-rule"
paths  = ["{path_denied}"]
action = "block"

[[process]]
id     = "user-exempt-rule"
names  = ["uex{token}*"]
action = "block"

[[exemption]]
id     = "nobody-may"
rules  = ["user-exempt-rule"]
users  = ["nobody"]
reason = "service account"
""",
        ),
    )
    config = write_config(tmp, signer, kernel_guard="required")
    try:
        with running_agent(config, env.log) as agent:
            env.agent = agent
            yield env
    finally:
        shutil.rmtree(bindir, ignore_errors=True)


@pytest.fixture
def procs() -> Iterator[Procs]:
    started = Procs()
    yield started
    started.cleanup()


def _status(env: Env) -> dict[str, Any]:
    return dict(json.loads((env.state / "status.json").read_text()))


def _events(env: Env, pid: int, settle: float = 0.6) -> list[dict[str, Any]]:
    """The events of ``pid`` once some are there and ``settle`` seconds passed (a second,
    duplicate event would have arrived by then)."""
    wait_for(lambda: events_for(env.state, pid), timeout=5)
    time.sleep(settle)
    return events_for(env.state, pid)


def test_status_says_the_kernel_guard_is_active(env: Env) -> None:
    guard = _status(env)["guard"]
    assert guard["active"] == "bpf"
    kernel = guard["kernel"]
    assert kernel["state"] == "running" and kernel["reader"] == "running"
    assert kernel["name_prefixes"] == 1  # dsk<token>*; the user-exempt rule is the sensor's
    assert kernel["files"] == 1
    assert kernel["left_to_sensor"] == 1  # uex<token>*: an exemption by user applies
    assert kernel["mmap_hook"] == "mmap_lock"  # not sys_enter: system calls do not pay
    text = subprocess.run(
        [*PROSCRIBE, "agent", "status", "--config", str(env.tmp / "agent.toml")],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert "\nguard:     bpf\n" in text


def test_a_denied_name_dies_before_running_and_is_one_event(env: Env, procs: Procs) -> None:
    program = env.copy(f"dsk{env.token}-chat")
    marker = env.tmp / "marker-name"
    proc = procs.start([str(program), str(marker)])
    assert proc.wait(10) == -signal.SIGKILL
    assert not marker.exists()
    events = _events(env, proc.pid)
    assert [e["action"] for e in events] == ["killed"], events
    event = events[0]
    assert event["rule"] == "deepseek-desktop"
    assert "killed in the kernel at exec" in event["detail"]
    assert event["process"]["exe"] == str(program)
    assert event["process"]["user"] == "root" and event["process"]["ppid"] == os.getpid()


def test_the_dynamic_loader_and_a_path_rule(env: Env, procs: Procs) -> None:
    """Each start dies; starts of one file by one user fold into one event's count."""
    loaded = env.copy(f"dsk{env.token}-loaded")
    renamed = env.copy(f"dsk{env.token}-argv0")
    for argv in (
        [LOADER, str(loaded)],
        [LOADER, "--argv0", "vim", str(renamed)],
        [str(env.path_denied)],
        [LOADER, str(env.path_denied)],
    ):
        marker = env.tmp / f"m-{secrets.token_hex(4)}"
        proc = procs.start([*argv, str(marker)])
        assert proc.wait(10) == -signal.SIGKILL, argv
        assert not marker.exists(), argv

    def by_rule() -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in spool_events(env.state):
            if "in the kernel" in e["detail"] and (
                e["rule"] == "path-rule" or "loader" in e["detail"]
            ):
                counts[e["rule"]] = counts.get(e["rule"], 0) + e["_count"]
        return counts

    # the daemon folds repeats into counts every second (later on a loaded machine)
    expected = {"deepseek-desktop": 2, "path-rule": 2}
    assert wait_for(lambda: by_rule() == expected, timeout=10), (
        by_rule(),
        [(e["rule"], e["action"], e["_count"], e["detail"][:90]) for e in spool_events(env.state)],
    )
    time.sleep(1.2)  # and nothing more comes: no start is counted twice
    assert by_rule() == expected, spool_events(env.state)


def test_a_hash_match_is_taught_to_the_kernel(env: Env, procs: Procs) -> None:
    first = procs.start([str(env.hashed), "30"])
    assert first.wait(10) == -signal.SIGKILL  # the process sensor: it hashes what started
    events = _events(env, first.pid, settle=0.2)
    assert events[0]["rule"] == "hash-rule" and "kernel" not in events[0]["detail"]
    assert wait_for(lambda: _status(env)["guard"]["kernel"]["learned_files"] >= 1, timeout=5)
    second = procs.start([str(env.hashed), "30"])
    assert second.wait(10) == -signal.SIGKILL
    events = _events(env, second.pid, settle=0.2)
    told = [(e["action"], e["detail"], e["process"]) for e in events]  # the whole of each
    assert len(events) == 1 and "killed in the kernel" in events[0]["detail"], told


def test_an_exemption_by_user_is_left_to_the_sensor(env: Env, procs: Procs) -> None:
    program = env.copy(f"uex{env.token}-svc", "/bin/sleep")
    allowed = procs.start(
        [str(program), "30"], preexec_fn=lambda: (os.setgid(65534), os.setuid(65534))
    )
    blocked = procs.start([str(program), "30"])  # root is not exempt
    assert blocked.wait(10) == -signal.SIGKILL
    time.sleep(0.5)
    assert allowed.poll() is None  # the kernel never judged it; the sensor exempted it
    actions = {e["action"] for e in _events(env, allowed.pid, settle=0)}
    assert actions == {"exempted"}


def test_after_the_agent_stops_nothing_stays_in_the_kernel(env: Env) -> None:
    assert env.agent is not None
    program = env.copy(f"dsk{env.token}-later")
    env.agent.send_signal(signal.SIGTERM)
    env.agent.wait(15)
    marker = env.tmp / "marker-after"
    assert subprocess.run([str(program), str(marker)], timeout=10, check=False).returncode == 0
    assert marker.exists()


@pytest.mark.parametrize(
    ("mode", "kernel_guard", "active", "state"),
    [("monitor", "auto", "monitor", "off"), ("enforce", "off", "netlink", "off")],
)
def test_status_names_the_guard_when_the_kernel_one_is_not_used(
    tmp_path: Path, mode: str, kernel_guard: str, active: str, state: str
) -> None:
    signer = Signer()
    signer.write(tmp_path / "policy.toml", policy_text(secrets.token_hex(3)))
    config = write_config(tmp_path, signer, mode=mode, kernel_guard=kernel_guard)
    with running_agent(config, tmp_path / "agent.log"):
        status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["guard"]["active"] == active
    assert status["guard"]["kernel"]["state"] == state
    assert status["guard"]["kernel"]["detail"]  # says why
