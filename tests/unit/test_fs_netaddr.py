"""The shared primitives in proscribe.core: atomic_write and is_loopback."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from proscribe.core.fs import atomic_write, private_sqlite_file, remove_stale_temp_files
from proscribe.core.netaddr import is_loopback


def test_atomic_write_replaces_whole_with_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"old")
    atomic_write(target, "new ✓", 0o644)
    assert target.read_text("utf-8") == "new ✓"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"old")
    (tmp_path / "blocker").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path / "blocker", b"x")  # the rename onto a directory fails
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "state.json"]


def test_atomic_write_into_a_missing_directory_raises_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "absent" / "x", b"1")
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_files_of_killed_writes_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".state.json.abc.tmp").write_bytes(b"half")
    (tmp_path / "keep.tmp").write_bytes(b"not ours: no leading dot")
    assert remove_stale_temp_files(tmp_path) == 1
    assert sorted(os.listdir(tmp_path)) == ["keep.tmp"]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("LOCALHOST", True),
        ("127.0.0.1", True),
        ("127.53.0.3", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("localhost.example.com", False),
        ("127.0.0.1.nip.io", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback(host: str | None, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_private_sqlite_file_creates_0600_and_tightens_an_existing_one(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    assert private_sqlite_file(fresh) == []
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    old = tmp_path / "old.db"
    old.write_bytes(b"")
    old.chmod(0o644)
    Path(f"{old}-wal").write_bytes(b"")
    Path(f"{old}-wal").chmod(0o664)
    changed = private_sqlite_file(old)
    assert sorted((p.name, m) for p, m in changed) == [("old.db", 0o644), ("old.db-wal", 0o664)]
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(f"{old}-wal").stat().st_mode) == 0o600
