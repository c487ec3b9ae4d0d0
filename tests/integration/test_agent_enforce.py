"""The real daemon (``proscribe agent run``) against real processes, in enforce mode.

One daemon serves the whole module. Its policy only matches names carrying a random token, so it
cannot touch processes other tests on this machine start; every process here is started by the
test and killed by pid at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proscribe.cli import main
from tests.support.agent_harness import (
    Procs,
    Signer,
    events_for,
    policy_text,
    running_agent,
    spool_events,
    write_config,
)
from tests.support.waits import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


class EnforcingAgent:
    """The module's agent in enforce mode: its files, its token (only names carrying it are
    denied), its policy signer, a binary no one else runs (for the hash rule) and a directory of
    copies the test starts."""

    def __init__(self, tmp: Path, token: str, signer: Signer, unique_sleep: Path) -> None:
        self.tmp = tmp
        self.token = token
        self.signer = signer
        self.unique_sleep = unique_sleep
        self.state = tmp / "state"
        self.policy = tmp / "policy.toml"
        self.bin = Path(tempfile.mkdtemp(prefix="proscribe-agent-bin-"))
        # pytest's temp root is private (0700); the exempted user "nobody" must reach this
        self.bin.chmod(0o755)
        self.log = tmp / "agent.log"
        self.agent: subprocess.Popen[bytes] | None = None

    def policy_with(self, serial: int) -> str:
        digest = hashlib.sha256(self.unique_sleep.read_bytes()).hexdigest()
        return policy_text(
            self.token,
            serial,
            extra=f"""
[[process]]
id     = "hash-rule"
sha256 = ["{digest}"]
action = "block"

[[process]]
id     = "host-exempt-rule"
names  = ["hex{self.token}*"]
action = "block"

[[process]]
id     = "user-exempt-rule"
names  = ["uex{self.token}*"]
action = "block"

[[exemption]]
id     = "this-host"
rules  = ["host-exempt-rule"]
hosts  = ["test-host"]
reason = "lab host"

[[exemption]]
id     = "nobody-may"
rules  = ["user-exempt-rule"]
users  = ["nobody"]
reason = "service account"
""",
        )

    def copy(self, source: str, name: str) -> Path:
        target = self.bin / name
        shutil.copy2(source, target)
        target.chmod(0o755)
        return target


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnforcingAgent]:
    tmp = tmp_path_factory.mktemp("agent")
    unique = tmp / "unique-sleep"
    # a copy of sleep with trailing bytes: a binary nobody else runs, for the hash rule
    unique.write_bytes(Path("/bin/sleep").read_bytes() + secrets.token_bytes(64))
    unique.chmod(0o755)
    env = EnforcingAgent(tmp, secrets.token_hex(3), Signer(), unique)
    env.signer.write(env.policy, env.policy_with(5))
    config = write_config(tmp, env.signer, extra="kill_children = true")
    try:
        with running_agent(config, env.log) as agent:
            env.agent = agent
            yield env
    finally:
        shutil.rmtree(env.bin, ignore_errors=True)


def killed_within(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> bool:
    try:
        return proc.wait(timeout) == -signal.SIGKILL
    except subprocess.TimeoutExpired:
        return False


def event_of(env: EnforcingAgent, pid: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    return list(wait_for(lambda: events_for(env.state, pid), timeout))


def test_denied_name_is_killed_and_the_event_committed(env: EnforcingAgent, procs: Procs) -> None:
    binary = env.copy("/bin/sleep", f"dsk{env.token}-chat")
    proc = procs.start([str(binary), "30"])
    assert killed_within(proc), env.log.read_text()
    events = event_of(env, proc.pid)
    assert [e["action"] for e in events] == ["killed"]
    event = events[0]
    assert event["rule"] == "deepseek-desktop"
    assert event["kind"] == "process"
    assert event["policy"]["serial"] == 5
    assert event["process"]["exe"] == str(binary)
    assert event["host"]["hostname"] == "test-host"


def test_ollama_style_command_line_is_caught(env: EnforcingAgent, procs: Procs) -> None:
    script = env.bin / "ollama"
    script.write_text("#!/usr/bin/python3\nimport time\ntime.sleep(30)\n")
    script.chmod(0o755)
    proc = procs.start([str(script), "run", f"deepseek-r1-{env.token}"])
    assert killed_within(proc), env.log.read_text()
    events = event_of(env, proc.pid)
    assert events[0]["rule"] == "ollama-deepseek"
    assert events[0]["action"] == "killed"


def test_renamed_binary_is_caught_by_its_hash(env: EnforcingAgent, procs: Procs) -> None:
    renamed = env.bin / "totally-innocent"
    shutil.copy2(env.unique_sleep, renamed)
    proc = procs.start([str(renamed), "30"])
    assert killed_within(proc), env.log.read_text()
    assert event_of(env, proc.pid)[0]["rule"] == "hash-rule"


def test_exec_a_with_a_changed_argv0_is_still_caught(env: EnforcingAgent, procs: Procs) -> None:
    binary = env.copy("/bin/sleep", f"dsk{env.token}-a")
    proc = procs.start(["bash", "-c", f"exec -a innocent {binary} 30"])
    assert killed_within(proc), env.log.read_text()
    # and the other way round: an innocent file started under a denied argv0
    innocent = env.copy("/bin/sleep", "plain-sleep")
    proc2 = procs.start(["bash", "-c", f"exec -a dsk{env.token}-argv {innocent} 30"])
    assert killed_within(proc2), env.log.read_text()
    assert event_of(env, proc2.pid)[0]["rule"] == "deepseek-desktop"


def test_a_process_that_renames_its_comm_is_still_caught(env: EnforcingAgent, procs: Procs) -> None:
    python = env.copy(os.path.realpath(sys.executable), f"dsk{env.token}-py")
    code = (
        "import ctypes, time\n"
        "ctypes.CDLL(None).prctl(15, b'innocent', 0, 0, 0)\n"  # PR_SET_NAME
        "time.sleep(30)\n"
    )
    proc = procs.start([str(python), "-c", code])
    assert killed_within(proc), env.log.read_text()


def test_process_renaming_itself_to_a_denied_name_is_caught(
    env: EnforcingAgent, procs: Procs
) -> None:
    """The comm-change event path: an innocent program that renames itself afterwards."""
    code = (
        "import time\n"
        "time.sleep(0.5)\n"
        f"open('/proc/self/comm', 'w').write('dsk{env.token}-x')\n"
        "time.sleep(30)\n"
    )
    proc = procs.start([sys.executable, "-c", code])
    # netlink sees the comm change at once; polling sees it at the next full sweep (slower)
    assert killed_within(proc, timeout=8.0) or proc.poll() is None
    if proc.poll() is None:
        pytest.skip("process sensor is polling: comm changes are seen only at a full sweep")


def test_exempted_host_and_user_are_not_killed(env: EnforcingAgent, procs: Procs) -> None:
    host_exempt = env.copy("/bin/sleep", f"hex{env.token}-1")
    user_exempt = env.copy("/bin/sleep", f"uex{env.token}-1")
    p1 = procs.start([str(host_exempt), "30"])
    p2 = procs.start([str(user_exempt), "30"], user="nobody")
    e1 = event_of(env, p1.pid)
    e2 = event_of(env, p2.pid)
    assert [e["action"] for e in e1] == ["exempted"]
    assert [e["action"] for e in e2] == ["exempted"]
    assert p1.poll() is None and p2.poll() is None
    # the same user-exempt rule for another user (root) is enforced
    p3 = procs.start([str(user_exempt), "30"])
    assert killed_within(p3), env.log.read_text()


def test_long_running_violation_makes_one_event_and_repeats_are_counted(
    env: EnforcingAgent, procs: Procs
) -> None:
    binary = env.copy("/bin/sleep", f"dsk{env.token}-rep")
    pids = []
    for _ in range(3):
        proc = procs.start([str(binary), "30"])
        assert killed_within(proc)
        pids.append(proc.pid)

    def series() -> list[dict[str, Any]]:
        return [
            e for e in spool_events(env.state) if (e.get("process") or {}).get("exe") == str(binary)
        ]

    # one row for the series; the later starts are folded into its count
    assert wait_for(lambda: [e["_count"] for e in series()] == [3], 5), series()


def test_tampered_policy_is_rejected_and_the_old_one_still_enforced(
    env: EnforcingAgent, procs: Procs
) -> None:
    good = env.policy.read_bytes()
    good_sig = env.policy.with_name("policy.toml.sig").read_bytes()
    try:
        before = len([e for e in spool_events(env.state) if e["kind"] == "tamper"])
        # one flipped byte in the signed file, signature unchanged
        tampered = good.replace(b'title   = "Test ban"', b'title   = "Test bam"')
        env.policy.write_bytes(tampered)
        tamper = wait_for(
            lambda: [e for e in spool_events(env.state) if e["kind"] == "tamper"][before:], 10
        )
        assert tamper, env.log.read_text()
        assert "bad_signature" in tamper[0]["detail"]
        # a correctly signed but older serial (rollback) is rejected too
        env.signer.write(env.policy, env.policy_with(3))
        rollback = wait_for(
            lambda: [
                e
                for e in spool_events(env.state)
                if e["kind"] == "tamper" and "rollback" in e.get("detail", "")
            ],
            10,
        )
        assert rollback, env.log.read_text()
        # enforcement continues with serial 5
        binary = env.copy("/bin/sleep", f"dsk{env.token}-tmp")
        proc = procs.start([str(binary), "30"])
        assert killed_within(proc)
        assert event_of(env, proc.pid)[0]["policy"]["serial"] == 5
    finally:
        env.policy.write_bytes(good)
        env.policy.with_name("policy.toml.sig").write_bytes(good_sig)


def one_violation(env: EnforcingAgent, procs: Procs, name: str) -> int:
    """A denied process, killed and spooled: tests need not rely on the module's earlier ones."""
    proc = procs.start([str(env.copy("/bin/sleep", f"dsk{env.token}-{name}")), "30"])
    assert killed_within(proc), env.log.read_text()
    assert event_of(env, proc.pid)
    return proc.pid


def test_status_reports_sensor_policy_and_spool(
    env: EnforcingAgent, procs: Procs, capsys: pytest.CaptureFixture[str]
) -> None:
    one_violation(env, procs, "status")
    config = str(env.tmp / "agent.toml")

    def status_with_events() -> dict[str, Any] | None:
        assert main(["agent", "status", "--json", "--config", config]) == 0
        value: dict[str, Any] = json.loads(capsys.readouterr().out)
        return value if value["spool"]["depth"] >= 1 else None

    # status.json is rewritten every status_interval (0.5 s here): wait for the new event
    status = wait_for(status_with_events, 5)
    assert status, "the spooled event never showed in agent status"
    assert status["running"] is True
    assert status["sensors"]["process"]["state"] == "running"
    assert status["policy"]["serial"] == 5
    assert status["policy"]["stale"] is False
    assert status["spool"]["depth"] >= 1
    assert main(["agent", "status", "--config", config]) == 0
    human = capsys.readouterr().out
    assert "running" in human and "test-ban serial 5" in human
    assert main(["agent", "events", "--config", config]) == 0
    assert "deepseek-desktop" in capsys.readouterr().out


@pytest.mark.slow
def test_agent_survives_kill_9_and_the_spooled_event_is_kept(
    env: EnforcingAgent, procs: Procs
) -> None:
    assert env.agent is not None
    one_violation(env, procs, "pre-kill")
    before = spool_events(env.state)
    assert before
    env.agent.kill()  # SIGKILL, the daemon this module started
    env.agent.wait(5)
    after = spool_events(env.state)
    assert {e["id"] for e in before} <= {e["id"] for e in after}
    # a restarted agent opens the same spool and keeps enforcing
    procs = Procs()
    try:
        with running_agent(env.tmp / "agent.toml", env.tmp / "agent2.log"):
            binary = env.copy("/bin/sleep", f"dsk{env.token}-re")
            proc = procs.start([str(binary), "30"])
            assert killed_within(proc), (env.tmp / "agent2.log").read_text()
            assert event_of(env, proc.pid)
        final = {e["id"] for e in spool_events(env.state)}
        assert {e["id"] for e in before} <= final
    finally:
        procs.cleanup()
