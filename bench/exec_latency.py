"""Exec → event committed in the spool, and exec → killed, netlink vs psutil polling.

Runs the real agent pipeline (``daemon.build``: sensor, enrichment, compiled policy, dedupe,
SQLite spool with synchronous=FULL, killer) in this process, with a temp config and state dir,
and starts copies of /bin/sleep under a denied name. Latency is measured from just before
``posix_spawn`` to the moment ``Spool.append`` returned (commit) or to the moment ``waitpid``
saw the SIGKILL. Only processes this script starts are touched (policy names carry a random
token). Needs root for netlink; without it only the polling figures are printed.

    .venv/bin/python -m bench.exec_latency [--starts 200] [--poll-interval 0.5]
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from proscribe.agent.config import load_agent_config
from proscribe.agent.daemon import Daemon, build
from proscribe.agent.spool import Spool
from tests.support.agent_harness import Signer, policy_text, write_config


class CommitClock:
    """Stands in for the spool's ``append``: records when each process's event was committed."""

    def __init__(self, spool: Spool) -> None:
        self.append_to_spool = spool.append
        self.committed: dict[int, float] = {}
        self.cond = threading.Condition()
        spool.append = self.append  # type: ignore[method-assign]

    def append(self, event: dict[str, Any]) -> bool:
        ok = bool(self.append_to_spool(event))
        now = time.monotonic()
        pid = (event.get("process") or {}).get("pid")
        with self.cond:
            if isinstance(pid, int):
                self.committed.setdefault(pid, now)
            self.cond.notify_all()
        return ok

    def wait(self, pid: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while pid not in self.committed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.committed[pid]


def start_daemon(tmp: Path, mode: str, process: str, poll_interval: float) -> Daemon:
    signer = Signer()
    token = tmp.name[-6:]
    signer.write(tmp / "policy.toml", policy_text(token))
    config_path = write_config(tmp, signer, mode=mode, process=process)
    text = config_path.read_text().replace(
        "poll_interval = 0.2", f"poll_interval = {poll_interval}"
    )
    text = text.replace("sweep_interval = 5", "sweep_interval = 3600")
    # no folding: every start is its own event, so each one is timed
    config_path.write_text(text + "\n[dedupe]\nwindow = 0\n")
    daemon = build(load_agent_config(config_path), with_reporter=False, with_dns=False)
    daemon.start()
    time.sleep(1.0)  # first sweep done
    return daemon


def spawn(binary: Path, *args: str) -> int:
    return os.posix_spawn(str(binary), [str(binary), *args], os.environ)


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"median {statistics.median(ms):7.2f} ms   p99 {p99:7.2f} ms   max {ms[-1]:7.2f} ms"


def commit_latency(process: str, starts: int, poll_interval: float) -> tuple[list[float], int]:
    tmp = Path(tempfile.mkdtemp(prefix="proscribe-bench-"))
    tmp = tmp.rename(tmp.with_name(tmp.name + secrets.token_hex(3)))
    daemon = start_daemon(tmp, "monitor", process, poll_interval)
    clock = CommitClock(daemon.spool)
    binary = tmp / f"dsk{tmp.name[-6:]}-lat"
    shutil.copy2("/bin/sleep", binary)
    pids: dict[int, float] = {}
    try:
        # a steady stream of starts, 20 ms apart; each process lives long enough to be polled
        life = str(max(5.0, poll_interval * 3 + starts * 0.02))
        for _ in range(starts):
            t0 = time.monotonic()
            pids[spawn(binary, life)] = t0
            time.sleep(0.02)
        latencies = []
        missed = 0
        for pid, t0 in pids.items():
            done = clock.wait(pid, timeout=poll_interval * 3 + 5)
            if done is None:
                missed += 1
            else:
                latencies.append(done - t0)
        return latencies, missed
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            except ProcessLookupError:
                os.waitpid(pid, 0)
        daemon.stop()
        daemon.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def kill_latency(process: str, starts: int, poll_interval: float) -> tuple[list[float], int]:
    tmp = Path(tempfile.mkdtemp(prefix="proscribe-bench-"))
    tmp = tmp.rename(tmp.with_name(tmp.name + secrets.token_hex(3)))
    daemon = start_daemon(tmp, "enforce", process, poll_interval)
    binary = tmp / f"dsk{tmp.name[-6:]}-kill"
    shutil.copy2("/bin/sleep", binary)
    latencies: list[float] = []
    survived = 0
    try:
        for _ in range(starts):
            t0 = time.monotonic()
            pid = spawn(binary, "10")
            deadline = t0 + poll_interval * 3 + 5
            status = None
            while time.monotonic() < deadline:
                got, status = os.waitpid(pid, os.WNOHANG)
                if got:
                    break
                time.sleep(0.0005)
            else:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                survived += 1
                continue
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
                latencies.append(time.monotonic() - t0)
            else:
                survived += 1
        return latencies, survived
    finally:
        daemon.stop()
        daemon.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=200)
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument("--kill-starts-poll", type=int, default=50)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    root = os.geteuid() == 0 and sys.platform.startswith("linux")
    print(f"exec -> event committed, {args.starts} starts, 20 ms apart")
    results: dict[str, list[float]] = {}
    if root:
        lat, missed = commit_latency("netlink", args.starts, args.poll_interval)
        results["netlink"] = lat
        print(f"  netlink                 {percentiles(lat)}   missed {missed}")
    lat, missed = commit_latency("poll", args.starts, args.poll_interval)
    results["poll"] = lat
    print(f"  poll every {args.poll_interval:<4} s       {percentiles(lat)}   missed {missed}")
    if "netlink" in results and results["netlink"] and lat:
        ratio = statistics.median(lat) / statistics.median(results["netlink"])
        print(f"  median ratio poll/netlink: {ratio:.0f}x")
    print("exec -> killed (enforce mode, SIGKILL seen by waitpid)")
    if root:
        lat, survived = kill_latency("netlink", args.starts, args.poll_interval)
        print(f"  netlink   {args.starts} starts   {percentiles(lat)}   not killed {survived}")
    lat, survived = kill_latency("poll", args.kill_starts_poll, args.poll_interval)
    print(
        f"  poll      {args.kill_starts_poll} starts    {percentiles(lat)}   not killed {survived}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
