"""The agent daemon's composition root: :func:`build` makes every collaborator, in dependency
order, and passes each one what it needs; :class:`Daemon` runs them.

::

    Spool, PolicyStore ─► PolicyInForce (the compiled policy the guards read)
    doorbell = threading.Event()  ─┐
    IdentityStore* ─► HostSection ─┴─► Evidence (commit to the spool, ring the doorbell)
                                         ├─► ProcessGuard ◄── ProcessSensor (netlink | poll)
                                         │     Killer, Notifier, Enricher (the /proc reader)
                                         ├─► DnsParts*: DnsGuard ◄── DNS sensor, DoH watch
                                         ├─► ModelPart*: ModelGuard ◄── ModelSensor
                                         └─► TamperRecorder
    ExecDenyGuard* ── on_denied ─► ProcessGuard.record_exec_denial
    PolicySource(PolicyInForce, on_tamper=TamperRecorder,
                 on_change=PolicyChange(ProcessSensor, ExecDenyGuard, ModelPart))
    Heartbeat(PolicySource, Spool, sensors) ─► Reporter*(Spool, IdentityStore, doorbell,
                                                         on_policy=PolicySource.offer)
    Daemon(all of the above)                                        * optional parts

Nothing is set on anything after it is built, and nothing reaches back into the daemon: the
reporter is woken through the doorbell both it and the evidence sink were given, and the agent
id reaches the events through the identity built before them. :meth:`Daemon.run` blocks until
:meth:`Daemon.stop` (SIGTERM/SIGINT when run from the main thread). The one entry point is
``proscribe agent run`` (``proscribe.cli.agent``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from proscribe.agent.browser_guard import BrowserGuard, build_browser_guard
from proscribe.agent.config import AgentConfig
from proscribe.agent.enforce.kill import Killer
from proscribe.agent.enforce.notify import Notifier
from proscribe.agent.evidence import Evidence, HostSection, TamperRecorder
from proscribe.agent.heartbeat import Heartbeat, active_guard, stopped_by
from proscribe.agent.inbox import drain_inbox
from proscribe.agent.kernel_guard import KernelGuard
from proscribe.agent.model_parts import ModelPart, build_models_for
from proscribe.agent.optional_parts import (
    DnsPart,
    DnsParts,
    ExecGuardPart,
    ReporterPart,
    build_dns_for,
    build_exec_guard_for,
    build_identity_for,
    build_reporter_for,
)
from proscribe.agent.policy_source import PolicyInForce, PolicySource
from proscribe.agent.process_guard import ProcessGuard
from proscribe.agent.sdnotify import SystemdNotifier
from proscribe.agent.sensors.enrich import Enricher
from proscribe.agent.sensors.process import ProcessSensor
from proscribe.agent.sensors.users import UserNames
from proscribe.agent.sightings import SightingBook, read_boot_id
from proscribe.agent.spool import Spool
from proscribe.agent.status_file import write_status
from proscribe.core import __version__
from proscribe.core.errors import ConfigError, ProscribeError, SpoolError
from proscribe.core.policy.bundle import PolicyStore, TrustConfig
from proscribe.core.policy.matchers.compiled import CompiledPolicy

__all__ = ["Daemon", "PolicyChange", "build", "load_trust"]

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


class PolicyChange:
    """``PolicySource``'s ``on_change``: a new policy re-judges what runs and what will run."""

    def __init__(
        self,
        sensor: ProcessSensor,
        exec_guard: ExecGuardPart | None,
        policy: PolicyInForce,
        hostname: str,
        kernel: KernelGuard | None = None,
        models: ModelPart | None = None,
        browsers: BrowserGuard | None = None,
    ) -> None:
        self.kernel = kernel
        self.sensor = sensor
        self.exec_guard = exec_guard
        self.policy = policy
        self.hostname = hostname
        self.models = models
        self.browsers = browsers

    def __call__(self, compiled: CompiledPolicy) -> None:
        meta = compiled.policy.meta
        log.info("policy in force: %s serial %s (%s)", meta.id, meta.serial, compiled.policy.sha256)
        if self.kernel is not None:
            self.kernel.refresh()  # the kernel's maps first: new execs are judged at once
        self.sensor.request_sweep(full=True)  # judge every running process by the new rules
        if self.exec_guard is not None:
            from proscribe.agent.enforce.exec_deny import policy_decider

            # drops the cached verdicts of the old policy
            self.exec_guard.set_decider(policy_decider(compiled, self.hostname, self.policy.now))
        if self.models is not None:
            self.models.policy_changed()  # judge the model files again by the new rules
        if self.browsers is not None:
            self.browsers.on_policy(compiled)  # managed browser policies follow the policy


class Daemon:
    """Runs what :func:`build` made: starts the parts, loops (repeats folded, ``status.json``
    written, systemd's watchdog fed) until stopped, then shuts them down in order."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        spool: Spool,
        policy: PolicySource,
        sensor: ProcessSensor,
        guard: ProcessGuard,
        dns: DnsPart,
        exec_guard: ExecGuardPart | None,
        reporter: ReporterPart | None,
        hostname: str,
        kernel: KernelGuard | None = None,
        clock: Callable[[], float] = time.time,
        systemd: SystemdNotifier | None = None,
        models: ModelPart | None = None,
        evidence: Evidence | None = None,
        browsers: BrowserGuard | None = None,
    ) -> None:
        self.browsers = browsers
        self.config = config
        self.systemd = systemd if systemd is not None else SystemdNotifier.from_env()
        self.spool = spool
        self.policy = policy
        self.sensor = sensor
        self.guard = guard
        self.dns = dns
        self.exec_guard = exec_guard
        self.kernel = kernel
        self.hostname = hostname
        self.clock = clock
        self.started_at = clock()
        self.reporter = reporter  # None without one, or once it could not start
        self.models = models  # None when [models] sensor = "off"
        self.evidence = evidence  # for events other commands leave in state_dir/inbox
        self.errors = 0  # written by the daemon's own thread only
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._watchdog_withheld = False
        self.stop_signal: str | None = None  # the signal that stopped the agent, if one did

    @property
    def dns_state(self) -> str:
        return self.dns.state

    # -- status ------------------------------------------------------------------------------
    def active_guard(self) -> str:
        """Which guard stops a denied program here (:func:`heartbeat.active_guard`)."""
        return active_guard(
            mode=self.config.agent.mode,
            kernel_active=self.kernel is not None and self.kernel.active,
            exec_guard=self.exec_guard is not None,
            process_backend=self.sensor.backend,
        )

    def status(self) -> dict[str, Any]:
        process = self.sensor.stats()
        dns: dict[str, Any] = {"state": self.dns.state}
        try:
            dns = self.dns.stats()
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
            "sensors": {"process": process, "dns": dns, "models": self._models_stats()},
            "policy": self.policy.status(),
            "spool": spool,
            "drops": {
                "process_sensor": dict(process["drops"]),
                "spool": dict(spool["dropped"]),
                "dns": self.dns.dropped(),  # kernel receive overflows + full queues
            },
            "enforcement": self.guard.counts.snapshot(),
            "dns_events": self.dns.event_counts(),
            "exec_deny": self.exec_guard.stats() if self.exec_guard is not None else None,
            "guard": {
                "active": self.active_guard(),
                "kernel": self.kernel.stats() if self.kernel is not None else {"state": "off"},
            },
            "browser_policies": self.browsers.status() if self.browsers is not None else None,
            "reporter": reporter,
            "last_upload": (reporter or {}).get("last_upload"),
            "errors": self.errors
            + self.sensor.errors
            + self.policy.errors
            + (self.models.errors if self.models is not None else 0),
        }

    def _models_stats(self) -> dict[str, Any]:
        if self.models is None:
            return {"state": "off"}
        try:
            return self.models.stats()
        except Exception:
            log.debug("model sensor stats unavailable", exc_info=True)
            return {"state": "unknown"}

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
        if self.kernel is not None:
            # its reports go to the process guard; "required" and unavailable: stops the
            # agent, loudly
            self.kernel.start(self.guard.record_kernel_report)
        self.sensor.start()
        self.dns.start()  # cannot fail the agent: its state says what went wrong
        if self.models is not None:
            try:
                self.models.start()
            except Exception:
                log.exception("model sensor could not start; local models are not watched")
                self.models = None
        if self.reporter is not None:
            try:
                self.reporter.start()
            except Exception:
                log.exception("reporter could not start; events stay in the spool")
                self.reporter = None
        self._drain_inbox()
        self.write_status()

    def run(self) -> None:
        """Run until :meth:`stop`; installs SIGTERM/SIGINT handlers when on the main thread."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        try:
            self.start()  # a part asked for that cannot run (exec-deny) ends here, cleanly
            log.info("proscribe agent %s running in %s mode", __version__, self.config.agent.mode)
            self.systemd.notify(f"READY=1\nSTATUS=running in {self.config.agent.mode} mode")
            watchdog = self.systemd.watchdog_interval
            next_status = time.monotonic() + self.config.agent.status_interval
            next_ping = time.monotonic()
            while not self._stop.wait(min(0.5, watchdog or 0.5)):
                try:
                    self.guard.flush_repeats()
                    self.dns.flush_repeats()
                except Exception:
                    self.errors += 1
                    log.exception("folding repeats failed (continuing)")
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + self.config.agent.status_interval
                    self._drain_inbox()
                    if self.browsers is not None:
                        self.browsers.check()  # a changed or removed file: restored, recorded
                    self.write_status()
                if watchdog is not None and time.monotonic() >= next_ping:
                    next_ping = time.monotonic() + watchdog
                    self._feed_watchdog()
        finally:
            self.shutdown()

    def _drain_inbox(self) -> None:
        """Findings other commands (``scan --report``) left for this agent to send."""
        if self.evidence is None:
            return
        try:
            drain_inbox(self.config.state_dir, self.evidence)
        except Exception:
            self.errors += 1
            log.exception("draining the inbox failed (continuing)")

    def _feed_watchdog(self) -> None:
        """systemd's keep-alive, sent from this loop (so a hung loop starves it) and only while
        the process sensor's threads live: without them the agent no longer enforces, and a
        starved watchdog makes systemd restart it."""
        if self.sensor.healthy() and (self.models is None or self.models.healthy()):
            self.systemd.notify("WATCHDOG=1")
        elif not self._watchdog_withheld:
            self._watchdog_withheld = True
            self.errors += 1
            log.error(
                "a sensor thread (process or models) died; withholding the systemd watchdog "
                "keep-alive so that the service is restarted"
            )

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signum)
        try:
            self.stop_signal = signal.Signals(signum).name
        except ValueError:
            self.stop_signal = f"signal {signum}"
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.systemd.notify("STOPPING=1")
        parts: tuple[
            tuple[str, ReporterPart | DnsPart | ExecGuardPart | ModelPart | KernelGuard | None],
            ...,
        ] = (
            ("models", self.models),
            ("reporter", self.reporter),
            ("dns", self.dns),
            ("exec_deny", self.exec_guard),
            ("kernel_guard", self.kernel),
        )
        for name, part in parts:
            if part is not None:
                try:
                    part.stop(2.0)
                except Exception:
                    log.exception("%s did not stop cleanly", name)
            if name == "reporter" and self.reporter is not None:
                try:  # the host shows "stopped", with who stopped it, not an outage
                    self.reporter.farewell(stopped_by(self.stop_signal))
                except Exception:
                    log.exception("goodbye heartbeat failed")
        self.sensor.stop()
        self.policy.stop()
        try:
            self.guard.flush_repeats()
        except Exception:
            log.exception("folding repeats failed at shutdown")
        self.write_status()
        self.spool.close()
        log.info("proscribe agent stopped")


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
    in_force = PolicyInForce(PolicyStore(state_dir, trust))

    # What records events: built before anything that records, shared by all of it.
    doorbell = threading.Event()  # rung on every committed event; the reporter waits on it
    identity = build_identity_for(config) if with_reporter else None
    evidence = Evidence(spool, HostSection(hostname, identity), doorbell.set)

    users = UserNames()  # uid -> account name, one cache for every reader
    reader = Enricher(procfs, users=users)  # the procfs reader of the sensor, killer and guard
    kernel = KernelGuard(  # its reports go to the process guard, given at start
        config.enforce.kernel_guard,
        mode=config.agent.mode,
        policy=in_force,
        hostname=hostname,
        procfs=procfs,
        boot_time=reader.boot_time,
    )
    guard = ProcessGuard(
        policy=in_force,
        evidence=evidence,
        killer=Killer(reader),
        notifier=Notifier(config.enforce.notify),
        window=config.dedupe.window,
        mode=config.agent.mode,
        hostname=hostname,
        kill_children=config.enforce.kill_children,
        kernel=kernel,
        users=users.name,
        sightings=SightingBook(spool, read_boot_id(procfs)),
    )
    sensor = ProcessSensor(
        config.sensors.process,
        guard.handle,
        enricher=reader,
        poll_interval=config.sensors.poll_interval,
        sweep_interval=config.sensors.sweep_interval,
        queue_size=config.sensors.queue_size,
        want_sha256=in_force.needs_sha256,
        interesting=guard.matches,
    )
    browsers = build_browser_guard(
        config.enforce.browser_policies,
        evidence=evidence,
        policy=in_force,
        enforce=config.agent.mode == "enforce",
    )
    dns = (
        build_dns_for(config, policy=in_force, evidence=evidence, hostname=hostname, users=users)
        if with_dns
        else DnsParts("off")
    )
    exec_guard = build_exec_guard_for(
        config,
        policy=in_force,
        on_denied=guard.record_exec_denial,
        hostname=hostname,
        users=users,
    )
    # Local AI models: files judged by content, and the programs that load them (issue 12).
    models = build_models_for(
        config, policy=in_force, evidence=evidence, killer=guard.killer, users=users,
        hostname=hostname, procfs=procfs,
    )  # fmt: skip
    policy = PolicySource(
        in_force,
        config.policy.file,
        on_tamper=TamperRecorder(evidence),
        on_change=PolicyChange(
            sensor, exec_guard, in_force, hostname, kernel=kernel, models=models, browsers=browsers
        ),
        recheck_interval=config.policy.recheck_interval,
    )
    policy.load_file()
    heartbeat = Heartbeat(
        hostname=hostname,
        mode=config.agent.mode,
        policy=policy,
        spool=spool,
        process=sensor,
        dns=dns,
        exec_guard=exec_guard,
        kernel=kernel,
        models=models,
        dns_dropped=dns.dropped,
    )
    reporter = build_reporter_for(
        config,
        spool=spool,
        identity=identity,
        heartbeat=heartbeat,
        on_policy=lambda data, sig: policy.offer(data, sig, "collector"),
        wake=doorbell,
    )
    return Daemon(
        config,
        spool=spool,
        policy=policy,
        sensor=sensor,
        guard=guard,
        dns=dns,
        exec_guard=exec_guard,
        reporter=reporter,
        hostname=hostname,
        kernel=kernel,
        models=models,
        evidence=evidence,
        browsers=browsers,
    )
