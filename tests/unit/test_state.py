"""Anti-rollback rules and the crash-safe state file."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from proscribe.core.fs import atomic_write, remove_stale_temp_files
from proscribe.core.policy.state import (
    PolicyState,
    advance,
    clock_went_back,
    judge_offer,
    load_state,
    save_state,
)

T0 = datetime(2025, 2, 1, 12, 0, tzinfo=UTC)
H1 = "a" * 64
H2 = "b" * 64


def state(serial: int = 5, sha: str = H1, seen: datetime = T0) -> PolicyState:
    return PolicyState(policy_id="p", serial=serial, sha256=sha, max_time_seen=seen)


def judge(st: PolicyState | None, serial: int, sha: str = H1, **kw: object) -> tuple[str, str]:
    expires = kw.get("expires", T0 + timedelta(days=30))
    now = kw.get("now", T0)
    assert isinstance(now, datetime)
    assert expires is None or isinstance(expires, datetime)
    v = judge_offer(st, policy_id="p", serial=serial, sha256=sha, expires=expires, now=now)
    return v.outcome, v.kind


def test_first_policy_is_accepted() -> None:
    assert judge(None, 1) == ("accept", "first")


def test_higher_serial_is_accepted() -> None:
    assert judge(state(5), 6, H2) == ("accept", "new")


def test_lower_serial_is_rollback() -> None:
    v = judge_offer(state(5), policy_id="p", serial=4, sha256=H2, expires=None, now=T0)
    assert (v.outcome, v.kind) == ("reject", "rollback")
    assert "lower than the accepted serial 5" in v.reason


def test_equal_serial_other_hash_rejected() -> None:
    assert judge(state(5, H1), 5, H2) == ("reject", "conflicting_hash")


def test_equal_serial_same_hash_is_noop() -> None:
    assert judge(state(5, H1), 5, H1) == ("unchanged", "same")
    # a no-op even when that policy has expired in the meantime (restart after expiry)
    assert judge(state(5, H1), 5, H1, now=T0 + timedelta(days=400)) == ("unchanged", "same")


def test_newly_fetched_and_already_expired_rejected() -> None:
    assert judge(None, 1, expires=T0 - timedelta(seconds=1)) == ("reject", "expired")
    assert judge(state(5), 6, H2, expires=T0) == ("reject", "expired")
    assert judge(state(5), 6, H2, expires=None) == ("accept", "new")


def test_clock_set_back_cannot_make_an_expired_policy_fresh() -> None:
    # the agent has seen T0; the clock now claims a day earlier, before the policy's expiry
    seen = state(5, seen=T0)
    verdict = judge(seen, 6, H2, expires=T0 - timedelta(hours=2), now=T0 - timedelta(days=1))
    assert verdict == ("reject", "expired")


def test_clock_went_back_only_beyond_an_hour() -> None:
    st = state(seen=T0)
    assert not clock_went_back(None, T0)
    assert not clock_went_back(st, T0 - timedelta(minutes=59))
    assert clock_went_back(st, T0 - timedelta(minutes=61))
    assert not clock_went_back(st, T0 + timedelta(days=1))


def test_advance_only_moves_forward() -> None:
    st = state(seen=T0)
    assert advance(st, T0 - timedelta(days=1)) is st
    assert advance(st, T0 + timedelta(seconds=1)).max_time_seen == T0 + timedelta(seconds=1)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert load_state(path) is None
    st = PolicyState(
        policy_id="navy",
        serial=7,
        sha256=H1,
        max_time_seen=T0,
        issued=T0 - timedelta(days=1),
        expires=T0 + timedelta(days=1),
        accepted_at=T0,
        origin="collector",
    )
    save_state(path, st)
    assert load_state(path) == st
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[]",
        b'{"version": 2}',
        b'{"version": 1, "policy_id": "p", "serial": -1, "sha256": "x", "max_time_seen": null}',
        json.dumps(
            {"version": 1, "policy_id": "p", "serial": 1, "sha256": "x", "max_time_seen": "bad"}
        ).encode(),
        json.dumps(
            {
                "version": 1,
                "policy_id": "p",
                "serial": 1,
                "sha256": "x",
                "max_time_seen": "2025-01-01T00:00:00",
            }
        ).encode(),
        b"\xff" * 10,
    ],
)
def test_corrupt_state_is_moved_aside(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    assert load_state(path) is None
    assert not path.exists()
    assert (tmp_path / "state.json.corrupt").read_bytes() == content


def test_atomic_write_replaces_and_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    atomic_write(path, b"old")
    atomic_write(path, b"new", 0o644)
    assert path.read_bytes() == b"new"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    (tmp_path / ".f.bin.abc.tmp").write_bytes(b"half")
    assert remove_stale_temp_files(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


_WRITER = """
import hashlib, sys
from datetime import UTC, datetime
from pathlib import Path
from proscribe.core.policy.state import PolicyState, save_state
path = Path(sys.argv[1])
pad = "x" * 4000  # several pages per write, so a kill can land mid-write
i = 0
while True:
    i += 1
    save_state(path, PolicyState(policy_id=pad, serial=i,
        sha256=hashlib.sha256(str(i).encode()).hexdigest(),
        max_time_seen=datetime.fromtimestamp(1_700_000_000 + i, UTC)))
    if i == 1:
        sys.stdout.write("ready\\n"); sys.stdout.flush()
"""


@pytest.mark.slow
def test_kill_during_state_write_leaves_old_or_new_state(tmp_path: Path) -> None:
    rng = random.Random(1234)
    path = tmp_path / "state.json"
    last_serial = 0
    for _round in range(30):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.0, 0.03))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        st = load_state(path)
        assert st is not None, "state file unreadable after kill"
        assert st.sha256 == hashlib.sha256(str(st.serial).encode()).hexdigest()
        assert st.max_time_seen == datetime.fromtimestamp(1_700_000_000 + st.serial, UTC)
        assert st.serial >= 1
        last_serial = st.serial
    assert last_serial > 0
    # leftovers of interrupted writes are only temp files, which are removable
    remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
