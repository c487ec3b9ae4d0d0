"""Judging local AI model files and the programs that load them (``[[model]]`` rules).

The model sensor (agent/sensors/models.py) hands over paths; this guard reads what each file is
(:func:`proscribe.core.models.identity.identify`, a few KB), asks the policy in force, and:

* records a ``model`` event for a denied file — path, owner, size, mtime, the identity evidence
  and a sha256 (the store's blob digest, or the file hashed when it is at most
  :data:`HASH_MAX_BYTES`) — once per file version (device, inode, size, mtime);
* remembers it as denied and stops (enforce mode; reports in monitor mode) every process that has
  it mapped or open, found by device and inode in ``/proc/PID/maps`` and ``/proc/PID/fd``,
  whatever the program is called and whatever its arguments say; a file opened in a watched store
  is checked at once, then 0.2, 0.5 and 1 s later (a runtime opens, then maps);
* for ``action = "quarantine"`` in enforce mode, also moves the file aside
  (agent/model_quarantine.py) after the programs loading it were stopped.

A file judged allowed is not read again until it changes or the policy does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from proscribe.agent.counters import Counters
from proscribe.agent.enforce.kill import Killer
from proscribe.agent.evidence import Evidence
from proscribe.agent.policy_source import PolicyInForce
from proscribe.agent.sensors.enrich import process_ref
from proscribe.agent.sensors.users import UserNames
from proscribe.agent.worker import BackgroundWorker
from proscribe.core.events import clip
from proscribe.core.fs import atomic_write
from proscribe.core.models.identity import ModelIdentity, identify
from proscribe.core.policy.matchers.compiled import CompiledPolicy, Decision

__all__ = ["HASH_MAX_BYTES", "ModelGuard", "QuarantinePart", "file_section", "loaders_of"]

log = logging.getLogger(__name__)

HASH_MAX_BYTES = 64 * 1024 * 1024
RECHECKS = (0.0, 0.2, 0.5, 1.0)  # seconds after an open: a runtime opens, reads, then maps
MAX_CACHE = 200_000
MAX_MEMORY_BYTES = 32 * 1024 * 1024

FileKey = tuple[int, int, int, int]  # device, inode, size, mtime_ns
_Denied = tuple[str, Decision, dict[str, Any], ModelIdentity]  # path, why, event section, what


class QuarantinePart(Protocol):
    def move(self, path: str, sha256: str, rule: str) -> str: ...  # the record's id


def loaders_of(
    procfs: Path, targets: dict[tuple[int, int], str], skip: int
) -> Iterator[tuple[int, tuple[int, int], str]]:
    """``(pid, (device, inode), how)`` for each process mapping or holding open a target,
    newest process first (after an open, the opener is most likely the newest), yielded as
    found so the first can be acted on before the rest of ``/proc`` is read.

    Maps give the device as major:minor of the file system, which ``st_dev`` agrees with on
    ordinary file systems; an inode match with the same path counts too (btrfs subvolumes)."""
    if not targets:
        return
    inodes = {key[1]: key for key in targets}
    needles = [f" {ino} ".encode() for ino in inodes]
    paths = {path: key for key, path in targets.items()}
    try:
        pids = sorted((int(n) for n in os.listdir(procfs) if n.isdigit()), reverse=True)
    except OSError:
        return
    for pid in pids:
        if pid == skip:
            continue
        hit = _mapped_target(f"{procfs}/{pid}/maps", needles, inodes, targets, paths)
        if hit is None:
            hit = _open_target(f"{procfs}/{pid}/fd", targets)
        if hit is not None:
            yield pid, hit[0], hit[1]


def _mapped_target(
    maps: str,
    needles: list[bytes],
    inodes: dict[int, tuple[int, int]],
    targets: dict[tuple[int, int], str],
    paths: dict[str, tuple[int, int]],
) -> tuple[tuple[int, int], str] | None:
    try:
        with open(maps, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    if not any(needle in data for needle in needles):
        return None  # the common case: one substring search, no parsing
    for line in data.split(b"\n"):
        parts = line.split(None, 5)
        if len(parts) < 6 or parts[4] == b"0":
            continue
        try:
            inode = int(parts[4])
            if inode not in inodes:
                continue
            major, _, minor = parts[3].partition(b":")
            dev = os.makedev(int(major, 16), int(minor, 16))
        except ValueError:
            continue
        if (dev, inode) in targets or paths.get(os.fsdecode(parts[5])) == inodes[inode]:
            return inodes[inode], "mapped"
    return None


def _open_target(
    fd_dir: str, targets: dict[tuple[int, int], str]
) -> tuple[tuple[int, int], str] | None:
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return None
    for fd in fds:
        try:
            st = os.stat(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in targets:
            return (st.st_dev, st.st_ino), "open"
    return None


class ModelGuard:
    def __init__(
        self,
        *,
        policy: PolicyInForce,
        evidence: Evidence,
        killer: Killer,
        users: UserNames,
        mode: str,
        hostname: str,
        quarantine: QuarantinePart | None = None,
        memory: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.evidence = evidence
        self.killer = killer
        self.users = users
        self.mode = mode
        self.hostname = hostname
        self.quarantine = quarantine
        self.memory = memory  # files judged allowed, kept across restarts (a resumable sweep)
        self.clock = clock
        self.counts = Counters()
        self._lock = threading.Lock()
        self._judged: dict[FileKey, tuple[str, Decision | None]] = {}  # key -> (policy, decision)
        self._denied: dict[tuple[int, int], _Denied] = {}
        self._acted: set[tuple[int, float, str]] = set()  # (pid, start time, rule)
        self._checks: BackgroundWorker[tuple[float, str]] = BackgroundWorker(
            self._check_later, name="model-runtimes", maxsize=4096
        )

    def start(self) -> None:
        self._load_memory()
        self._checks.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._checks.stop(timeout)
        self.save_memory()

    # -- what was judged allowed, across restarts -------------------------------------------
    def _load_memory(self) -> None:
        """Files judged allowed by this same policy before a restart are not opened again
        (until they change): a sweep cut short by a stop resumes where it was."""
        if self.memory is None:
            return
        try:
            with open(self.memory, "rb") as handle:
                document = json.loads(handle.read(MAX_MEMORY_BYTES))
            sha = str(document["policy"])
            keys = document["allowed"][:MAX_CACHE]
            with self._lock:
                for key in keys:
                    self._judged[(int(key[0]), int(key[1]), int(key[2]), int(key[3]))] = (sha, None)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            log.warning("%s not used (%s); every file will be read again", self.memory, err)

    def save_memory(self) -> None:
        compiled = self.policy.compiled
        if self.memory is None or compiled is None:
            return
        sha = compiled.policy.sha256
        with self._lock:
            allowed = [list(k) for k, (s, d) in self._judged.items() if s == sha and d is None]
        try:
            atomic_write(self.memory, json.dumps({"policy": sha, "allowed": allowed}))
        except OSError as err:
            log.warning("could not save %s: %s", self.memory, err)

    # -- the sensor's callbacks --------------------------------------------------------------
    def on_file(self, path: str, source: str) -> None:
        """A file in a store was written, moved in, or reached by the sweep."""
        found = self.judge(path, source)
        if found is not None:
            key, decision = found
            if decision.action in ("block", "quarantine"):
                self.stop_loaders({key: path})
            if decision.action == "quarantine":
                self._quarantine(path, key, decision)

    def on_open(self, path: str) -> None:
        """A file in a watched store was opened (watchdog's thread: hand over, return)."""
        if self._denied:
            self._checks.submit((self.clock(), path))

    def on_mapped(self, pid: int, path: str, inode: int, dev: int) -> None:
        """A process maps a big file not seen before (the sensor's maps look). It is read
        through the process's own root (``/proc/PID/root``): the agent's ``/tmp`` (systemd's
        PrivateTmp) or a container's file system is not the process's."""
        seen_as = f"{self.killer.procfs}/{pid}/root{path}"
        found = self.judge(path, "maps", read_at=seen_as)
        if found is not None and found[1].action in ("block", "quarantine"):
            self.stop_loaders({found[0]: path})

    def policy_changed(self) -> None:
        with self._lock:
            self._judged.clear()
            self._denied.clear()

    def stats(self) -> dict[str, Any]:
        return {"denied_files": len(self._denied), **self.counts.snapshot()}

    # -- judging files -----------------------------------------------------------------------
    def judge(
        self, path: str, source: str, read_at: str | None = None
    ) -> tuple[tuple[int, int], Decision] | None:
        """The decision for a denied (not exempted) file, recorded once per version;
        ``read_at`` is where the agent reads ``path`` when it differs."""
        compiled = self.policy.compiled
        if compiled is None or not len(compiled.models):
            return None
        where = read_at or path
        try:
            st = os.stat(where)
        except OSError:
            return None
        key: FileKey = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        sha = compiled.policy.sha256
        with self._lock:
            cached = self._judged.get(key)
        if cached is not None and cached[0] == sha:
            decision = cached[1]
            if decision is None or decision.exempted_by is not None:
                return None
            return (st.st_dev, st.st_ino), decision
        identity = identify(where)
        self.counts.add("files_read")
        owner = self.users.name(st.st_uid)
        decision = None
        if identity is not None:
            decision = compiled.check_model(identity, self.hostname, owner, self.policy.now())
        with self._lock:
            if len(self._judged) >= MAX_CACHE:
                self._judged.clear()
            self._judged[key] = (sha, decision)
        if decision is None or identity is None:
            return None
        if read_at is not None:  # the event names the path as the program sees it
            identity = replace(identity, path=path)
        section = file_section(where, st, owner, identity)
        section["path"] = clip(path)
        self._record_file(compiled, decision, section, source)
        if decision.exempted_by is not None:
            return None
        with self._lock:
            self._denied[(st.st_dev, st.st_ino)] = (path, decision, section, identity)
        return (st.st_dev, st.st_ino), decision

    def _record_file(
        self, compiled: CompiledPolicy, decision: Decision, section: dict[str, Any], source: str
    ) -> None:
        if decision.exempted_by is not None:
            action = "exempted"
        elif decision.action == "quarantine" and self.mode != "enforce":
            action = "would_block"
        else:
            action = "reported"  # a quarantine records its own event when the file is moved
        event = self.evidence.event(
            "model",
            rule=decision.rule_id,
            action=action,
            severity=decision.severity,
            judged_by=compiled,
            file=section,
            detail=f"{decision.explanation} (found by {source})",
        )
        self.counts.add("files_" + action)
        if not self.evidence.commit(event):
            self.counts.add("unspooled")
        log.info("model %s: %s (%s)", action, section["path"], decision.explanation)

    # -- programs that load a denied model ---------------------------------------------------
    def _check_later(self, item: tuple[float, str]) -> None:
        opened_at, path = item
        try:
            st = os.stat(path)
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        with self._lock:
            known = key in self._denied
        if not known:
            return
        for delay in RECHECKS:
            wait = opened_at + delay - self.clock()
            if wait > 0:
                time.sleep(wait)
            if self.stop_loaders({key: path}):
                return

    def stop_loaders(self, targets: dict[tuple[int, int], str]) -> int:
        """Act on every process that maps or holds open a target; the number acted on."""
        compiled = self.policy.compiled
        if compiled is None:
            return 0
        acted = 0
        for pid, key, how in loaders_of(self.killer.procfs, targets, os.getpid()):
            with self._lock:
                entry = self._denied.get(key)
            if entry is None:
                continue
            path, decision, section, identity = entry
            facts = self.killer.enricher.facts(pid)
            if facts is None or facts.start_time is None:
                continue
            once = (pid, facts.start_time, decision.rule_id)
            if once in self._acted:
                continue
            self._acted.add(once)
            if len(self._acted) > MAX_CACHE:
                self._acted.clear()
            user = facts.user or None
            by_user = compiled.check_model(identity, self.hostname, user, self.policy.now())
            exempt = by_user is not None and by_user.exempted_by is not None
            if exempt:
                action = "exempted"
            elif self.mode == "enforce":
                action = "killed"
            else:
                action = "would_block"
            event = self.evidence.event(
                "model",
                rule=decision.rule_id,
                action=action,
                severity=decision.severity,
                judged_by=compiled,
                process=process_ref(facts),
                file=section,
                detail=f"{decision.explanation}; pid {pid} has it {how}",
            )
            self.evidence.commit(event)
            self.counts.add("runtime_" + action)
            if action != "killed":
                continue
            outcome = self.killer.kill(pid, facts.start_time)
            acted += 1
            if outcome.killed:
                self.counts.add("kill_ok")
                log.info("killed pid %s (%s): it has %s %s", pid, facts.name, how, path)
            elif not outcome.gone:
                self.counts.add("kill_failed")
                follow_up = self.evidence.event(
                    "model",
                    rule=decision.rule_id,
                    action="failed",
                    severity=decision.severity,
                    judged_by=compiled,
                    process=process_ref(facts),
                    file=section,
                    detail=f"kill not done: {outcome.reason}; outcome of event {event['id']}",
                )
                self.evidence.commit(follow_up)
        return acted

    # -- quarantine --------------------------------------------------------------------------
    def _quarantine(self, path: str, key: tuple[int, int], decision: Decision) -> None:
        if self.mode != "enforce" or self.quarantine is None:
            return
        with self._lock:
            entry = self._denied.get(key)
        if entry is None:
            return
        section = dict(entry[2])
        real = os.path.realpath(path)
        compiled = self.policy.compiled
        try:
            if os.path.islink(path) and os.stat(real).st_uid != os.lstat(path).st_uid:
                # a link cannot get someone else's file moved: only its own owner's
                raise OSError(f"{path} links to {real}, which another user owns; not moved")
            sha256 = _sha256(real, limit=None) or ""
            record_id = self.quarantine.move(real, sha256, decision.rule_id)
        except OSError as err:
            self.counts.add("quarantine_failed")
            event = self.evidence.event(
                "model",
                rule=decision.rule_id,
                action="failed",
                severity=decision.severity,
                judged_by=compiled,
                file=section,
                detail=f"quarantine not done: {err}",
            )
            self.evidence.commit(event)
            return
        section["quarantine"] = record_id
        section["sha256"] = sha256
        event = self.evidence.event(
            "model",
            rule=decision.rule_id,
            action="quarantined",
            severity=decision.severity,
            judged_by=compiled,
            file=section,
            detail=f"{decision.explanation}; moved to quarantine as {record_id}",
        )
        self.evidence.commit(event)
        self.counts.add("quarantined")
        with self._lock:
            self._denied.pop(key, None)


def file_section(
    path: str, st: os.stat_result, owner: str, identity: ModelIdentity
) -> dict[str, Any]:
    """The event's ``file`` object for a model file (the guard's and ``scan --report``'s)."""
    sha256 = next((d[7:] for d in identity.digests if d.startswith("sha256:")), "")
    if not sha256 and st.st_size <= HASH_MAX_BYTES:
        sha256 = _sha256(path) or ""
    section: dict[str, Any] = {
        "path": clip(path),
        "owner": owner,
        "uid": st.st_uid,
        "size": st.st_size,
        "mtime": datetime.fromtimestamp(st.st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {
            "format": identity.format,
            "name": clip(identity.display_name),
            "evidence": [clip(line) for line in identity.evidence(8)],
            "digests": list(identity.digests)[:16],
        },
    }
    if sha256:
        section["sha256"] = sha256
    return section


def _sha256(path: str, limit: int | None = HASH_MAX_BYTES) -> str | None:
    try:
        with open(path, "rb") as handle:
            if limit is not None and os.fstat(handle.fileno()).st_size > limit:
                return None
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None
