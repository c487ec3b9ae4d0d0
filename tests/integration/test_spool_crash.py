"""`kill -9` at random moments never loses an event whose `append` had returned."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from proscribe.agent.spool import Spool

# The child appends forever and prints each id only after append() returned True.
CHILD = r"""
import sys, uuid
from pathlib import Path
from proscribe.agent.events import new_event
from proscribe.agent.spool import Spool

spool = Spool(Path(sys.argv[1]))
print("ready", flush=True)
n = 0
while True:
    n += 1
    event = new_event("process", rule="r%d" % (n % 7), action="killed",
                      process={"pid": n, "name": "deepseek", "exe": "/x/%d" % n},
                      detail="y" * (n % 300))
    if spool.append(event):
        sys.stdout.write(event["id"] + "\n")
        sys.stdout.flush()
"""

ROUNDS = 24


@pytest.mark.slow
def test_kill_9_never_loses_a_returned_append(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    rng = random.Random(0xC0FFEE)
    promised: list[str] = []
    for _ in range(ROUNDS):
        out = tmp_path / "ids.txt"
        with out.open("wb") as sink:
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(path)], stdout=sink, stderr=subprocess.PIPE
            )
            deadline = time.monotonic() + 20
            while b"ready" not in out.read_bytes():
                assert child.poll() is None, child.stderr.read() if child.stderr else b""
                assert time.monotonic() < deadline, "child never became ready"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.25))
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
            assert child.stderr is not None
            child.stderr.close()
        lines = out.read_bytes().decode().split("\n")
        # the last line may be cut mid-write by the kill; a complete line ends with "\n"
        promised.extend(line for line in lines[1:-1] if len(line) == 36)
    assert len(promised) > ROUNDS  # the test really exercised appends

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in conn.execute("SELECT id FROM events")}
    finally:
        conn.close()
    missing = [i for i in promised if i not in stored]
    assert not missing, f"{len(missing)} of {len(promised)} acknowledged appends lost"

    spool = Spool(path)
    try:
        assert spool.stats().corrupt_moved_to is None
        assert spool.stats().depth == len(stored)
    finally:
        spool.close()
