"""Exec-deny for real (root, Linux): a fanotify FAN_OPEN_EXEC_PERM mark on a private tmpfs this
test mounts under its temp dir (never a system mount), real execs of copies of /bin/sleep.

The exec is attempted by a Python child (its interpreter lives on the root filesystem, which is
not marked) that prints its pid and then calls execv on the copy, so the test knows exactly which
pid asked and sees EPERM as the child saw it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from proscribe.agent.config import EnforceSection
from proscribe.agent.enforce.exec_deny import ExecDenyGuard, ExecRequest, ExecVerdict
from tests.support.waits import wait_for

pytestmark = [pytest.mark.root, pytest.mark.linux]

TRY_EXEC = """
import os, sys
print(os.getpid(), flush=True)
try:
    os.execv(sys.argv[1], [sys.argv[1], "0"])
except PermissionError:
    print("EPERM", flush=True)
    sys.exit(3)
"""


@contextmanager
def private_tmpfs(base: Path) -> Iterator[Path]:
    mnt = base / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    with private_tmpfs(tmp_path) as mnt:
        shutil.copy2("/bin/sleep", mnt / "deepseek")
        shutil.copy2("/bin/sleep", mnt / "allowed-tool")
        yield mnt


# As another user: the file is opened first (pytest's temp dirs are 0700) and run by fd.
TRY_EXEC_AS = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.setgid(int(sys.argv[2]))
os.setuid(int(sys.argv[2]))
print(os.getpid(), flush=True)
try:
    os.execve(fd, [sys.argv[1], "0"], {})
except PermissionError:
    print("EPERM", flush=True)
    sys.exit(3)
"""


def try_exec(path: Path, uid: int | None = None) -> tuple[int, int]:
    """(pid of the process that called execv, its exit code: 0 ran, 3 EPERM)."""
    args = ["-c", TRY_EXEC, str(path)] if uid is None else ["-c", TRY_EXEC_AS, str(path), str(uid)]
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=10)
    pid = int(proc.stdout.split()[0])
    if proc.returncode == 3:
        assert "EPERM" in proc.stdout
    return pid, proc.returncode


class Recorder:
    def __init__(self) -> None:
        self.items: list[tuple[ExecRequest, ExecVerdict]] = []
        self.arrived = threading.Event()

    def __call__(self, request: ExecRequest, verdict: ExecVerdict) -> None:
        self.items.append((request, verdict))
        self.arrived.set()


def deny_deepseek(request: ExecRequest) -> ExecVerdict:
    denied = Path(request.path).name.startswith("deepseek")
    return ExecVerdict(
        denied, "name glob 'deepseek*'" if denied else "", "deepseek" if denied else None
    )


@contextmanager
def running(guard: ExecDenyGuard) -> Iterator[ExecDenyGuard]:
    guard.start()
    try:
        yield guard
    finally:
        guard.stop()


def test_denied_copy_fails_with_eperm_and_is_reported_allowed_copy_runs(mnt: Path) -> None:
    seen = Recorder()
    with running(ExecDenyGuard([mnt], deny_deepseek, on_denied=seen)) as guard:
        pid, rc = try_exec(mnt / "deepseek")
        assert rc == 3
        with pytest.raises(PermissionError):
            subprocess.run([str(mnt / "deepseek"), "0"], check=False)
        assert try_exec(mnt / "allowed-tool")[1] == 0
        assert subprocess.run([str(mnt / "allowed-tool"), "0"], check=False).returncode == 0
        assert seen.arrived.wait(2)
        request, verdict = seen.items[0]
        assert request.path == str(mnt / "deepseek") and request.pid == pid
        assert request.uid == 0 and request.user == "root"
        assert verdict.deny and verdict.action == "denied" and verdict.rule_id == "deepseek"
        stats = guard.stats()
        assert stats["denied"] == 2 and stats["allowed"] == 2
        assert stats["cache_hits"] == 2 and stats["cache_misses"] == 2


def test_a_raising_decider_fails_open_and_is_counted(mnt: Path) -> None:
    def broken(_request: ExecRequest) -> ExecVerdict:
        raise RuntimeError("policy bug")

    with running(ExecDenyGuard([mnt], broken)) as guard:
        assert try_exec(mnt / "deepseek")[1] == 0
        assert guard.stats()["errors"] == 1 and guard.stats()["denied"] == 0


def test_a_slow_decider_is_answered_allow_within_the_timeout(mnt: Path) -> None:
    release = threading.Event()

    def slow(request: ExecRequest) -> ExecVerdict:
        release.wait(5)
        return deny_deepseek(request)

    with running(ExecDenyGuard([mnt], slow, timeout_ms=150)) as guard:
        t0 = time.monotonic()
        assert subprocess.run([str(mnt / "deepseek"), "0"], check=False).returncode == 0
        took = time.monotonic() - t0
        # The real fanotify path on the wall clock: at least the 150 ms timeout, and far less
        # than the 5 s the decider would take if the exec waited for it (generous: loaded CI).
        assert 0.14 <= took < 2.5, took
        assert guard.stats()["timeouts"] == 1
        release.set()
    # a late answer is not cached as if it had been given
    assert len(guard.cache) == 0


def test_after_a_hung_check_a_fresh_reader_keeps_denying(mnt: Path) -> None:
    release = threading.Event()
    first = [True]

    def hangs_once(request: ExecRequest) -> ExecVerdict:
        if first[0]:
            first[0] = False
            release.wait(5)
        return deny_deepseek(request)

    with running(ExecDenyGuard([mnt], hangs_once, timeout_ms=100)) as guard:
        try:
            assert try_exec(mnt / "allowed-tool")[1] == 0  # hung, answered by the watchdog
            assert guard.stats()["stuck_checks"] == 1
            t0 = time.monotonic()
            assert try_exec(mnt / "deepseek")[1] == 3  # judged by the new reader
            assert try_exec(mnt / "allowed-tool")[1] == 0
            # real kernel path, wall clock: far below the 5 s a wait for the hung reader takes
            assert time.monotonic() - t0 < 2.5
            assert guard.stats()["timeouts"] == 1 and guard.stats()["denied"] == 1
        finally:
            release.set()
        # the late thread gives up its place
        assert wait_for(lambda: guard.stats()["stuck_checks"] == 0, 2), guard.stats()


def test_too_many_hung_checks_allow_misses_unchecked(mnt: Path) -> None:
    release = threading.Event()

    def stuck(_request: ExecRequest) -> ExecVerdict:
        release.wait(5)
        return ExecVerdict(True)

    with running(ExecDenyGuard([mnt], stuck, timeout_ms=50, max_stuck=1)) as guard:
        try:
            assert try_exec(mnt / "deepseek")[1] == 0  # times out; that check stays stuck
            t0 = time.monotonic()
            assert try_exec(mnt / "allowed-tool")[1] == 0
            # real kernel path, wall clock: far below the 5 s a wait for the stuck check takes
            assert time.monotonic() - t0 < 2.5
            stats = guard.stats()
            assert stats["timeouts"] == 1 and stats["overloads"] == 1
        finally:
            release.set()


def test_monitor_mode_allows_and_reports_would_block(mnt: Path) -> None:
    seen = Recorder()
    with running(ExecDenyGuard([mnt], deny_deepseek, mode="monitor", on_denied=seen)) as guard:
        pid, rc = try_exec(mnt / "deepseek")
        assert rc == 0
        assert seen.arrived.wait(2)
        request, verdict = seen.items[0]
        assert request.pid == pid and verdict.action == "would_block" and not verdict.enforced
        assert guard.stats()["would_block"] == 1 and guard.stats()["denied"] == 0


def test_cache_hit_then_a_modified_file_is_judged_again(mnt: Path) -> None:
    calls: list[str] = []

    def counting(request: ExecRequest) -> ExecVerdict:
        calls.append(request.path)
        return ExecVerdict(False)

    tool = mnt / "allowed-tool"
    with running(ExecDenyGuard([mnt], counting)) as guard:
        assert try_exec(tool)[1] == 0
        assert try_exec(tool)[1] == 0
        assert calls == [str(tool)] and guard.stats()["cache_hits"] == 1
        st = os.stat(tool)
        os.utime(tool, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
        assert try_exec(tool)[1] == 0
        assert calls == [str(tool)] * 2
        # a new policy drops every cached verdict
        guard.set_decider(lambda r: ExecVerdict(True, "new policy"))
        assert try_exec(tool)[1] == 3


def test_sha256_is_read_from_the_event_fd_when_the_policy_needs_it(mnt: Path) -> None:
    import hashlib

    want = hashlib.sha256((mnt / "deepseek").read_bytes()).hexdigest()

    def by_hash(request: ExecRequest) -> ExecVerdict:
        return ExecVerdict(request.sha256 == want, "sha256")

    with running(ExecDenyGuard([mnt], by_hash, want_sha256=lambda: True)):
        assert try_exec(mnt / "deepseek")[1] == 3
        assert try_exec(mnt / "allowed-tool")[1] == 3  # the same bytes under another name


def test_renaming_an_allowed_file_to_a_denied_name_is_judged_again(mnt: Path) -> None:
    with running(ExecDenyGuard([mnt], deny_deepseek)) as guard:
        assert try_exec(mnt / "allowed-tool")[1] == 0
        time.sleep(0.02)  # ctime moves with the kernel's coarse clock
        os.rename(mnt / "allowed-tool", mnt / "deepseek-renamed")
        assert try_exec(mnt / "deepseek-renamed")[1] == 3
        assert guard.stats()["cache_misses"] == 2


def test_a_per_user_exemption_is_not_reused_for_another_user(mnt: Path) -> None:
    """Root is exempted from the rule, nobody is not: the cached verdict for root must not let
    nobody's exec of the same file through."""
    from proscribe.agent.enforce.exec_deny import policy_decider
    from proscribe.core.policy.loader import load_policy
    from proscribe.core.policy.matchers import CompiledPolicy

    policy = (
        POLICY
        + b"""
[[exemption]]
id    = "root-lab"
rules = ["deepseek-desktop"]
users = ["root"]
"""
    )
    compiled = CompiledPolicy.compile(load_policy(policy, "t.toml"))
    seen = Recorder()
    guard = ExecDenyGuard([mnt], policy_decider(compiled, "h"), on_denied=seen)
    with running(guard):
        assert try_exec(mnt / "deepseek")[1] == 0
        assert try_exec(mnt / "deepseek")[1] == 0
        pid, rc = try_exec(mnt / "deepseek", uid=65534)
        assert rc == 3
        assert try_exec(mnt / "deepseek")[1] == 0
        assert try_exec(mnt / "allowed-tool", uid=65534)[1] == 0
        assert guard.stats()["denied"] == 1
        assert seen.arrived.wait(2)
        request, verdict = seen.items[0]
        assert (request.pid, request.uid, request.user) == (pid, 65534, "nobody")
        assert verdict.per_user and verdict.rule_id == "deepseek-desktop"


def test_protected_executables_are_never_denied(mnt: Path) -> None:
    guard = ExecDenyGuard([mnt], lambda r: ExecVerdict(True), protect=[str(mnt / "deepseek")])
    with running(guard):
        assert try_exec(mnt / "deepseek")[1] == 0
        assert try_exec(mnt / "allowed-tool")[1] == 3
        assert guard.stats()["self_allowed"] == 1


def test_after_stop_exec_works_again(mnt: Path) -> None:
    guard = ExecDenyGuard([mnt], deny_deepseek)
    with running(guard):
        assert try_exec(mnt / "deepseek")[1] == 3
    assert not guard.running
    assert try_exec(mnt / "deepseek")[1] == 0


def test_stop_is_bounded_while_a_check_hangs(mnt: Path) -> None:
    release = threading.Event()
    entered = threading.Event()

    def hangs(_request: ExecRequest) -> ExecVerdict:
        entered.set()
        release.wait(10)
        return ExecVerdict(True)

    guard = ExecDenyGuard([mnt], hangs, timeout_ms=5000)
    guard.start()
    try:
        # a Python child does the exec: Popen of the file itself would wait for the exec
        proc = subprocess.Popen(
            [sys.executable, "-c", TRY_EXEC, str(mnt / "deepseek")], stdout=subprocess.DEVNULL
        )
        assert entered.wait(5)
        t0 = time.monotonic()
        guard.stop()
        # real kernel path, wall clock: far below the 10 s the hung decider would hold it
        assert time.monotonic() - t0 < 2.5
        assert proc.wait(5) == 0  # closing the group released the waiting exec
    finally:
        release.set()
        guard.stop()


def test_the_mount_is_gone_after_teardown_even_on_failure(tmp_path: Path) -> None:
    seen: list[Path] = []
    with pytest.raises(RuntimeError), private_tmpfs(tmp_path) as mnt:
        seen.append(mnt)
        guard = ExecDenyGuard([mnt], deny_deepseek)
        with running(guard):
            raise RuntimeError("test body failed")
    assert not os.path.ismount(seen[0])
    assert str(seen[0]) not in Path("/proc/self/mounts").read_text()


def test_start_refuses_a_directory_that_is_not_a_mount(mnt: Path) -> None:
    from proscribe.core.errors import ConfigError

    sub = mnt / "sub"
    sub.mkdir()
    guard = ExecDenyGuard([sub], deny_deepseek)
    with pytest.raises(ConfigError, match="not a mount point"):
        guard.start()
    assert not guard.running


POLICY = b"""
[meta]
schema  = 1
id      = "t"
serial  = 1
issued  = 2025-01-24T00:00:00Z
expires = 2030-01-01T00:00:00Z
title   = "t"

[[process]]
id     = "deepseek-desktop"
names  = ["deepseek*"]
action = "block"
"""


def run_policy_guard(mnt: Path, on_denied: Callable[[ExecRequest, ExecVerdict], None]) -> None:
    """The daemon's wiring: build_exec_guard over a real compiled policy."""
    from proscribe.agent.enforce.exec_deny import build_exec_guard
    from proscribe.core.policy.loader import load_policy
    from proscribe.core.policy.matchers import CompiledPolicy

    compiled = CompiledPolicy.compile(load_policy(POLICY, "t.toml"))
    guard = build_exec_guard(
        EnforceSection(exec_deny_mounts=(str(mnt),)),
        lambda: compiled,
        on_denied,
        "enforce",
        host="h",
    )
    assert guard is not None
    with running(guard):
        assert try_exec(mnt / "deepseek")[1] == 3
        assert try_exec(mnt / "allowed-tool")[1] == 0


def test_build_exec_guard_denies_by_a_real_policy(mnt: Path) -> None:
    seen = Recorder()
    run_policy_guard(mnt, seen)
    assert seen.arrived.wait(2)
    request, verdict = seen.items[0]
    assert verdict.rule_id == "deepseek-desktop"
    assert "name glob 'deepseek*' matched" in verdict.reason
    assert request.path.endswith("/deepseek")


# A process whose real uid is a user while its effective uid is root, as inside a setuid-root
# program: it opens the file as root, then execs it (fd-based: pytest's temp dirs are 0700).
SETRESUID_EXEC = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.setresuid(int(sys.argv[2]), 0, 0)
print(os.getpid(), flush=True)
try:
    os.execve(fd, [sys.argv[1], "5"], {})
except PermissionError:
    print("EPERM", flush=True)
    sys.exit(3)
"""

EXEMPT_NOBODY = (
    POLICY
    + b"""
[[exemption]]
id     = "nobody-may"
rules  = ["deepseek-desktop"]
users  = ["nobody"]
reason = "service account"
"""
)


def test_a_setuid_caller_is_judged_by_its_real_user_before_and_after_exec(mnt: Path) -> None:
    """One meaning of uid: the pre-exec guard and the process sensor's reader both judge by the
    real uid (``nobody`` here, exempt) and both record the effective uid (root) beside it.
    Before, the guard took the owner of /proc/PID (root) and refused what the sensor let run."""
    import pwd
    from datetime import UTC, datetime

    from proscribe.agent.enforce.exec_verdicts import policy_decider
    from proscribe.agent.sensors.enrich import Enricher
    from proscribe.core.policy.loader import load_policy
    from proscribe.core.policy.matchers import CompiledPolicy

    nobody = pwd.getpwnam("nobody").pw_uid
    compiled = CompiledPolicy.compile(load_policy(EXEMPT_NOBODY, "t.toml"))
    decide = policy_decider(compiled, "h")
    asked: list[ExecRequest] = []

    def recording(request: ExecRequest) -> ExecVerdict:
        asked.append(request)
        return decide(request)

    with running(ExecDenyGuard([mnt], recording)):
        child = subprocess.Popen(
            [sys.executable, "-c", SETRESUID_EXEC, str(mnt / "deepseek"), str(nobody)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            pid = int(child.stdout.readline())
            # the sensor's reader, after the exec: the real user, and the effective uid beside it
            deadline = time.monotonic() + 5
            facts = Enricher().facts(pid)
            while facts is not None and facts.exe != str(mnt / "deepseek"):
                assert time.monotonic() < deadline, facts
                time.sleep(0.01)
                facts = Enricher().facts(pid)
            assert facts is not None
            assert (facts.uid, facts.euid, facts.user) == (nobody, 0, "nobody")
            (decision,) = compiled.check_process(facts, "h", datetime.now(UTC))
            assert decision.exempted_by == "nobody-may"
            # the pre-exec guard judged the same exec by the same facts: exempt, so it ran
            (request,) = [r for r in asked if r.pid == pid]
            assert (request.uid, request.euid, request.user) == (nobody, 0, "nobody")
            assert not decide(request).deny
            assert child.poll() is None  # running, not refused before start
        finally:
            child.kill()
            child.wait(10)
            if child.stdout is not None:
                child.stdout.close()
