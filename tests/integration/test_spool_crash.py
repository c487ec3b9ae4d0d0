"""`kill -9` at random moments never loses an event whose `append` had returned."""

from __future__ import annotations

import functools
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
from tests.support.waits import wait_for

# The child appends forever and prints each id only after append() returned True.
CHILD = r"""
import sys, uuid
from pathlib import Path
from proscribe.core.events import new_event
from proscribe.agent.spool import Spool

spool = Spool(Path(sys.argv[1]), max_events=int(sys.argv[2]))
print("ready", flush=True)
n = 0
while True:
    n += 1
    # every 5th a repeat of the same program, every 11th a health row: all eviction steps run
    exe = "/x/same" if n % 5 == 0 else "/x/%d" % n
    kind = "health" if n % 11 == 0 else "process"
    event = new_event(kind, rule="r%d" % (n % 7), action="killed",
                      process={"pid": n, "name": "deepseek", "exe": exe},
                      detail="y" * (n % 300))
    if spool.append(event):
        sys.stdout.write(event["id"] + "\n")
        sys.stdout.flush()
"""

ROUNDS = 24


def _ready(child: subprocess.Popen[bytes], out: Path) -> bool:
    assert child.poll() is None, child.stderr.read() if child.stderr else b""
    return b"ready" in out.read_bytes()


def _kill_rounds(path: Path, rounds: int, max_events: int, seed: int) -> list[str]:
    """Start the writer, kill -9 it at a random moment, ``rounds`` times; the promised ids."""
    rng = random.Random(seed)
    promised: list[str] = []
    for _ in range(rounds):
        out = path.with_name("ids.txt")
        with out.open("wb") as sink:
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(path), str(max_events)],
                stdout=sink,
                stderr=subprocess.PIPE,
            )
            ready = functools.partial(_ready, child, out)
            assert wait_for(ready, 20, step=0.005), "child never became ready"
            time.sleep(rng.uniform(0.0, 0.25))  # the kill lands at a random moment of writing
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
            assert child.stderr is not None
            child.stderr.close()
        lines = out.read_bytes().decode().split("\n")
        # the last line may be cut mid-write by the kill; a complete line ends with "\n"
        promised.extend(line for line in lines[1:-1] if len(line) == 36)
    assert len(promised) > rounds  # the test really exercised appends
    return promised


def _stored_ids(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {row[0] for row in conn.execute("SELECT id FROM events")}
    finally:
        conn.close()


@pytest.mark.slow
def test_kill_9_never_loses_a_returned_append(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    promised = _kill_rounds(path, ROUNDS, 10_000_000, 0xC0FFEE)

    stored = _stored_ids(path)
    missing = [i for i in promised if i not in stored]
    assert not missing, f"{len(missing)} of {len(promised)} acknowledged appends lost"

    spool = Spool(path)
    try:
        assert spool.stats().corrupt_moved_to is None
        assert spool.stats().depth == len(stored)
    finally:
        spool.close()


@pytest.mark.slow
def test_kill_9_during_eviction_leaves_a_sound_capped_spool(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    promised = _kill_rounds(path, 10, 40, 0xBEEF)
    stored = _stored_ids(path)
    assert len(stored) <= 40
    assert stored & set(promised)  # what is left is what the writers promised
    spool = Spool(path, max_events=40)
    try:
        stats = spool.stats()
        assert stats.corrupt_moved_to is None
        assert stats.dropped_total > 0  # eviction really ran
        assert stats.stored_rows == len(stored)
    finally:
        spool.close()
