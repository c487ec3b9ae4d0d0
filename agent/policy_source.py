"""The policy in force on this agent: read from the signed file, watched, swapped atomically.

:class:`PolicySource` offers the configured ``policy.toml`` and its ``.sig`` to the
:class:`~proscribe.core.policy.bundle.PolicyStore` (which verifies signatures and applies
anti-rollback and expiry) at start, whenever watchdog reports a change to either file, every
``recheck_interval`` seconds as a safety net, and when the reporter fetches a policy from the
collector. What checkers judge by is a :class:`PolicyInForce`, built before them (they read it;
the source writes it): the compiled policy is replaced in one attribute assignment, so checkers
on other threads always see a whole policy.

A rejected offer never replaces the last good policy; it is reported through ``on_tamper`` with
the policy still in force (the agent turns that into a ``tamper`` event). Because an editor or
installer writes the policy and its signature one after the other, a rejection is only reported
once both files have stopped changing for ``settle`` seconds, and the same file pair is
reported once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proscribe.core.errors import ProscribeError
from proscribe.core.policy.bundle import MAX_POLICY_BYTES, Offer, PolicyStore, read_capped
from proscribe.core.policy.matchers.compiled import CompiledPolicy
from proscribe.core.policy.model import Policy

__all__ = ["PolicyInForce", "PolicySource"]

log = logging.getLogger(__name__)

TamperCallback = Callable[[Offer, CompiledPolicy | None], None]
ChangeCallback = Callable[[CompiledPolicy], None]


class PolicyInForce:
    """The compiled policy checkers judge by (``None`` before the first one) and the time to
    judge by. Written only by :class:`PolicySource`."""

    def __init__(
        self, store: PolicyStore, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.store = store
        self.clock = clock
        self.compiled: CompiledPolicy | None = None

    def now(self) -> datetime:
        """The time to judge by: never earlier than the latest time seen (clock set back)."""
        return self.store.effective_time(self.clock())

    def needs_sha256(self) -> bool:
        """Whether some rule of the policy in force matches executables by hash."""
        compiled = self.compiled
        return compiled is not None and compiled.needs_sha256


class PolicySource:
    def __init__(
        self,
        in_force: PolicyInForce,
        policy_file: Path,
        *,
        on_tamper: TamperCallback,
        on_change: ChangeCallback | None = None,
        settle: float = 0.5,
        recheck_interval: float = 60.0,
    ) -> None:
        self.in_force = in_force
        self.store = in_force.store
        self.clock = in_force.clock
        self.policy_file = policy_file
        self.sig_file = policy_file.with_name(policy_file.name + ".sig")
        self.on_tamper = on_tamper
        self.on_change = on_change
        self.settle = settle
        self.recheck_interval = recheck_interval
        self.last_offer: Offer | None = None
        self.last_rejection: dict[str, Any] | None = None
        self.rejections = 0
        self.errors = 0
        self._lock = threading.Lock()  # one offer at a time
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Any = None
        self._reported: str | None = None  # digest of the file pair last reported as tamper
        self._superseded: str | None = None  # digest of a file pair a collector policy replaced
        current = self.store.current()
        if current is not None:
            self._install(current)

    # -- reading -----------------------------------------------------------------------------
    @property
    def compiled(self) -> CompiledPolicy | None:
        return self.in_force.compiled

    def now(self) -> datetime:
        return self.in_force.now()

    def load_file(self) -> Offer | None:
        """Offer the file pair on disk; None when there is nothing to offer yet."""
        missing = [p for p in (self.policy_file, self.sig_file) if not p.exists()]
        if missing:
            if self.store.current() is None:
                log.warning("no policy yet: %s is missing", missing[0])
                return None
            reason = (
                f"{missing[0]}: policy file or signature is missing (fix: restore "
                f"{self.policy_file.name} and {self.sig_file.name})"
            )
            return self._offer(b"", b"", str(self.policy_file), failure=("missing", reason))
        try:
            data = read_capped(self.policy_file, MAX_POLICY_BYTES)
            sig = read_capped(self.sig_file, MAX_POLICY_BYTES)
        except ProscribeError as err:  # oversized, vanished or unreadable between the checks
            return self._offer(b"", b"", str(self.policy_file), failure=("unreadable", str(err)))
        except OSError as err:
            log.error("cannot read policy %s: %s", self.policy_file, err)
            return None
        if self._superseded is not None:
            if hashlib.sha256(data + b"\0" + sig).hexdigest() == self._superseded:
                return None  # the collector delivered a newer policy than this file
            self._superseded = None
        return self._offer(data, sig, str(self.policy_file))

    def offer(self, data: bytes, sig: bytes, origin: str) -> Offer:
        """A policy from elsewhere (the collector).

        Once it is accepted, the (older) policy file on disk is superseded: it is not offered
        again, nor reported as a rollback, until its content changes.
        """
        offer = self._offer(data, sig, origin)
        if offer.accepted:
            self._superseded = self._file_digest()
        return offer

    def _file_digest(self) -> str | None:
        try:
            data = read_capped(self.policy_file, MAX_POLICY_BYTES)
            sig = read_capped(self.sig_file, MAX_POLICY_BYTES)
        except (ProscribeError, OSError):
            return None
        return hashlib.sha256(data + b"\0" + sig).hexdigest()

    def _offer(
        self, data: bytes, sig: bytes, origin: str, failure: tuple[str, str] | None = None
    ) -> Offer:
        with self._lock:
            if failure is not None:
                offer = Offer("rejected", failure[0], failure[1], origin=origin)
            else:
                offer = self.store.offer(data, sig, self.clock(), origin)
            self.last_offer = offer
            if offer.accepted:
                policy = self.store.current()
                if policy is not None:
                    self._install(policy)
                self._reported = None
                return offer
            if offer.rejected:
                digest = hashlib.sha256(offer.kind.encode() + data + b"\0" + sig).hexdigest()
                if digest != self._reported:
                    self._reported = digest
                    self.rejections += 1
                    self.last_rejection = {
                        "time": self.clock().isoformat(),
                        "kind": offer.kind,
                        "reason": offer.reason,
                        "origin": origin,
                    }
                    log.error("policy rejected (%s): %s", offer.kind, offer.reason)
                    self.on_tamper(offer, self.in_force.compiled)
            return offer

    def _install(self, policy: Policy) -> None:
        compiled = CompiledPolicy.compile(policy)
        self.in_force.compiled = compiled
        if self.on_change is not None:
            self.on_change(compiled)

    # -- watching ----------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._observer = _start_observer(self.policy_file.parent, self._on_fs_event)
        self._thread = threading.Thread(target=self._loop, name="proscribe-policy", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._changed.set()
        if self._observer is not None:
            try:
                self._observer.stop()
                self._observer.join(timeout)
            except Exception:
                log.debug("watchdog observer did not stop cleanly", exc_info=True)
            self._observer = None
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _on_fs_event(self, path: str) -> None:
        name = Path(path).name
        if name in (self.policy_file.name, self.sig_file.name):
            self._changed.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            changed = self._changed.wait(self.recheck_interval)
            if self._stop.is_set():
                return
            try:
                if changed:
                    # wait until both files have been quiet for `settle` seconds
                    self._changed.clear()
                    while self._changed.wait(self.settle) and not self._stop.is_set():
                        self._changed.clear()
                    if self._stop.is_set():
                        return
                self.load_file()
                self.store.note_time(self.clock())
            except Exception:
                self.errors += 1
                log.exception("policy reload failed (continuing with the current policy)")

    def status(self) -> dict[str, Any]:
        status = self.store.status(self.clock())
        status["file"] = str(self.policy_file)
        status["rejections"] = self.rejections
        status["last_rejection"] = self.last_rejection
        return status


def _start_observer(directory: Path, callback: Callable[[str], None]) -> Any:
    """A watchdog observer on ``directory``; None (the periodic recheck remains) if unavailable."""
    try:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:  # pragma: no cover - watchdog is a dependency
        log.warning("watchdog is not installed; policy changes are seen at the periodic recheck")
        return None

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            for attr in ("src_path", "dest_path"):
                path = getattr(event, attr, "")
                if path:
                    callback(path if isinstance(path, str) else path.decode())

    observer = Observer()
    try:
        observer.schedule(Handler(), str(directory), recursive=False)
        observer.daemon = True
        observer.start()
    except OSError as err:
        log.warning("cannot watch %s (%s); relying on the periodic recheck", directory, err)
        return None
    return observer
