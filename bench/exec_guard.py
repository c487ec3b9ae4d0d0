"""The eBPF exec guard: does anything get through, what does it cost, how big and how quick.

Printed side by side from one run (root, Linux with BTF):

1. **Markers**: a denied program whose first action is to create a marker file (a copy of
   ``touch``), started N times each way — by its name, through the dynamic loader
   (``ld.so FILE``), through a symlink with an innocent name, with another argv[0]
   (``exec -a``), and as a renamed copy denied by its hash (learned by device and inode, as the
   agent does after the first sighting). Expected: 0 markers.
2. **Per-exec overhead**: posix_spawn→waitpid of ``/bin/true`` on a private tmpfs, round-robin
   batches with no guard, with the eBPF guard (10,000 names in its trie) and with the fanotify
   pre-exec guard marking that tmpfs (cache warm). Medians, and the ratio to no guard measured
   in the same run. The mmap hook runs on every system call (raw ``sys_enter``), so a
   syscall-bound loop (``dd bs=1``, two syscalls per byte) is timed too.
3. **Map memory** for a 10,000-name policy (the kernel's ``memlock`` figure per map), and the
   **time from a policy change to the maps in force** (TOML parse + plan + map writes).

fapolicyd is measured by ``bench/exec_deny.py`` (it needs its own mount namespace set-up).

    .venv/bin/python -m bench.exec_guard [--starts 1000] [--rounds 20] [--batch 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOADER = "/lib64/ld-linux-x86-64.so.2"

# A separate process spawns (the fanotify guard answers from a Python thread of this one).
EXEC_LOOP = """
import os, sys, time
n, tool = int(sys.argv[1]), sys.argv[2]
out = []
for i in range(n):
    t0 = time.perf_counter_ns()
    pid = os.posix_spawn(tool, [tool], {})
    os.waitpid(pid, 0)
    out.append((time.perf_counter_ns() - t0) / 1000)
print(" ".join(f"{x:.1f}" for x in out))
"""


def _spawn_times(tool: Path, n: int) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-c", EXEC_LOOP, str(n), str(tool)],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout  # fmt: skip
    return [float(x) for x in out.split()]


def _dd_seconds() -> float:
    t0 = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=300000"],
        check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - t0


def markers(starts: int, work: Path) -> dict[str, int]:
    from proscribe.agent.enforce.bpf.guard import KernelExecGuard
    from proscribe.agent.enforce.bpf.plan import GuardPlan, file_id, resolve_loaders

    token = os.urandom(4).hex()
    name = f"zzbench{token}"
    program = work / name
    shutil.copy("/bin/touch", program)
    renamed = work / "report-final"
    shutil.copy("/bin/touch", renamed)
    link = work / "notes"
    link.symlink_to(program)
    marks = work / "marks"
    marks.mkdir()
    guard = KernelExecGuard.open(lambda report: None)
    try:
        guard.set_loaders(resolve_loaders())
        plan = GuardPlan()
        plan.exact[name] = plan.rule_number("bench-name")
        plan.rule_number("bench-hash")
        guard.apply(plan)
        st = os.stat(renamed)
        guard.learn_file(file_id(st), "bench-hash", st.st_ctime_ns)
        ways = {
            "by name": lambda m: [str(program), m],
            "ld.so FILE": lambda m: [LOADER, str(program), m],
            "ld.so --argv0 x FILE": lambda m: [LOADER, "--argv0", "vim", str(program), m],
            "symlink": lambda m: [str(link), m],
            "exec -a (argv0)": None,
            "renamed copy (hash)": lambda m: [str(renamed), m],
        }
        found: dict[str, int] = {}
        for way, argv in ways.items():
            for i in range(starts):
                marker = str(marks / f"{len(found)}-{i}")
                if argv is None:  # what exec -a does: another argv[0], the same file
                    pid = os.posix_spawn(str(program), ["innocent", marker], {})
                else:
                    args = argv(marker)
                    pid = os.posix_spawn(args[0], args, {})
                os.waitpid(pid, 0)
            found[way] = sum(1 for p in marks.iterdir() if p.name.startswith(f"{len(found)}-"))
        return found
    finally:
        guard.close()


def overhead(rounds: int, batch: int, work: Path) -> dict[str, list[float]]:
    """Exec times per condition, in round-robin batches on a private tmpfs."""
    from proscribe.agent.enforce.bpf.guard import KernelExecGuard
    from proscribe.agent.enforce.bpf.plan import GuardPlan
    from proscribe.agent.enforce.exec_deny import ExecDenyGuard, policy_decider
    from proscribe.core.policy.loader import load_policy_file
    from proscribe.core.policy.matchers import CompiledPolicy

    mnt = work / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "bench", str(mnt)], check=True)
    try:
        true = mnt / "true"
        shutil.copy("/bin/true", true)
        plan = GuardPlan()
        for i in range(10_000):
            plan.exact[f"zzbulk{i:05d}"] = plan.rule_number(f"rule{i % 50}")
        pack = Path(__file__).resolve().parents[1] / "policies/government-restricted-ai-2025.toml"
        compiled = CompiledPolicy.compile(load_policy_file(pack))
        from datetime import UTC, datetime

        decide = policy_decider(compiled, "bench-host", lambda: datetime.now(UTC))
        times: dict[str, list[float]] = {"none": [], "bpf": [], "fanotify": []}
        dd: dict[str, list[float]] = {"none": [], "bpf": []}
        for _ in range(rounds):
            _spawn_times(true, 5)
            times["none"].extend(_spawn_times(true, batch))
            dd["none"].append(_dd_seconds())
            kernel = KernelExecGuard.open(lambda report: None)
            try:
                kernel.apply(plan)
                _spawn_times(true, 5)  # warm-up after attaching
                times["bpf"].extend(_spawn_times(true, batch))
                dd["bpf"].append(_dd_seconds())
            finally:
                kernel.close()
            fan = ExecDenyGuard([mnt], decide, cache_size=4096)
            fan.start()
            try:
                _spawn_times(true, 2)  # warm its cache
                times["fanotify"].extend(_spawn_times(true, batch))
            finally:
                fan.stop()
        times["dd none"] = dd["none"]
        times["dd bpf"] = dd["bpf"]
        return times
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def sizes_and_speed() -> dict[str, float]:
    from datetime import UTC, datetime

    from proscribe.agent.enforce.bpf.guard import KernelExecGuard
    from proscribe.agent.enforce.bpf.plan import plan_for
    from proscribe.core.policy.loader import load_policy

    names = ", ".join(f'"zzbulk{i:05d}"' for i in range(10_000))
    text = (
        '[meta]\nschema = 1\nid = "bulk"\nserial = 1\nissued = 2025-01-01T00:00:00Z\n'
        f'title = "10k"\n\n[[process]]\nid = "bulk"\nnames = [{names}]\naction = "block"\n'
    )
    guard = KernelExecGuard.open(lambda report: None)
    try:
        t0 = time.perf_counter()
        policy = load_policy(text.encode(), "bulk.toml")
        t1 = time.perf_counter()
        plan = plan_for(policy, "bench-host", datetime.now(UTC))
        t2 = time.perf_counter()
        guard.apply(plan)
        t3 = time.perf_counter()
        memory = {}
        for name in ("names", "inodes", "loaders", "settings", "reports", "scratch"):
            fd = guard._obj.map(name).fd
            for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
                if line.startswith("memlock:"):
                    memory[name] = float(line.split()[1])
        return {
            "parse s": t1 - t0,
            "plan s": t2 - t1,
            "maps s": t3 - t2,
            **{f"memlock {k}": v for k, v in memory.items()},
        }
    finally:
        guard.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (BPF, a private tmpfs)", file=sys.stderr)
        return 2
    if os.environ.get("PROSCRIBE_BENCH_NS") != "1":
        # a private mount namespace: the tmpfs and the fanotify mark never reach the host
        env = dict(os.environ, PROSCRIBE_BENCH_NS="1")
        cmd = ["unshare", "--mount", "--propagation", "private", sys.executable, "-m"]
        argv = [*cmd, "bench.exec_guard", *sys.argv[1:]]
        return subprocess.run(argv, env=env, check=False).returncode
    with tempfile.TemporaryDirectory(prefix="proscribe-bench-guard-") as tmp:
        work = Path(tmp)
        print(f"1. markers in {args.starts} starts each (0 expected):")
        for way, count in markers(args.starts, work).items():
            print(f"   {way:24s} {count}")
        times = overhead(args.rounds, args.batch, work)
        base = statistics.median(times["none"])
        print(f"2. per exec of /bin/true, {args.rounds} x {args.batch} round-robin (median µs):")
        for cond in ("none", "bpf", "fanotify"):
            med = statistics.median(times[cond])
            print(f"   {cond:10s} {med:8.1f} µs   ratio to none {med / base:.3f}")
        dd0 = statistics.median(times["dd none"])
        dd1 = statistics.median(times["dd bpf"])
        print(
            f"   dd bs=1 x 300k (600k syscalls): none {dd0 * 1000:.0f} ms, bpf "
            f"{dd1 * 1000:.0f} ms, ratio {dd1 / dd0:.3f}"
        )
        figures = sizes_and_speed()
        print("3. a 10,000-name policy:")
        for key, value in figures.items():
            unit = "ms" if key.endswith(" s") else "bytes"
            shown = value * 1000 if unit == "ms" else value
            print(f"   {key:24s} {shown:12.1f} {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
