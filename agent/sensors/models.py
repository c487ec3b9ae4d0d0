"""The model sensor: where local AI models are, and when a file in a store appears or is opened.

It finds the model stores of every local user (homes from the user database; ``HF_HOME``,
``OLLAMA_MODELS`` and the like read from the environment of that user's own processes, since
that is where a user sets them), the system services' stores and the configured directories,
and then:

* **watches** them with inotify (``watchdog``): a file closed after writing, moved or linked in
  is handed to ``on_file`` within the inotify buffer's half second; a file *opened* there is
  handed to ``on_open`` (how a runtime loading a denied model is seen at once);
* **sweeps** them at start and every ``sweep_interval`` in a low-priority thread at most
  ``sweep_files_per_second`` files a second, so what appeared while the agent was off is found;
  a file already judged and unchanged (same device, inode, size and mtime) is not opened again;
* **looks at mapped files**: every ``maps_interval`` it reads each process's ``/proc/PID/maps``
  and hands every mapped file of 1 MiB or more not seen before to ``on_mapped`` — a runtime that
  loads a model from anywhere (``/tmp``, a USB stick) is judged by what it maps.

It never judges anything itself: the callbacks (the model guard) do. It is handed callbacks and
data, never the daemon.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proscribe.agent.counters import Counters
from proscribe.agent.worker import BackgroundWorker
from proscribe.core.models.stores import ENV_KEYS, SWEPT_ONLY, SYSTEM_STORES, user_stores
from proscribe.core.models.walk import BIG_FILE, walk, worth_reading

__all__ = ["ModelSensor", "Store", "discover_stores", "mapped_files", "user_environments"]

log = logging.getLogger(__name__)

MIN_HUMAN_UID = 1000
MAX_ENVIRON = 256 * 1024


@dataclass(frozen=True, slots=True)
class Store:
    path: str
    what: str  # "Ollama", "Hugging Face cache", "configured directory", …
    owner: str  # the user whose store it is ("" for system stores and configured directories)
    watch: bool = True  # False: swept only (big trees such as /opt: inotify watches are finite)


def user_environments(procfs: Path, uids: set[int]) -> dict[int, list[dict[str, str]]]:
    """The model-store variables set in each user's processes (distinct sets only)."""
    found: dict[int, list[dict[str, str]]] = {}
    try:
        pids = [n for n in os.listdir(procfs) if n.isdigit()]
    except OSError:
        return found
    wanted = tuple(k.encode() + b"=" for k in ENV_KEYS)
    for pid in pids:
        base = f"{procfs}/{pid}"
        try:
            uid = os.stat(base).st_uid
            if uid not in uids:
                continue
            with open(f"{base}/environ", "rb") as handle:
                raw = handle.read(MAX_ENVIRON)
        except OSError:
            continue
        env: dict[str, str] = {}
        for item in raw.split(b"\0"):
            if item.startswith(wanted):
                key, _, value = item.partition(b"=")
                env[key.decode()] = os.fsdecode(value)
        if env and env not in found.setdefault(uid, []):
            found[uid].append(env)
    return found


def discover_stores(
    *,
    dirs: Iterable[str] = (),
    users: bool = True,
    system: bool = True,
    procfs: Path = Path("/proc"),
    passwd: Callable[[], list[pwd.struct_passwd]] = pwd.getpwall,
) -> list[Store]:
    """Every store directory that exists now, each once (the first reason found is kept)."""
    candidates: list[Store] = [
        Store(d.rstrip("/") or "/", "configured directory", "") for d in dirs
    ]
    if system:
        candidates += [Store(path, what, "") for path, what in SYSTEM_STORES]
        candidates += [Store(path, what, "", watch=False) for path, what in SWEPT_ONLY]
    if users:
        accounts = [
            p
            for p in passwd()
            if (p.pw_uid >= MIN_HUMAN_UID or p.pw_uid == 0)
            and p.pw_dir.startswith("/")
            and p.pw_dir not in ("/", "/nonexistent")
        ]
        environments = user_environments(procfs, {p.pw_uid for p in accounts})
        for account in accounts:
            for env in [{}, *environments.get(account.pw_uid, [])]:
                candidates += [
                    Store(path, what, account.pw_name)
                    for path, what in user_stores(account.pw_dir, env)
                ]
            moved = _lmstudio_home(account.pw_dir)
            if moved:
                candidates.append(Store(moved, "LM Studio (moved)", account.pw_name))
    seen: set[str] = set()
    out = []
    for store in candidates:
        if store.path in seen:
            continue
        seen.add(store.path)
        if os.path.isdir(store.path):
            out.append(store)
    return out


def _lmstudio_home(home: str) -> str:
    """LM Studio's home when the user moved it: ``~/.lmstudio-home-pointer`` holds the path."""
    try:
        with open(os.path.join(home, ".lmstudio-home-pointer"), "rb") as handle:
            text = os.fsdecode(handle.read(4096)).strip()
    except OSError:
        return ""
    return text if text.startswith("/") and "\n" not in text else ""


def mapped_files(
    procfs: Path, skip: int, pids: Iterable[int] | None = None
) -> Iterable[tuple[int, str, int, int]]:
    """``(pid, path, inode, device major:minor as one int)`` of every file a process maps
    (every process, or those of ``pids``)."""
    if pids is None:
        try:
            pids = [int(n) for n in os.listdir(procfs) if n.isdigit()]
        except OSError:
            return
    for pid in pids:
        if pid == skip:
            continue
        try:
            with open(f"{procfs}/{pid}/maps", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        last = b""
        for line in data.split(b"\n"):
            parts = line.split(None, 5)
            if len(parts) < 6 or parts[4] == b"0" or not parts[5].startswith(b"/"):
                continue
            if parts[5] == last:
                continue  # a file is mapped in several segments, listed one after another
            last = parts[5]
            major, _, minor = parts[3].partition(b":")
            try:
                dev = os.makedev(int(major, 16), int(minor, 16))
                inode = int(parts[4])
            except ValueError:
                continue
            yield pid, os.fsdecode(parts[5]), inode, dev


class _Handler:
    """watchdog's handler: closed-after-write, moved-in and created paths to the queue;
    opened files to ``on_open`` (the runtime path, no queue: it must be quick)."""

    def __init__(self, queue: BackgroundWorker[str], on_open: Callable[[str], None]) -> None:
        self.queue = queue
        self.on_open = on_open

    def dispatch(self, event: Any) -> None:
        kind = event.event_type
        path = os.fsdecode(event.dest_path if kind == "moved" else event.src_path)
        if kind == "opened":
            if not event.is_directory:
                self.on_open(path)
        elif kind in ("closed", "moved", "created"):
            if event.is_directory and kind == "moved":
                self.queue.submit("\0dir\0" + path)  # a folder moved in: walk it
            elif not event.is_directory:
                self.queue.submit(path)


class ModelSensor:
    """Watches, sweeps and looks at mapped files; hands paths to the model guard."""

    def __init__(
        self,
        *,
        on_file: Callable[[str, str], None],  # (path, "watch" | "sweep")
        on_open: Callable[[str], None],
        on_mapped: Callable[[int, str, int, int], None],  # (pid, path, inode, device)
        stores: Callable[[], list[Store]],
        sweep_interval: float,
        files_per_second: int,
        maps_interval: float,
        procfs: Path = Path("/proc"),
        rediscover_interval: float = 60.0,
        on_swept: Callable[[], None] = lambda: None,  # after each sweep (the guard saves)
    ) -> None:
        self.on_file = on_file
        self.on_open = on_open
        self.on_mapped = on_mapped
        self.stores = stores
        self.sweep_interval = sweep_interval
        self.files_per_second = files_per_second
        self.maps_interval = maps_interval
        self.procfs = procfs
        self.rediscover_interval = rediscover_interval
        self.on_swept = on_swept
        self.counts = Counters(("files_seen", "swept", "sweeps", "watch_errors", "mapped_new"))
        self.queue: BackgroundWorker[str] = BackgroundWorker(
            self._from_watch, name="model-files", maxsize=65536
        )
        self._watched: dict[str, Any] = {}  # store path -> watchdog's watch
        self._observer: Any = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sweep_now = threading.Event()
        self._pending_roots: list[str] = []
        self._lock = threading.Lock()
        self._mapped_seen: set[tuple[int, int, int]] = set()  # (pid, device, inode)
        self._vmsize: dict[int, int] = {}  # pid -> virtual size (pages) when maps were read
        self._grow_pages = max(1, BIG_FILE // os.sysconf("SC_PAGE_SIZE"))
        self.state = "off"
        self.errors = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        from watchdog.observers import Observer

        self._observer = Observer()
        self.queue.start()
        self._watch_new(self.stores())
        self._observer.start()
        self.state = "running"
        for name, target in (("model-sweep", self._sweeper), ("model-maps", self._maps_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._sweep_now.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)
        for thread in self._threads:
            thread.join(timeout)
        self.queue.stop(timeout)
        self.state = "stopped"

    def healthy(self) -> bool:
        return self.state != "running" or all(t.is_alive() for t in self._threads)

    def stats(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "stores_watched": sum(1 for w in self._watched.values() if w is not None),
            "stores_swept": len(self._watched),
            "queue": self.queue.depth(),
            **self.counts.snapshot(),
        }

    def request_sweep(self) -> None:
        """Sweep every store soon (a new policy: what was allowed may be denied now)."""
        with self._lock:
            self._pending_roots = list(self._watched)
        self._sweep_now.set()

    # -- watching ----------------------------------------------------------------------------
    def _watch_new(self, stores: list[Store]) -> list[str]:
        from watchdog.events import (
            DirCreatedEvent,
            DirMovedEvent,
            FileClosedEvent,
            FileCreatedEvent,
            FileMovedEvent,
            FileOpenedEvent,
        )

        added = []
        handler = _Handler(self.queue, self.on_open)
        kinds = [
            FileClosedEvent,
            FileMovedEvent,
            DirMovedEvent,
            FileCreatedEvent,
            DirCreatedEvent,
            FileOpenedEvent,
        ]
        for store in stores:
            if store.path in self._watched:
                continue
            if not store.watch:
                self._watched[store.path] = None  # swept, and seen by the maps look
                added.append(store.path)
                continue
            # a store inside another watched one is covered by its recursive watch
            if any(store.path.startswith(w.rstrip("/") + "/") for w in self._watched):
                self._watched[store.path] = None
                continue
            try:
                watch = self._observer.schedule(
                    handler,
                    store.path,
                    recursive=True,
                    event_filter=kinds,
                )
            except OSError as err:
                self.counts.add("watch_errors")
                log.warning("cannot watch %s (%s): %s", store.path, store.what, err)
                continue
            self._watched[store.path] = watch
            added.append(store.path)
            log.info(
                "watching %s (%s%s)", store.path, store.what, f", {store.owner}" * bool(store.owner)
            )
        return added

    def _forget_gone(self) -> None:
        """Stores deleted since they were watched are forgotten, so that one made again (a
        re-installed runtime) is found and watched by the next discovery."""
        for path in [p for p in self._watched if not os.path.isdir(p)]:
            watch = self._watched.pop(path)
            if watch is not None:
                try:
                    self._observer.unschedule(watch)
                except (KeyError, OSError):
                    pass
            log.info("no longer watching %s (gone)", path)

    def _from_watch(self, item: str) -> None:
        self.counts.add("files_seen")
        if item.startswith("\0dir\0"):
            for path in walk(item[5:]):
                self.on_file(path, "watch")
            return
        try:
            st = os.stat(item)
        except OSError:
            return
        if stat.S_ISREG(st.st_mode) and worth_reading(item, st.st_size):
            self.on_file(item, "watch")

    # -- sweeping ----------------------------------------------------------------------------
    def _sweeper(self) -> None:
        try:  # this thread only: low CPU priority (Linux applies it per thread id)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        next_full = 0.0
        next_rediscover = time.monotonic() + self.rediscover_interval
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_rediscover:
                next_rediscover = now + self.rediscover_interval
                try:
                    self._forget_gone()
                    added = self._watch_new(self.stores())
                except Exception:
                    self.errors += 1
                    log.exception("finding model stores failed (continuing)")
                    added = []
                with self._lock:
                    self._pending_roots += added
            if now >= next_full:
                next_full = now + self.sweep_interval
                with self._lock:
                    self._pending_roots = list(self._watched)
            with self._lock:
                roots, self._pending_roots = self._pending_roots, []
            if roots:
                self._sweep(roots)
                self.counts.add("sweeps")
                try:
                    self.on_swept()
                except Exception:
                    self.errors += 1
                    log.exception("after the sweep (continuing)")
            self._sweep_now.wait(min(self.rediscover_interval, max(0.1, next_full - now)))
            self._sweep_now.clear()

    def _sweep(self, roots: list[str]) -> None:
        budget = max(1, self.files_per_second)
        started = time.monotonic()
        done = 0
        for root in roots:
            for path in walk(root):
                if self._stop.is_set():
                    return
                try:
                    self.on_file(path, "sweep")
                except Exception:
                    self.errors += 1
                    log.exception("judging %s failed (continuing)", path)
                done += 1
                self.counts.add("swept")
                ahead = done / budget - (time.monotonic() - started)
                if ahead > 0:
                    self._stop.wait(ahead)

    # -- mapped files ------------------------------------------------------------------------
    def _maps_loop(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.maps_interval):
            try:
                self.look_at_mapped_files(me)
            except Exception:
                self.errors += 1
                log.exception("reading mapped files failed (continuing)")

    def _grown(self) -> list[int]:
        """Processes whose maps must be read: new ones, and those whose virtual size grew by
        1 MiB or more since their maps were last read (mapping a model grows it by the file's
        size). Reading every process's maps costs the kernel far more than its ``statm``."""
        try:
            pids = [int(n) for n in os.listdir(self.procfs) if n.isdigit()]
        except OSError:
            return []
        wanted = []
        sizes: dict[int, int] = {}
        for pid in pids:
            try:
                with open(f"{self.procfs}/{pid}/statm", "rb") as handle:
                    size = int(handle.read(64).split(None, 1)[0])
            except (OSError, ValueError, IndexError):
                continue
            base = self._vmsize.get(pid)
            if base is None or size - base >= self._grow_pages:
                wanted.append(pid)
                sizes[pid] = size
            else:
                sizes[pid] = min(base, size)  # shrank: growing back is seen
        self._vmsize = sizes
        return wanted

    def look_at_mapped_files(self, me: int) -> None:
        current: set[tuple[int, int, int]] = set()
        big: dict[tuple[int, int], bool] = {}
        for pid, path, inode, dev in mapped_files(self.procfs, me, self._grown()):
            key = (pid, dev, inode)
            current.add(key)
            if key in self._mapped_seen:
                continue
            size_ok = big.get((dev, inode))
            if size_ok is None:
                try:
                    size_ok = os.stat(path).st_size >= BIG_FILE
                except OSError:
                    size_ok = False
                big[(dev, inode)] = size_ok
            if size_ok:
                self.counts.add("mapped_new")
                self.on_mapped(pid, path, inode, dev)
        self._mapped_seen = {k for k in self._mapped_seen if k[0] in self._vmsize} | current
