"""Idle footprint of the real daemon (``proscribe agent run``) with ~500 processes on the host.

Starts 500 ``sleep`` processes, starts the agent (netlink when root, and the polling sensor as
the peer), lets it settle, then samples its RSS and CPU time over ``--seconds`` (default 60).
Prints RSS (end and max), CPU% of one core. Everything started here is killed by pid afterwards.

The host is not otherwise idle when other work runs on it, so the rate of program starts on
the host during each run is measured too (process connector, root only) and printed beside it.

    .venv/bin/python -m bench.idle_footprint [--seconds 60] [--processes 500]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from tests.support.agent_harness import Signer, policy_text, write_config

DIRECT = (
    "import logging, sys\n"
    "from pathlib import Path\n"
    "from proscribe.agent.config import load_agent_config\n"
    "from proscribe.agent.daemon import build\n"
    "logging.basicConfig(level=logging.WARNING)\n"
    "build(load_agent_config(Path(sys.argv[1]))).run()\n"
)


class ExecCounter:
    """Counts exec events on the host in a thread (root + Linux; else reports n/a)."""

    def __init__(self) -> None:
        self.count = 0
        self.t0 = time.monotonic()
        self.done = threading.Event()
        self.thread: threading.Thread | None = None
        try:
            from proscribe.agent.sensors._netlink_linux import ProcConnector

            self.connector: object | None = ProcConnector()
            self.connector.open()  # type: ignore[attr-defined]
        except (OSError, ImportError):
            self.connector = None
            return
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while not self.done.is_set():
            events, _ = self.connector.read(0.5)  # type: ignore[union-attr]
            self.count += sum(1 for e in events if e.what == 2)

    def stop(self) -> str:
        if self.thread is None:
            return "n/a"
        self.done.set()
        self.thread.join()
        self.connector.close()  # type: ignore[union-attr]
        return f"{self.count / (time.monotonic() - self.t0):.1f}"


def measure(config: Path, seconds: float, direct: bool) -> tuple[float, float, float]:
    argv = (
        [sys.executable, "-c", DIRECT, str(config)]
        if direct
        else [sys.executable, "-m", "proscribe.cli", "agent", "run", "--config", str(config)]
    )
    agent = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc = psutil.Process(agent.pid)
        status = config.parent / "state" / "status.json"
        deadline = time.monotonic() + 30
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(5)  # first sweep of the 500 processes, imports settle
        cpu0 = sum(proc.cpu_times()[:2])
        t0 = time.monotonic()
        max_rss = 0
        while time.monotonic() - t0 < seconds:
            max_rss = max(max_rss, proc.memory_info().rss)
            time.sleep(1)
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        elapsed = time.monotonic() - t0
        rss = proc.memory_info().rss
        return rss / 2**20, max(max_rss, rss) / 2**20, 100 * cpu / elapsed
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


def breakdown(seconds: float) -> None:
    """In-process: CPU of the exec-driven thread (per exec) vs the rest (the fixed baseline)."""
    import logging

    from proscribe.agent.config import load_agent_config
    from proscribe.agent.daemon import build

    logging.disable(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="proscribe-idle-"))
    try:
        signer = Signer()
        signer.write(tmp / "policy.toml", policy_text(secrets.token_hex(3)))
        config = write_config(tmp, signer)
        text = config.read_text().replace("status_interval = 0.5", "status_interval = 5")
        config.write_text(text.replace("sweep_interval = 5", "sweep_interval = 30"))
        daemon = build(load_agent_config(config), with_reporter=False, with_dns=False)
        runner = threading.Thread(target=daemon.run, daemon=True)
        runner.start()
        time.sleep(5)
        tick = os.sysconf("SC_CLK_TCK")

        def per_thread() -> dict[int, int]:
            out = {}
            for tid in os.listdir("/proc/self/task"):
                fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
                out[int(tid)] = int(fields[11]) + int(fields[12])
            return out

        names = {t.native_id: t.name for t in threading.enumerate()}
        before, seen0, t0 = per_thread(), dict(daemon.sensor.counts), time.monotonic()
        time.sleep(seconds)
        after, seen1, elapsed = per_thread(), dict(daemon.sensor.counts), time.monotonic() - t0
        daemon.stop()
        runner.join(10)
        execs = seen1.get("exec", 0) - seen0.get("exec", 0)
        reader = base = 0.0
        for tid, ticks in after.items():
            used = (ticks - before.get(tid, 0)) / tick
            if names.get(tid) == "proscribe-process-netlink":
                reader += used
            elif names.get(tid) != "MainThread":
                base += used
        if execs and reader:
            print(
                f"  breakdown (in-process, {seconds:.0f} s, {execs / elapsed:.1f} execs/s): "
                f"baseline {100 * base / elapsed:.3f}% of a core + "
                f"{1000 * reader / execs:.3f} ms CPU per program start "
                f"(= {100 * reader / execs:.3f}% per exec/s)"
            )
        else:
            print(f"  breakdown: baseline {100 * base / elapsed:.3f}% of a core, {execs} execs")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--processes", type=int, default=500)
    args = parser.parse_args()
    sleepers = [subprocess.Popen(["/bin/sleep", "3600"]) for _ in range(args.processes)]
    runs = [("auto (netlink when root)", "auto", False), ("poll every 1 s", "poll", False)]
    try:
        print(
            f"idle agent with {len(psutil.pids())} processes on the host, "
            f"{args.seconds:.0f} s per run"
        )
        for label, sensor, direct in runs:
            tmp = Path(tempfile.mkdtemp(prefix="proscribe-idle-"))
            try:
                signer = Signer()
                signer.write(tmp / "policy.toml", policy_text(secrets.token_hex(3)))
                config = write_config(tmp, signer, process=sensor)
                text = config.read_text().replace("poll_interval = 0.2", "poll_interval = 1.0")
                text = text.replace("status_interval = 0.5", "status_interval = 5")
                config.write_text(text.replace("sweep_interval = 5", "sweep_interval = 30"))
                counter = ExecCounter()
                rss, max_rss, cpu = measure(config, args.seconds, direct)
                rate = counter.stop()
                print(
                    f"  {label:<26} RSS {rss:6.1f} MiB (max {max_rss:6.1f})   "
                    f"CPU {cpu:5.2f}% of one core   host execs/s during run: {rate}"
                )
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        for s in sleepers:
            s.kill()
        for s in sleepers:
            s.wait()
    if os.geteuid() == 0:
        breakdown(min(args.seconds, 30))
    print("targets: <= 40 MiB RSS, <= 0.5% of a core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
