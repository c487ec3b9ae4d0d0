"""Quarantine for model files (``action = "quarantine"``): moved aside, recorded, never deleted.

:meth:`Quarantine.move` renames the file into a root-only (0700) directory **on the same file
system** — a rename, so nothing is copied and the data cannot be half-moved: the configured
directory when it is on the file's file system, else ``.proscribe-quarantine`` at the top of that
file system. Every move is a line in ``state_dir/quarantine.jsonl`` (the id, the original path,
owner, group, mode, size, sha256, rule and time); :meth:`restore` renames it back (refusing when
something now sits at the original path) and records that too. ``proscribe agent quarantine
list|restore ID`` reads and uses the same record. The agent never deletes a quarantined file.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proscribe.core.errors import UsageError

__all__ = ["Quarantine"]

FALLBACK_NAME = ".proscribe-quarantine"


def _mount_top(path: str) -> str:
    """The top directory of the file system holding ``path``."""
    current = os.path.dirname(os.path.abspath(path))
    dev = os.stat(current).st_dev
    while current != "/":
        parent = os.path.dirname(current)
        if os.stat(parent).st_dev != dev:
            return current
        current = parent
    return "/"


class Quarantine:
    def __init__(self, directory: Path, index: Path) -> None:
        self.directory = directory
        self.index = index
        self._lock = threading.Lock()

    def _folder_for(self, path: str) -> str:
        dev = os.stat(path).st_dev
        candidates = [str(self.directory), os.path.join(_mount_top(path), FALLBACK_NAME)]
        for folder in candidates:
            try:
                os.makedirs(folder, mode=0o700, exist_ok=True)
                st = os.stat(folder)
            except OSError:
                continue
            if st.st_dev == dev:
                os.chmod(folder, 0o700)
                return folder
        raise OSError(f"no quarantine folder on the file system of {path}")

    def move(self, path: str, sha256: str, rule: str) -> str:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file")
        record_id = uuid.uuid4().hex[:12]
        folder = self._folder_for(path)
        stored = os.path.join(folder, record_id)
        os.rename(path, stored)
        self._append(
            {
                "id": record_id,
                "event": "quarantined",
                "time": _now(),
                "path": path,
                "stored": stored,
                "uid": st.st_uid,
                "gid": st.st_gid,
                "mode": stat.S_IMODE(st.st_mode),
                "size": st.st_size,
                "sha256": sha256,
                "rule": rule,
            }
        )
        return record_id

    def records(self) -> list[dict[str, Any]]:
        """Every file quarantined and not restored, oldest first."""
        current: dict[str, dict[str, Any]] = {}
        try:
            lines = self.index.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except OSError as err:
            raise UsageError(f"{self.index}: cannot read the quarantine record: {err}") from err
        for line in lines:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                continue
            if item.get("event") == "quarantined":
                current[item["id"]] = item
            elif item.get("event") == "restored":
                current.pop(item["id"], None)
        return list(current.values())

    def restore(self, record_id: str) -> dict[str, Any]:
        with self._lock:
            found = next((r for r in self.records() if r["id"] == record_id), None)
            if found is None:
                raise UsageError(
                    f"quarantine: no file with id {record_id!r} "
                    "(fix: see 'proscribe agent quarantine list')"
                )
            original = str(found["path"])
            if os.path.lexists(original):
                raise UsageError(
                    f"quarantine: {original} exists again; not overwriting it "
                    "(fix: move it away, then restore)"
                )
            os.makedirs(os.path.dirname(original), exist_ok=True)
            os.rename(str(found["stored"]), original)
            self._append_locked({"id": record_id, "event": "restored", "time": _now()})
            return found

    def _append(self, item: dict[str, Any]) -> None:
        with self._lock:
            self._append_locked(item)

    def _append_locked(self, item: dict[str, Any]) -> None:
        self.index.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.index, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(item, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
