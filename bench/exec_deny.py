"""Per-exec overhead of pre-exec deny: no guard vs our fanotify guard (cache warm and cold) vs
fapolicyd, side by side in one run.

Everything happens inside a private mount namespace (the script re-executes itself under
``unshare --mount``). Four mounts each hold a copy of /bin/true:

* ``base``  tmpfs, no guard;
* ``warm``  tmpfs, our :class:`ExecDenyGuard` (verdict cache on), deciding with the shipped
  ``government-restricted-ai-2025`` policy through ``policy_decider``;
* ``cold``  tmpfs, a second guard with ``cache_size=0`` (every exec runs the policy check on a
  worker thread);
* ``fapo``  ramfs, watched by fapolicyd 1.1.7 (Debian) in permissive mode (it never denies)
  with ``watch_fs = ramfs`` and one path rule, so it marks only ramfs mounts *of this
  namespace* with ``FAN_MARK_MOUNT``. Mounts in a new namespace are copies: no process outside
  this script's namespace ever waits for it. Before measuring, the script checks that
  fapolicyd's fanotify fdinfo shows only mount marks (no ``sdev:`` filesystem marks, which would
  reach a shared superblock) and that the namespace differs from the caller's; otherwise the
  fapolicyd figures are skipped with the reason. /run, /var/log, /var/lib/fapolicyd and
  /etc/fapolicyd are private tmpfs or bind mounts inside the namespace, so nothing on the host
  is written. fapolicyd runs as root here (``uid = root``: dropping to its own user fails in
  this container).

A separate process execs the four copies round-robin (``posix_spawn`` + ``waitpid``, timed from
spawn to reap), so every condition sees the same machine noise; the overhead of a condition is
its median minus the unguarded median of the same run. After fapolicyd stops, a second
round-robin of ``base`` and ``fapo`` measures the tmpfs/ramfs difference without any guard.

    .venv/bin/python -m bench.exec_deny [--execs 500]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / "policies" / "government-restricted-ai-2025.toml"


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


# The timing loop runs in its own process: the guard answers from a Python thread, and
# os.posix_spawn keeps the GIL while the kernel waits for that answer, so spawning from the
# guard's own process would deadlock (see docs/exec-deny.md).
EXEC_LOOP = """
import os, sys, time
n, tools = int(sys.argv[1]), sys.argv[2:]
out = {t: [] for t in tools}
for i in range(n):
    k = i % len(tools)  # rotate the order so no condition always follows the same one
    for tool in tools[k:] + tools[:k]:
        t0 = time.perf_counter_ns()
        pid = os.posix_spawn(tool, [tool], {})
        _, status = os.waitpid(pid, 0)
        out[tool].append((time.perf_counter_ns() - t0) / 1000)
        if status != 0:
            sys.exit(f"{tool} exited with status {status}")
for tool in tools:
    print(" ".join(f"{x:.1f}" for x in out[tool]))
"""


def time_execs(tools: list[Path], n: int) -> list[list[float]]:
    """Microseconds from posix_spawn to waitpid, per tool, for ``n`` round-robin rounds."""
    proc = subprocess.run(
        [sys.executable, "-c", EXEC_LOOP, str(n), *map(str, tools)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"exec loop failed: {proc.stderr.strip()}")
    return [[float(x) for x in line.split()] for line in proc.stdout.splitlines()]


def p99(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * 0.99))]


@contextmanager
def our_guard(mnt: Path, cache_size: int) -> Iterator[Any]:
    from datetime import UTC, datetime

    from proscribe.agent.enforce.exec_deny import ExecDenyGuard, policy_decider
    from proscribe.core.policy.loader import load_policy_file
    from proscribe.core.policy.matchers import CompiledPolicy

    compiled = CompiledPolicy.compile(load_policy_file(PACK))
    decide = policy_decider(compiled, "bench-host", lambda: datetime.now(UTC))
    guard = ExecDenyGuard([mnt], decide, cache_size=cache_size)
    guard.start()
    try:
        yield guard
    finally:
        guard.stop()


def fanotify_marks(pid: int) -> tuple[list[str], list[str]]:
    """(mount-mark mnt_ids, filesystem-mark lines) of every fanotify fd of ``pid``."""
    mounts: list[str] = []
    filesystems: list[str] = []
    for fdinfo in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = fdinfo.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("fanotify mnt_id:"):
                mounts.append(str(int(line.split()[1].split(":")[1], 16)))  # printed in hex
            elif line.startswith("fanotify sdev:") or line.startswith("fanotify ino:"):
                filesystems.append(line)
    return mounts, filesystems


def mount_points(pid: int, ids: list[str]) -> list[str]:
    by_id = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        by_id[fields[0]] = fields[4]
    return [by_id.get(i, f"?{i}") for i in ids]


FAPOLICYD_CONF = """\
permissive = 1
nice_val = 0
q_size = 640
uid = root
gid = root
do_stat_report = 0
detailed_report = 0
db_max_size = 50
subj_cache_size = 1549
obj_cache_size = 8191
watch_fs = ramfs
trust = file
integrity = none
syslog_format = rule,dec,perm,auid,pid,exe,:,path,ftype,trust
rpm_sha256_only = 0
allow_filesystem_mark = 0
"""


@contextmanager
def fapolicyd(work: Path, mnt: Path, host_ns: str) -> Iterator[str | None]:
    """Run fapolicyd watching ramfs mounts of this namespace; yields None, or why it cannot."""
    if shutil.which("fapolicyd") is None:
        yield "fapolicyd is not installed"
        return
    if os.readlink("/proc/self/ns/mnt") == host_ns:
        yield "not in a private mount namespace"
        return
    conf = work / "fapolicyd-etc"
    (conf / "rules.d").mkdir(parents=True)
    (conf / "trust.d").mkdir()
    (conf / "fapolicyd.conf").write_text(FAPOLICYD_CONF)
    (conf / "fapolicyd.trust").write_text("")
    rules = f"deny perm=execute all : path={mnt}/deepseek\nallow perm=any all : all\n"
    for name in ("compiled.rules", "fapolicyd.rules", "rules.d/10-bench.rules"):
        (conf / name).write_text(rules)
    # Private copies of everything fapolicyd writes to; only this namespace sees them.
    for target in ("/run", "/var/log", "/var/lib/fapolicyd"):
        run("mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", target)
    run("mount", "--bind", str(conf), "/etc/fapolicyd")
    os.mkdir("/run/fapolicyd", 0o770)
    log_path = work / "fapolicyd.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["fapolicyd", "--debug-deny", "--permissive"], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 20
        while b"Starting to listen for events" not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-300:]
                yield f"fapolicyd did not start: {tail!r}"
                return
            time.sleep(0.05)
        marks, fs_marks = fanotify_marks(proc.pid)
        points = mount_points(proc.pid, marks)
        if fs_marks or points != [str(mnt)]:
            yield f"unexpected fapolicyd marks (filesystem: {fs_marks}, mounts: {points})"
            return
        print(f"fapolicyd pid {proc.pid} (permissive): mount mark on {points[0]} only")
        yield None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def paired(xs: list[float], base: list[float]) -> float:
    """Median over rounds of (this exec - the unguarded exec of the same round)."""
    return statistics.median(x - b for x, b in zip(xs, base, strict=True))


def line(label: str, xs: list[float], base: list[float], peer: float | None = None) -> str:
    over = paired(xs, base)
    text = f"{label:<28} median {statistics.median(xs):7.1f}  p99 {p99(xs):8.1f}"
    text += f"  overhead {over:+7.1f}"
    if peer is not None:
        text += f"  ratio to fapolicyd's overhead {over / peer:5.2f}"
    return text


def in_namespace(n: int, host_ns: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="proscribe-exec-bench-"))
    mounts = {name: work / name for name in ("base", "warm", "cold", "fapo")}
    try:
        for name, mnt in mounts.items():
            mnt.mkdir()
            fstype = "ramfs" if name == "fapo" else "tmpfs"
            run("mount", "-t", fstype, "-o", "size=64m", fstype, str(mnt))
            shutil.copy2("/bin/true", mnt / "true")
        tools = [mounts[k] / "true" for k in ("base", "warm", "cold", "fapo")]
        with (
            our_guard(mounts["warm"], 4096) as warm,
            our_guard(mounts["cold"], 0) as cold,
            fapolicyd(work, mounts["fapo"], host_ns) as why_not,
        ):
            time_execs(tools, 20)  # warm-up (fills the warm guard's cache)
            base, ours_warm, ours_cold, fap = time_execs(tools, n)
            warm_stats, cold_stats = warm.stats(), cold.stats()
        after_base, after_ramfs = time_execs([tools[0], tools[3]], n)
        print(f"\n{n} rounds of execs of /bin/true copies on private mounts, spawn->reap, µs")
        print("(overhead: median of per-round differences to the unguarded exec of that round)")
        print(line("no guard (tmpfs)", base, base))
        peer = None
        if why_not is None:
            peer = paired(fap, base)
            print(line("fapolicyd permissive (ramfs)", fap, base))
        print(line("ours, cache warm", ours_warm, base, peer))
        print(line("ours, cache cold", ours_cold, base, peer))
        if why_not is not None:
            print(f"fapolicyd not measured: {why_not}")
        print("afterwards, no guards at all:")
        print(line("no guard (tmpfs)", after_base, after_base))
        print(line("no guard (ramfs)", after_ramfs, after_base))
        print(f"our counters: warm {_counts(warm_stats)}; cold {_counts(cold_stats)}")
    finally:
        for mnt in mounts.values():
            subprocess.run(["umount", "-l", str(mnt)], check=False, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


def _counts(stats: dict[str, Any]) -> str:
    keys = ("allowed", "cache_hits", "cache_misses", "timeouts", "errors", "mean_answer_us")
    return ", ".join(f"{k}={stats[k]}" for k in keys)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execs", type=int, default=500)
    parser.add_argument("--in-namespace", metavar="HOST_NS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        print("needs root on Linux (fanotify permission events)")
        return 2
    if args.in_namespace:
        in_namespace(args.execs, args.in_namespace)
        return 0
    host_ns = os.readlink("/proc/self/ns/mnt")
    cmd = ["unshare", "--mount", "--propagation", "private", "--", sys.executable, __file__]
    argv = [*cmd, "--execs", str(args.execs), "--in-namespace", host_ns]
    return subprocess.run(argv, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
