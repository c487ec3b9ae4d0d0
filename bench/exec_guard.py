"""The eBPF exec guard: does anything get through, what does it cost, how big and how quick.

Printed side by side from one run (root, Linux with BTF):

1. **Markers**: a denied program whose first action is to create a marker file (a copy of
   ``touch``), started N times each way — by its name, through the dynamic loader
   (``ld.so FILE``), through a symlink with an innocent name, with another argv[0]
   (``exec -a``), and as a renamed copy denied by its hash (learned by device and inode, as the
   agent does after the first sighting). Expected: 0 markers.
2. **Per-exec overhead**: posix_spawn→waitpid of ``/bin/true`` on a private tmpfs, round-robin
   batches (the order rotates each round) with no guard, with the eBPF guard (10,000 names in
   its trie) as the agent attaches it (the mapping check on the ``mmap_lock_start_locking``
   tracepoint), with the eBPF guard forced onto its fallback hook (raw ``sys_enter``, which
   routes every system call through the tracing entry path) and with the fanotify pre-exec
   guard marking that tmpfs (cache warm). Medians, the ratio to no guard measured in the same
   run, and the spread of that ratio over the rounds (each round's median / the same round's
   unguarded median: lowest, middle half, highest). A syscall-bound loop (``dd bs=1``, two
   syscalls per byte) is timed with each eBPF hook too.
3. **Map memory** for a 10,000-name policy (the kernel's ``memlock`` figure per map), and the
   **time from a policy change to the maps in force** (TOML parse + plan + map writes).

fapolicyd (Debian's, permissive, when installed) runs through the exec rounds as one more
condition, set up as ``bench/exec_deny.py`` does (private /run, /var/log, /var/lib/fapolicyd
and /etc/fapolicyd; it marks only a private ramfs holding its copy of ``/bin/true``, checked
from its fanotify fdinfo); afterwards, with no guard, the ramfs and tmpfs copies are timed
against each other so that the file system's share can be taken out of fapolicyd's ratio.

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
    _pid, _status, ru = os.wait4(pid, 0)
    wall = (time.perf_counter_ns() - t0) / 1000
    out.append(f"{wall:.1f}/{(ru.ru_utime + ru.ru_stime) * 1e6:.0f}")
print(" ".join(out))
"""


def _spawn_times(tool: Path, n: int) -> tuple[list[float], list[float]]:
    """Per exec: the wall time from spawn to reap, and the CPU time the child used (user +
    system, from wait4: the exec itself, ld.so and the guard's programs, which run in the
    child; time spent waiting for a CPU taken by other work is not in it)."""
    out = subprocess.run(
        [sys.executable, "-c", EXEC_LOOP, str(n), str(tool)],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout  # fmt: skip
    pairs = [item.split("/") for item in out.split()]
    return [float(w) for w, _c in pairs], [float(c) for _w, c in pairs]


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
    print(f"   (mapping check on {guard.mmap_hook})")
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


def overhead(
    rounds: int, batch: int, work: Path, host_ns: str
) -> tuple[dict[str, list[float]], dict[str, str], str | None]:
    """Exec times per condition, in round-robin batches on a private tmpfs (fapolicyd's on a
    private ramfs, the only file system type it is told to watch); then, with no guard at all,
    the same two mounts against each other. The third value says why fapolicyd was not
    measured (None when it was)."""
    from bench.exec_deny import fapolicyd
    from proscribe.agent.enforce.bpf.guard import KernelExecGuard
    from proscribe.agent.enforce.bpf.plan import GuardPlan
    from proscribe.agent.enforce.exec_deny import ExecDenyGuard, policy_decider
    from proscribe.core.policy.loader import load_policy_file
    from proscribe.core.policy.matchers import CompiledPolicy

    mnt = work / "mnt"
    mnt.mkdir()
    fapo = work / "fapo"
    fapo.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "bench", str(mnt)], check=True)
    subprocess.run(["mount", "-t", "ramfs", "-o", "size=16m", "ramfs", str(fapo)], check=True)
    try:
        true = mnt / "true"
        shutil.copy("/bin/true", true)
        ramfs_true = fapo / "true"
        shutil.copy("/bin/true", ramfs_true)
        plan = GuardPlan()
        for i in range(10_000):
            plan.exact[f"zzbulk{i:05d}"] = plan.rule_number(f"rule{i % 50}")
        pack = Path(__file__).resolve().parents[1] / "policies/government-restricted-ai-2025.toml"
        compiled = CompiledPolicy.compile(load_policy_file(pack))
        from datetime import UTC, datetime

        decide = policy_decider(compiled, "bench-host", lambda: datetime.now(UTC))
        every = ("none", "bpf", "bpf sys_enter", "fanotify", "fapolicyd", "tmpfs", "ramfs")
        times: dict[str, list[float]] = {c: [] for c in every}
        times.update({f"cpu {c}": [] for c in every})
        rounds_med: dict[str, list[float]] = {c: [] for c in every}
        rounds_med.update({f"cpu {c}": [] for c in every})
        dd: dict[str, list[float]] = {"none": [], "bpf": [], "bpf sys_enter": []}
        hooks: dict[str, str] = {}

        # both guards loaded once with their maps filled (as in the agent), attached only
        # for their own batches
        kernels = {
            "bpf": KernelExecGuard.open(lambda report: None),
            "bpf sys_enter": KernelExecGuard.open(lambda report: None, mmap_hook="sys_enter"),
        }
        for cond, kernel in kernels.items():
            hooks[cond] = kernel.mmap_hook
            kernel.apply(plan)
            kernel._obj.detach()

        def measure(cond: str) -> None:
            kernel = kernels.get(cond)
            fan = None
            tool = ramfs_true if cond in ("fapolicyd", "ramfs") else true
            if kernel is not None:
                for program in kernel.program_fds():
                    kernel._obj.attach(program)
            elif cond == "fanotify":
                fan = ExecDenyGuard([mnt], decide, cache_size=4096)
                fan.start()
            try:
                _spawn_times(tool, 5)  # warm-up (and the fanotify cache)
                batch_times, cpu_times = _spawn_times(tool, batch)
                times[cond].extend(batch_times)
                times[f"cpu {cond}"].extend(cpu_times)
                rounds_med[cond].append(statistics.median(batch_times))
                rounds_med[f"cpu {cond}"].append(statistics.median(cpu_times))
                if cond in dd:
                    dd[cond].append(_dd_seconds())
            finally:
                if kernel is not None:
                    kernel._obj.detach()
                if fan is not None:
                    fan.stop()

        try:
            # fapolicyd (permissive) runs through the whole loop, marking only the ramfs
            with fapolicyd(work, fapo, host_ns) as why_not:
                conditions = ["none", "bpf", "bpf sys_enter", "fanotify"]
                if why_not is None:
                    conditions.append("fapolicyd")
                for r in range(rounds):
                    for i in range(len(conditions)):
                        measure(conditions[(r + i) % len(conditions)])
        finally:
            for kernel in kernels.values():
                kernel.close()
        # no guard at all: what the file system alone changes (fapolicyd's copy is on ramfs)
        for r in range(max(4, rounds // 5)):
            for cond in ("tmpfs", "ramfs") if r % 2 else ("ramfs", "tmpfs"):
                measure(cond)
        for cond, meds in rounds_med.items():
            times[f"rounds {cond}"] = meds
        times["dd bpf sys_enter"] = dd["bpf sys_enter"]
        times["dd none"] = dd["none"]
        times["dd bpf"] = dd["bpf"]
        return times, hooks, why_not
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        subprocess.run(["umount", str(fapo)], check=False)


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


def program_time(execs: int, work: Path) -> dict[str, tuple[float, float]]:
    """The guard's programs as the kernel times them (BPF run-time statistics, enabled for
    the host while this runs): runs and nanoseconds per exec of /bin/true, each hook."""
    from proscribe.agent.enforce.bpf.guard import KernelExecGuard
    from proscribe.agent.enforce.bpf.libbpf import enable_run_time_stats
    from proscribe.agent.enforce.bpf.plan import GuardPlan, resolve_loaders

    plan = GuardPlan()
    for i in range(10_000):
        plan.exact[f"zzbulk{i:05d}"] = plan.rule_number(f"rule{i % 50}")
    true = work / "true"
    shutil.copy("/bin/true", true)
    found: dict[str, tuple[float, float]] = {}
    stats_fd = enable_run_time_stats()
    try:
        for hook in ("mmap_lock", "sys_enter"):
            guard = KernelExecGuard.open(lambda report: None, mmap_hook=hook)
            try:
                guard.set_loaders(resolve_loaders())
                guard.apply(plan)
                fds = guard.program_fds()

                def read(fds: dict[str, int] = fds) -> dict[str, tuple[int, int]]:
                    out = {}
                    for name, fd in fds.items():
                        info = Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
                        fields = dict(line.split(":", 1) for line in info if ":" in line)
                        out[name] = (int(fields["run_cnt"]), int(fields["run_time_ns"]))
                    return out

                before = read()
                _spawn_times(true, execs)
                after = read()
                for name in fds:
                    runs = after[name][0] - before[name][0]
                    ns = after[name][1] - before[name][1]
                    found[f"{name} ({hook})"] = (runs / execs, ns / execs)
            finally:
                guard.close()
    finally:
        os.close(stats_fd)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument(
        "--program-time",
        action="store_true",
        help="also time the guard's programs with the kernel's BPF run-time statistics "
        "(a host-wide setting while it runs: every BPF program on the host pays two clock reads)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (BPF, a private tmpfs)", file=sys.stderr)
        return 2
    if os.environ.get("PROSCRIBE_BENCH_NS") != "1":
        # a private mount namespace: the tmpfs and the fanotify mark never reach the host
        host_ns = os.readlink("/proc/self/ns/mnt")
        env = dict(os.environ, PROSCRIBE_BENCH_NS="1", PROSCRIBE_BENCH_HOST_NS=host_ns)
        cmd = ["unshare", "--mount", "--propagation", "private", sys.executable, "-m"]
        argv = [*cmd, "bench.exec_guard", *sys.argv[1:]]
        return subprocess.run(argv, env=env, check=False).returncode
    with tempfile.TemporaryDirectory(prefix="proscribe-bench-guard-") as tmp:
        work = Path(tmp)
        print(f"1. markers in {args.starts} starts each (0 expected):")
        for way, count in markers(args.starts, work).items():
            print(f"   {way:24s} {count}")
        host_ns = os.environ.get("PROSCRIBE_BENCH_HOST_NS", "")
        times, hooks, why_not = overhead(args.rounds, args.batch, work, host_ns)
        print(f"2. per exec of /bin/true, {args.rounds} x {args.batch} round-robin (medians):")
        shown = ", ".join(f"{cond} on {hook}" for cond, hook in hooks.items())
        print(f"   (the mapping check: {shown}; fapolicyd permissive, its copy on ramfs)")
        shown_conditions = ["none", "bpf", "bpf sys_enter", "fanotify"]
        if why_not is None:
            shown_conditions.append("fapolicyd")
        for metric, prefix in (("wall time, spawn to reap", ""), ("child CPU time", "cpu ")):
            base = statistics.median(times[f"{prefix}none"])
            print(
                f"   {metric:26s} median µs  ratio   per round, to that round's none:"
                " median [middle half] lowest-highest"
            )
            for cond in shown_conditions:
                med = statistics.median(times[f"{prefix}{cond}"])
                pairs = zip(
                    times[f"rounds {prefix}{cond}"], times[f"rounds {prefix}none"], strict=True
                )
                per_round = sorted(m / n for m, n in pairs)
                q = statistics.quantiles(per_round, n=4, method="inclusive")
                print(
                    f"     {cond:24s} {med:9.1f}  {med / base:.3f}   {q[1]:.3f} "
                    f"[{q[0]:.3f}-{q[2]:.3f}] {per_round[0]:.2f}-{per_round[-1]:.2f}"
                )
            fs = statistics.median(times[f"{prefix}ramfs"]) / statistics.median(
                times[f"{prefix}tmpfs"]
            )
            line = f"     afterwards, no guard: ramfs / tmpfs {fs:.3f}"
            if why_not is None:
                fap = statistics.median(times[f"{prefix}fapolicyd"]) / base
                line += f"; fapolicyd's ratio with that taken out {fap / fs:.3f}"
            print(line)
        if why_not is not None:
            print(f"   fapolicyd not measured: {why_not}")
        dd0 = statistics.median(times["dd none"])
        for cond in ("bpf", "bpf sys_enter"):
            dd1 = statistics.median(times[f"dd {cond}"])
            print(
                f"   dd bs=1 x 300k (600k syscalls): none {dd0 * 1000:.0f} ms, {cond} "
                f"{dd1 * 1000:.0f} ms, ratio {dd1 / dd0:.3f}"
            )
        figures = sizes_and_speed()
        print("3. a 10,000-name policy:")
        for key, value in figures.items():
            unit = "ms" if key.endswith(" s") else "bytes"
            shown = value * 1000 if unit == "ms" else value
            print(f"   {key:24s} {shown:12.1f} {unit}")
        if args.program_time:
            print("4. the guard's programs per exec of /bin/true (kernel BPF run-time stats):")
            for name, (runs, ns) in program_time(500, work).items():
                print(f"   {name:34s} {runs:6.1f} runs  {ns / 1000:6.2f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
