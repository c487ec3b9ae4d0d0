"""A fork/exec storm against the real daemon: no crash, and every miss counted.

Starts ``proscribe agent run`` (monitor mode, netlink when root) and then ``--rate`` short-lived
processes per second (default 2,000/s) for ``--seconds`` (default 10) with ``posix_spawn``:
copies of /bin/sleep under a denied name, each living ``--life`` seconds. Afterwards it reads the
daemon's ``status.json`` and spool and prints: processes started, exec events the sensor handled,
processes gone before enrichment, socket overflows and queue drops, events spooled and
occurrences counted (repeats folded), and whether the daemon survived. Only processes this
script starts are touched.

    .venv/bin/python -m bench.exec_storm [--rate 2000] [--seconds 10] [--life 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.agent_harness import (
    PROSCRIBE,
    Signer,
    policy_text,
    spool_events,
    write_config,
)

REAPED: set[int] = set()

# One spawner: starts RATE copies of BINARY per second for SECONDS, reaps its own children,
# prints how many it started. Several run side by side: one Python loop tops out at a few
# hundred spawns per second on a small VM.
SPAWNER = """
import os, sys, time
binary, rate, seconds, life = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
argv, env = [binary, life], dict(os.environ)
started, t0 = 0, time.monotonic()
while (now := time.monotonic()) < t0 + seconds:
    while started < int((now - t0) * rate):
        os.posix_spawn(binary, argv, env)
        started += 1
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    time.sleep(0.001)
spawning = time.monotonic() - t0
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        break
print(started, spawning)
"""


def reap() -> None:
    """Collect finished children without blocking (remembering which)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        REAPED.add(pid)


def storm(binary: Path, rate: int, seconds: float, life: str, workers: int) -> tuple[int, float]:
    spawners = [
        subprocess.Popen(
            [sys.executable, "-c", SPAWNER, str(binary), str(rate / workers), str(seconds), life],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    started, elapsed = 0, 0.0
    for spawner in spawners:
        out, _ = spawner.communicate(timeout=seconds + 60)
        count, took = out.split()
        started += int(count)
        elapsed = max(elapsed, float(took))
    return started, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--life", default="0.2")
    parser.add_argument("--sensor", default="auto")
    parser.add_argument("--workers", type=int, default=4, help="parallel spawner processes")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="proscribe-storm-"))
    token = secrets.token_hex(3)
    signer = Signer()
    signer.write(tmp / "policy.toml", policy_text(token))
    config = write_config(tmp, signer, mode="monitor", process=args.sensor)
    binary = tmp / f"dsk{token}-storm"
    shutil.copy2("/bin/sleep", binary)
    log = tmp / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [*PROSCRIBE, "agent", "run", "--config", str(config)], stdout=out, stderr=out
        )
    try:
        status_path = tmp / "state" / "status.json"
        deadline = time.monotonic() + 30
        while not status_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)
        started, elapsed = storm(binary, args.rate, args.seconds, args.life, args.workers)
        # let the reaping and the checker catch up
        settle = time.monotonic() + float(args.life) + 5
        while time.monotonic() < settle:
            reap()
            time.sleep(0.05)
        alive = agent.pid not in REAPED and agent.poll() is None
        status = json.loads(status_path.read_text()) if status_path.exists() else {}
        process = (status.get("sensors") or {}).get("process") or {}
        seen = process.get("seen") or {}
        events = [e for e in spool_events(tmp / "state") if e.get("kind") == "process"]
        occurrences = sum(int(e.get("_count", 1)) for e in events)
        print(
            f"storm: {started} processes in {elapsed:.1f} s ({started / elapsed:.0f}/s), "
            f"each living {args.life} s; sensor {process.get('backend')}"
        )
        print(f"  daemon alive afterwards:        {alive}")
        print(f"  exec events handled:            {seen.get('exec', 0)}")
        print(f"  found by sweeps:                {seen.get('sweep', 0) + seen.get('poll', 0)}")
        print(f"  gone before enrichment:         {seen.get('vanished', 0)}")
        print(f"  drops (counted):                {process.get('drops')}")
        print(f"  spool: {len(events)} events, {occurrences} occurrences counted")
        print(f"  missed (started - occurrences): {started - occurrences}")
        print(f"  spool drops:                    {(status.get('spool') or {}).get('dropped')}")
        print(f"  checker errors:                 {process.get('errors')}")
        return 0 if alive else 1
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
