"""Finding model files under a directory: which files are worth opening, and a bounded walk.

A model store holds few, large files; a configured directory (``/srv``, ``/opt``) may hold many
small ones. :func:`worth_reading` decides from the name, size and place alone (no read) whether a
file could be a model: a weights suffix, a content-addressed blob name, a ``config.json``, an
Ollama manifest, or any file of 1 MiB or more (a renamed GGUF is still read). :func:`walk`
yields such files under a root without following directory symlinks, never descending into
another file system unless asked, and stops after ``max_files`` entries.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator

from proscribe.core.models.identity import WEIGHT_SUFFIXES

__all__ = ["BIG_FILE", "walk", "worth_reading"]

BIG_FILE = 1024 * 1024
_BLOB = re.compile(r"^(sha256-)?[0-9a-f]{64}$")
_SKIP_DIRS = frozenset({".git", "__pycache__", "node_modules", ".venv", "proc", "sys"})


def worth_reading(path: str, size: int) -> bool:
    name = os.path.basename(path)
    if size < 24:
        return False
    if size >= BIG_FILE or name.lower().endswith(WEIGHT_SUFFIXES) or _BLOB.match(name):
        return True
    if name == "config.json":
        return True
    return f"{os.sep}manifests{os.sep}" in path and size < 1024 * 1024


def walk(root: str, *, max_files: int = 1_000_000, one_fs: bool = True) -> Iterator[str]:
    """Paths under ``root`` worth reading (see :func:`worth_reading`), depth first."""
    try:
        top = os.stat(root)
    except OSError:
        return
    if not stat.S_ISDIR(top.st_mode):
        if stat.S_ISREG(top.st_mode) and worth_reading(root, top.st_size):
            yield root
        return
    stack = [root]
    seen = 0
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError:
            continue
        subdirs: list[str] = []
        with entries:
            for entry in entries:
                seen += 1
                if seen > max_files:
                    return
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.name in _SKIP_DIRS:
                            continue
                        if one_fs and entry.stat(follow_symlinks=False).st_dev != top.st_dev:
                            continue
                        subdirs.append(entry.path)
                    elif entry.is_file(follow_symlinks=True) and worth_reading(
                        entry.path, entry.stat(follow_symlinks=True).st_size
                    ):  # is_file follows links: HF snapshots are links to blobs
                        yield entry.path
                except OSError:
                    continue
        # a Hugging Face repository's snapshots (named files) before its blobs (the same files
        # by hash): whoever deduplicates by inode reports the name people know
        subdirs.sort(key=lambda p: os.path.basename(p) != "blobs")
        stack.extend(subdirs)
