"""The eBPF exec guard with the real kernel: denied programs die before their first instruction,
on every way of starting them, and nothing else is touched.

Each test loads its own copy of the guard, puts only names and files it created (unique per
test) into the maps, and closes it (detached) at the end. The "program" is a copy of
``/bin/touch`` whose first action is to create a marker file: a marker means it ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from proscribe.agent.enforce.bpf.guard import BpfUnavailable, KernelExecGuard, KernelReport
from proscribe.agent.enforce.bpf.libbpf import BpfObject
from proscribe.agent.enforce.bpf.plan import GuardPlan, file_id, resolve_loaders
from tests.support.waits import wait_for

pytestmark = [pytest.mark.root, pytest.mark.linux]

LOADER = next(iter(resolve_loaders().values()), "/lib64/ld-linux-x86-64.so.2")


@pytest.fixture(params=["mmap_lock", "sys_enter"])
def guard(request: pytest.FixtureRequest) -> Iterator[tuple[KernelExecGuard, list[KernelReport]]]:
    """The guard with each executable-mapping hook: the tracepoint on the address-space lock
    (used wherever the kernel has it) and the sys_enter fallback."""
    reports: list[KernelReport] = []
    g = KernelExecGuard.open(reports.append, mmap_hook=request.param)
    assert g.mmap_hook == request.param and g.stats()["mmap_hook"] == request.param
    g.set_loaders(resolve_loaders())
    g.start()
    try:
        yield g, reports
    finally:
        g.close()


def _program(directory: Path, name: str) -> Path:
    path = directory / name
    shutil.copy("/bin/touch", path)
    return path


def _run(argv: list[str], **kw: object) -> int:
    return subprocess.run(argv, timeout=30, check=False, **kw).returncode  # type: ignore[call-overload, no-any-return]


def _token() -> str:
    return uuid.uuid4().hex[:8]


def test_names_exact_and_prefix_die_before_running_lookalikes_run(
    guard: tuple[KernelExecGuard, list[KernelReport]], tmp_path: Path
) -> None:
    g, reports = guard
    t = _token()
    plan = GuardPlan()
    plan.exact[f"zzexact{t}"] = plan.rule_number("exact-rule")
    plan.prefixes[f"zzpre{t}"] = plan.rule_number("prefix-rule")
    g.apply(plan)
    cases = {
        f"zzexact{t}": True,
        f"ZZExact{t}": True,  # names are judged lower-cased
        f"zzpre{t}-desktop": True,
        f"zzpre{t}": True,
        f"zzexact{t}x": False,  # an exact name is not a prefix
        f"zzexac{t}": False,
        f"xzzpre{t}": False,  # a prefix anchors at the start
    }
    for name, denied in cases.items():
        marker = tmp_path / f"marker-{name}"
        rc = _run([str(_program(tmp_path, name)), str(marker)])
        assert marker.exists() is not denied, name
        assert (rc == -9) is denied, (name, rc)
    assert wait_for(lambda: len(reports) == 4, timeout=5)
    assert {r.rule_id for r in reports} == {"exact-rule", "prefix-rule"}
    first = reports[0]
    assert first.kind == "exec" and first.killed and first.uid == 0
    assert first.ppid == os.getpid() and first.filename == str(tmp_path / f"zzexact{t}")


def test_every_way_around_a_name_is_closed(
    guard: tuple[KernelExecGuard, list[KernelReport]], tmp_path: Path
) -> None:
    """ld.so FILE, ld.so --argv0, a symlink with an innocent name, exec -a."""
    g, reports = guard
    t = _token()
    plan = GuardPlan()
    plan.exact[f"zzseek{t}"] = plan.rule_number("r")
    g.apply(plan)
    program = _program(tmp_path, f"zzseek{t}")
    link = tmp_path / "notes"
    link.symlink_to(program)
    ways = {
        "loader": [LOADER, str(program)],
        "loader-argv0": [LOADER, "--argv0", "vim", str(program)],
        "symlink": [str(link)],
    }
    for way, argv in ways.items():
        marker = tmp_path / f"m-{way}"
        assert _run([*argv, str(marker)]) == -9, way
        assert not marker.exists(), way
    marker = tmp_path / "m-exec-a"
    _run(["bash", "-c", f'exec -a innocent "{program}" "{marker}"'])
    assert not marker.exists()
    assert wait_for(lambda: len(reports) == 4, timeout=5)
    kinds = sorted((r.kind, r.why) for r in reports)
    assert kinds == [
        ("exec", "comm"),
        ("exec", "exe_name"),
        ("mmap", "loaded_name"),
        ("mmap", "loaded_name"),
    ]


def test_a_copy_of_the_loader_under_another_name_is_a_loader_too(
    guard: tuple[KernelExecGuard, list[KernelReport]], tmp_path: Path
) -> None:
    """The kernel knows an ELF interpreter by its header (ET_DYN without PT_INTERP), not only
    by the installed loaders' inodes; a program that merely loads a library with a denied-looking
    name is not one."""
    g, reports = guard
    t = _token()
    plan = GuardPlan()
    plan.exact[f"zzseek{t}"] = plan.rule_number("r")
    plan.prefixes[f"zzlib{t}"] = plan.rule_number("r")
    g.apply(plan)
    program = _program(tmp_path, f"zzseek{t}")
    viewer = tmp_path / "notes-viewer"
    shutil.copy(os.path.realpath(LOADER), viewer)
    marker = tmp_path / "m-copied-loader"
    assert _run([str(viewer), str(program), str(marker)]) == -9
    assert not marker.exists()
    library = tmp_path / f"zzlib{t}-helper.so"
    shutil.copy(next(Path("/usr/lib/x86_64-linux-gnu").glob("libm.so.6")), library)
    code = f"import ctypes; ctypes.CDLL({str(library)!r})"
    assert _run([sys.executable, "-c", code]) == 0  # a library mapped by python: not a program
    assert wait_for(lambda: len(reports) == 1, timeout=5)
    assert (reports[0].kind, reports[0].why, reports[0].comm) == (
        "mmap",
        "loaded_name",
        "notes-viewer",
    )


def test_files_by_device_and_inode_whatever_their_name(
    guard: tuple[KernelExecGuard, list[KernelReport]], tmp_path: Path
) -> None:
    g, reports = guard
    denied = _program(tmp_path, "innocent-looking")
    twin = _program(tmp_path, "same-bytes-other-file")  # same content, another inode: runs
    plan = GuardPlan()
    plan.files[file_id(os.stat(denied))] = (plan.rule_number("path-rule"), str(denied))
    g.apply(plan)
    renamed = tmp_path / "renamed"
    os.rename(denied, renamed)  # a rename keeps the inode
    for argv in ([str(renamed)], [LOADER, str(renamed)]):
        marker = tmp_path / f"m{len(reports)}"
        assert _run([*argv, str(marker)]) == -9
        assert not marker.exists()
    ok = tmp_path / "ok"
    assert _run([str(twin), str(ok)]) == 0 and ok.exists()
    # reading, hashing or copying the denied file is not running it
    assert _run(["sha256sum", str(renamed)], stdout=subprocess.DEVNULL) == 0
    assert _run(["cp", str(renamed), str(tmp_path / "copy")]) == 0
    assert wait_for(lambda: len(reports) == 2, timeout=5)
    assert {(r.why, r.ino) for r in reports} == {("inode", os.stat(renamed).st_ino)}


def test_a_learned_hash_lapses_when_the_file_changes(
    guard: tuple[KernelExecGuard, list[KernelReport]], tmp_path: Path
) -> None:
    """A file denied by hash is denied by its identity and ctime: rewritten (mtime restored or
    not) it is judged again, not killed on stale knowledge."""
    g, _reports = guard
    program = _program(tmp_path, "hashed")
    plan = GuardPlan()
    plan.rule_number("hash-rule")
    g.apply(plan)
    st = os.stat(program)
    assert g.learn_file(file_id(st), "hash-rule", st.st_ctime_ns)
    assert not g.learn_file(file_id(st), "not-the-kernels", st.st_ctime_ns)
    assert _run([str(program), str(tmp_path / "m1")]) == -9
    shutil.copy("/bin/true", program)  # rewritten in place: same inode, new ctime
    os.utime(program, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(program).st_ino == st.st_ino
    assert _run([str(program)]) == 0


def test_policy_change_updates_the_maps_and_close_detaches(tmp_path: Path) -> None:
    reports: list[KernelReport] = []
    g = KernelExecGuard.open(reports.append)
    t = _token()
    name = f"zzchange{t}"
    program = _program(tmp_path, name)
    try:
        plan = GuardPlan()
        plan.exact[name] = plan.rule_number("r")
        g.apply(plan)
        assert _run([str(program), str(tmp_path / "m1")]) == -9
        g.apply(GuardPlan())  # the rule is gone: the name runs again
        assert _run([str(program), str(tmp_path / "m2")]) == 0
        g.apply(plan)
    finally:
        g.close()
    assert _run([str(program), str(tmp_path / "m3")]) == 0  # nothing stays in the kernel
    assert (tmp_path / "m3").exists()


def test_the_mapping_check_uses_the_lock_tracepoint_and_falls_back_to_sys_enter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """auto: the mmap_lock tracepoint where the kernel takes it (this kernel does); where it
    refuses it, sys_enter, and the stats say so and why. The refusal is simulated at attach
    time; both objects are really loaded and attached."""
    g = KernelExecGuard.open(lambda report: None)
    try:
        assert g.mmap_hook == "mmap_lock" and "mmap_hook_detail" not in g.stats()
    finally:
        g.close()
    real_attach = BpfObject.attach

    def refuse_lock_hook(self: BpfObject, program: str) -> None:
        if program == "guard_mmap":
            raise BpfUnavailable("cannot attach guard_mmap: ENOENT (No such file or directory)")
        real_attach(self, program)

    monkeypatch.setattr(BpfObject, "attach", refuse_lock_hook)
    reports: list[KernelReport] = []
    g = KernelExecGuard.open(reports.append)
    try:
        g.set_loaders(resolve_loaders())
        g.start()
        stats = g.stats()
        assert stats["mmap_hook"] == "sys_enter"
        assert stats["mmap_hook_detail"] == (
            "mmap_lock refused: cannot attach guard_mmap: ENOENT (No such file or directory)"
        )
        assert "loader check on sys_enter, every system call pays (mmap_lock refused" in (
            caplog.text
        )
        t = _token()
        plan = GuardPlan()
        plan.exact[f"zzseek{t}"] = plan.rule_number("r")
        g.apply(plan)
        marker = tmp_path / "m"
        assert _run([LOADER, str(_program(tmp_path, f"zzseek{t}")), str(marker)]) == -9
        assert not marker.exists()
        assert wait_for(lambda: [r.kind for r in reports] == ["mmap"], timeout=5)
    finally:
        g.close()
    with pytest.raises(BpfUnavailable, match="cannot attach guard_mmap"):
        KernelExecGuard.open(print, mmap_hook="mmap_lock")


def test_without_root_it_says_why_in_one_line() -> None:
    code = (
        "import os\n"
        "from proscribe.agent.enforce.bpf.guard import KernelExecGuard, BpfUnavailable\n"
        "os.setgid(65534); os.setuid(65534)  # imported as root (the tree may be private)\n"
        "try:\n"
        "    KernelExecGuard.open(print)\n"
        "except BpfUnavailable as err:\n"
        "    print('unavailable:', err)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert out == "unavailable: not running as root\n"


def test_exec_overhead_is_not_measurable_in_a_test(
    guard: tuple[KernelExecGuard, list[KernelReport]],
) -> None:
    """A sanity bound only (figures are in bench/exec_guard.py): 50 execs of /bin/true with the
    guard loaded and a plan of 10,000 names take well under a second more than a plain exec."""
    g, _ = guard
    plan = GuardPlan()
    for i in range(10_000):
        plan.exact[f"zzbulk{i:05d}"] = plan.rule_number(f"rule{i % 7}")
    began = time.monotonic()
    g.apply(plan)
    assert time.monotonic() - began < 10
    began = time.monotonic()
    for _ in range(50):
        assert _run(["/bin/true"]) == 0
    assert time.monotonic() - began < 5
