"""The agent daemon's composition root: :func:`build` wires the real collaborators.

::

    config ─► PolicyStore ─► PolicySource (file + .sig, watchdog, last good) ─► CompiledPolicy
      ProcessSensor (netlink | poll) ─► ProcessGuard ─► Spool (commit) ─► Killer, Notifier
      DnsSensor (optional, lazy import) ─┘                └─► Reporter (optional)
    status.json ◄─ Daemon (every agent.status_interval seconds)

Everything is constructed here and passed in; the parts take their collaborators as arguments
so tests can build them around temp directories. :meth:`Daemon.run` blocks until
:meth:`Daemon.stop` (SIGTERM/SIGINT when run from the main thread).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from proscribe.agent.config import AgentConfig
from proscribe.agent.dedupe import Deduper
from proscribe.agent.enforce.kill import Killer
from proscribe.agent.enforce.notify import Notifier
from proscribe.agent.optional_parts import (
    build_dns_for,
    build_exec_guard_for,
    build_reporter_for,
)
from proscribe.agent.policy_source import PolicySource
from proscribe.agent.process_guard import ProcessGuard
from proscribe.agent.sdnotify import SystemdNotifier
from proscribe.agent.sensors.process import ProcessSensor
from proscribe.agent.spool import Spool
from proscribe.agent.status_file import write_status
from proscribe.core import __version__
from proscribe.core.errors import ConfigError, ProscribeError, SpoolError
from proscribe.core.events import new_event
from proscribe.core.policy.bundle import Offer, PolicyStore, TrustConfig
from proscribe.core.policy.matchers.compiled import CompiledPolicy

__all__ = ["Daemon", "build", "load_trust"]

log = logging.getLogger(__name__)


def load_trust(config: AgentConfig) -> TrustConfig:
    """The trusted keys and threshold from the config, as the policy store needs them."""
    if not config.policy.trusted_keys:
        raise ConfigError(
            f"{config.source}: policy.trusted_keys is empty (fix: add the line from your "
            'signing key\'s NAME.pub, e.g. trusted_keys = ["ed25519:…"])'
        )
    try:
        return TrustConfig.from_strings(
            config.policy.trusted_keys, config.policy.threshold, f"{config.source}: policy"
        )
    except ProscribeError as err:
        raise ConfigError(f"{config.source}: policy.trusted_keys: {err}") from err


class Daemon:
    def __init__(
        self,
        config: AgentConfig,
        *,
        spool: Spool,
        policy: PolicySource,
        sensor: ProcessSensor,
        guard: ProcessGuard,
        hostname: str,
        reporter: Any = None,
        dns: Any = None,
        dns_state: str = "off",
        clock: Callable[[], float] = time.time,
        systemd: SystemdNotifier | None = None,
    ) -> None:
        self.config = config
        self.systemd = systemd if systemd is not None else SystemdNotifier.from_env()
        self.spool = spool
        self.policy = policy
        self.sensor = sensor
        self.guard = guard
        self.hostname = hostname
        self.reporter = reporter
        self.dns = dns
        self.dns_state = dns_state
        self.dns_guard: Any = None
        self.exec_guard: Any = None
        self.clock = clock
        self.started_at = clock()
        self.errors = 0
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._watchdog_withheld = False

    # -- events ------------------------------------------------------------------------------
    def host_info(self) -> dict[str, Any]:
        agent_id = ""
        if self.reporter is not None:
            try:
                agent_id = str(self.reporter.status().get("agent_id") or "")
            except Exception:
                log.debug("reporter status unavailable", exc_info=True)
        return {"agent_id": agent_id, "hostname": self.hostname, "os": _os_name()}

    def record_tamper(self, offer: Offer) -> None:
        """A rejected policy: a ``tamper`` event, committed; enforcement goes on unchanged."""
        compiled = self.policy.compiled
        event = new_event(
            "tamper",
            rule=None,
            action="reported",
            severity="critical",
            policy=self.guard.policy_section(compiled) if compiled is not None else None,
            host=self.host_info(),
            detail=f"policy rejected ({offer.kind}): {offer.reason}",
        )
        try:
            if not self.spool.append(event):
                log.error("tamper event could not be spooled")
        except Exception:
            log.exception("tamper event could not be spooled")
        self.notify_reporter()

    def notify_reporter(self) -> None:
        if self.reporter is not None:
            try:
                self.reporter.notify()
            except Exception:
                log.debug("reporter.notify failed", exc_info=True)

    def on_policy_change(self, compiled: CompiledPolicy) -> None:
        meta = compiled.policy.meta
        log.info("policy in force: %s serial %s (%s)", meta.id, meta.serial, compiled.policy.sha256)
        self.sensor.request_sweep(full=True)  # judge every running process by the new rules
        if self.exec_guard is not None:
            from proscribe.agent.enforce.exec_deny import policy_decider

            # drops the cached verdicts of the old policy
            self.exec_guard.set_decider(policy_decider(compiled, self.hostname, self.policy.now))

    def heartbeat(self) -> dict[str, Any]:
        """The heartbeat payload the reporter sends (see the collector API)."""
        policy = self.policy.status()
        spool = self.spool.stats()
        return {
            "agent_version": __version__,
            "hostname": self.hostname,
            "os": _os_name(),
            "mode": self.config.agent.mode,
            "policy": {k: policy.get(k) for k in ("id", "serial", "sha256", "expires", "stale")},
            "sensors": {"process": self.sensor.state, "dns": self.dns_state},
            "spool": {"depth": spool.depth, "bytes": spool.bytes, "dropped": spool.dropped_total},
            "time": datetime.now(UTC).isoformat(),
        }

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        process = self.sensor.stats()
        dns: dict[str, Any] = {"state": self.dns_state}
        if self.dns is not None:
            try:
                dns.update(self.dns.stats())
            except Exception:
                log.debug("dns stats unavailable", exc_info=True)
        reporter: dict[str, Any] | None = None
        if self.reporter is not None:
            try:
                reporter = dict(self.reporter.status())
            except Exception:
                log.debug("reporter status unavailable", exc_info=True)
        spool = self.spool.stats().to_dict()
        return {
            "pid": os.getpid(),
            "version": __version__,
            "written_at": self.clock(),
            "started_at": self.started_at,
            "status_interval": self.config.agent.status_interval,
            "mode": self.config.agent.mode,
            "hostname": self.hostname,
            "config": str(self.config.source),
            "sensors": {"process": process, "dns": dns},
            "policy": self.policy.status(),
            "spool": spool,
            "drops": {
                "process_sensor": dict(process["drops"]),
                "spool": dict(spool["dropped"]),
            },
            "enforcement": dict(self.guard.counts),
            "dns_events": dict(self.dns_guard.counts) if self.dns_guard is not None else {},
            "exec_deny": self.exec_guard.stats() if self.exec_guard is not None else None,
            "reporter": reporter,
            "last_upload": (reporter or {}).get("last_upload"),
            "errors": self.errors + self.sensor.errors + self.policy.errors,
        }

    def write_status(self) -> None:
        try:
            write_status(self.config.status_path, self.status())
        except Exception:
            self.errors += 1
            log.exception("could not write %s (continuing)", self.config.status_path)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.policy.start()
        if self.exec_guard is not None:
            self.exec_guard.start()  # asked for explicitly: a failure stops the agent, loudly
        self.sensor.start()
        if self.dns is not None:
            try:
                self.dns.start()
                self.dns_state = "running"
            except Exception as err:
                self.dns_state = f"failed: {err}"
                log.error("DNS sensor could not start: %s", err)
        if self.reporter is not None:
            try:
                self.reporter.start()
            except Exception:
                log.exception("reporter could not start; events stay in the spool")
                self.reporter = None
        self.write_status()

    def run(self) -> None:
        """Run until :meth:`stop`; installs SIGTERM/SIGINT handlers when on the main thread."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.start()
        log.info("proscribe agent %s running in %s mode", __version__, self.config.agent.mode)
        self.systemd.notify(f"READY=1\nSTATUS=running in {self.config.agent.mode} mode")
        watchdog = self.systemd.watchdog_interval
        next_status = time.monotonic() + self.config.agent.status_interval
        next_ping = time.monotonic()
        try:
            while not self._stop.wait(min(0.5, watchdog or 0.5)):
                try:
                    self.guard.flush_repeats()
                    if self.dns_guard is not None:
                        self.dns_guard.flush_repeats()
                except Exception:
                    self.errors += 1
                    log.exception("folding repeats failed (continuing)")
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + self.config.agent.status_interval
                    self.write_status()
                if watchdog is not None and time.monotonic() >= next_ping:
                    next_ping = time.monotonic() + watchdog
                    self._feed_watchdog()
        finally:
            self.shutdown()

    def _feed_watchdog(self) -> None:
        """systemd's keep-alive, sent from this loop (so a hung loop starves it) and only while
        the process sensor's threads live: without them the agent no longer enforces, and a
        starved watchdog makes systemd restart it."""
        if self.sensor.healthy():
            self.systemd.notify("WATCHDOG=1")
        elif not self._watchdog_withheld:
            self._watchdog_withheld = True
            self.errors += 1
            log.error(
                "a process sensor thread died; withholding the systemd watchdog keep-alive "
                "so that the service is restarted"
            )

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signum)
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.systemd.notify("STOPPING=1")
        parts = (("reporter", self.reporter), ("dns", self.dns), ("exec_deny", self.exec_guard))
        for name, part in parts:
            if part is not None:
                try:
                    part.stop(2.0)
                except Exception:
                    log.exception("%s did not stop cleanly", name)
        self.sensor.stop()
        self.policy.stop()
        try:
            self.guard.flush_repeats()
        except Exception:
            log.exception("folding repeats failed at shutdown")
        self.write_status()
        self.spool.close()
        log.info("proscribe agent stopped")


def _os_name() -> str:
    platform: str = sys.platform  # a plain str, so mypy does not prune the other branches
    for prefix, name in (("linux", "linux"), ("darwin", "macos"), ("win", "windows")):
        if platform.startswith(prefix):
            return name
    return platform


def build(
    config: AgentConfig,
    *,
    procfs: Path = Path("/proc"),
    with_reporter: bool = True,
    with_dns: bool = True,
) -> Daemon:
    """Build the daemon from the config: every real collaborator, nothing started yet."""
    trust = load_trust(config)
    state_dir = config.state_dir
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as err:
        raise ConfigError(
            f"{config.source}: agent.state_dir {state_dir} cannot be created: {err.strerror} "
            "(fix: create it or choose a writable directory)"
        ) from err
    try:
        spool = Spool(
            config.spool_path, max_events=config.spool.max_events, max_bytes=config.spool.max_bytes
        )
    except SpoolError:
        raise
    except OSError as err:
        raise SpoolError(f"{config.spool_path}: cannot open the spool: {err}") from err
    hostname = config.agent.hostname or socket.gethostname()

    holder: dict[str, Daemon] = {}

    def on_tamper(offer: Offer) -> None:
        daemon = holder.get("daemon")
        if daemon is not None:
            daemon.record_tamper(offer)
        else:
            pending_tamper.append(offer)

    def on_change(compiled: CompiledPolicy) -> None:
        daemon = holder.get("daemon")
        if daemon is not None:
            daemon.on_policy_change(compiled)

    pending_tamper: list[Offer] = []
    store = PolicyStore(state_dir, trust)
    policy = PolicySource(
        store,
        config.policy.file,
        on_tamper=on_tamper,
        on_change=on_change,
        recheck_interval=config.policy.recheck_interval,
    )
    policy.load_file()

    def want_sha256() -> bool:
        compiled = policy.compiled
        return compiled is not None and compiled.needs_sha256

    def handle(facts: Any, sighting: Any) -> None:
        guard.handle(facts, sighting)

    def interesting(facts: Any) -> bool:
        return guard.matches(facts)

    sensor = ProcessSensor(
        config.sensors.process,
        handle,
        procfs=procfs,
        poll_interval=config.sensors.poll_interval,
        sweep_interval=config.sensors.sweep_interval,
        queue_size=config.sensors.queue_size,
        want_sha256=want_sha256,
        interesting=interesting,
    )
    if sensor.enricher is None:  # not Linux: the killer still needs a start-time reader
        from proscribe.agent.sensors.enrich import Enricher

        enricher = Enricher(procfs)
    else:
        enricher = sensor.enricher
    deduper = Deduper(config.dedupe.window, time.monotonic)

    def host_info() -> dict[str, Any]:
        daemon = holder.get("daemon")
        if daemon is None:
            return {"agent_id": "", "hostname": hostname, "os": _os_name()}
        return daemon.host_info()

    def on_violation() -> None:
        daemon = holder.get("daemon")
        if daemon is not None:
            daemon.notify_reporter()

    guard = ProcessGuard(
        policy=policy,
        spool=spool,
        killer=Killer(enricher),
        notifier=Notifier(config.enforce.notify),
        deduper=deduper,
        mode=config.agent.mode,
        hostname=hostname,
        host_info=host_info,
        kill_children=config.enforce.kill_children,
        on_violation=on_violation,
    )
    daemon = Daemon(
        config, spool=spool, policy=policy, sensor=sensor, guard=guard, hostname=hostname
    )
    holder["daemon"] = daemon
    for offer in pending_tamper:
        daemon.record_tamper(offer)
    if with_reporter:
        daemon.reporter = build_reporter_for(config, daemon)
    if with_dns and config.sensors.dns != "off":
        daemon.dns, daemon.dns_state = build_dns_for(config, daemon)
    daemon.exec_guard = build_exec_guard_for(config, daemon)
    return daemon


def main(argv: list[str] | None = None) -> int:
    """``python -m proscribe.agent.daemon --config FILE``: the daemon without the CLI around it.

    ``proscribe agent run`` is the documented way; this entry point is kept for service
    managers that prefer a module path.
    """
    import argparse

    from proscribe.agent.config import load_agent_config

    parser = argparse.ArgumentParser(prog="proscribe agent run")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        build(load_agent_config(args.config)).run()
    except ProscribeError as err:
        print(f"proscribe: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
