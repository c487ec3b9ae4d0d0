"""The daemon's optional collaborators, each imported lazily so the agent runs without them.

* the reporter, when ``[collector]`` is configured: without it (or if it cannot be built)
  events stay in the spool;
* the DNS sensor (``proscribe.agent.sensors.dns``) with :class:`DnsGuard` deciding and
  recording: when the chosen mode cannot run here the agent goes on without DNS and says why;
* the fanotify pre-exec guard (``[enforce] exec_deny_mounts``), Linux only: asked for
  explicitly, so when it cannot run the agent refuses to start with a clear error.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from proscribe.agent.config import AgentConfig
from proscribe.core.errors import ConfigError, ProscribeError

if TYPE_CHECKING:
    from proscribe.agent.daemon import Daemon

__all__ = ["build_dns_for", "build_exec_guard_for", "build_reporter_for"]

log = logging.getLogger(__name__)


def build_reporter_for(config: AgentConfig, daemon: Daemon) -> Any:
    """The reporter when ``[collector]`` is configured; unavailable, events stay spooled."""
    collector = config.collector
    if collector is None:
        return None
    try:
        from proscribe.agent.reporter import build_reporter
    except ImportError as err:
        log.warning("reporter not available (%s); events stay in the spool", err)
        return None
    try:
        return build_reporter(
            config,
            spool=daemon.spool,
            heartbeat_source=daemon.heartbeat,
            on_policy=lambda data, sig: daemon.policy.offer(data, sig, "collector"),
        )
    except ProscribeError:
        raise  # a bad [collector] key: the user must fix the config
    except Exception:
        log.exception("reporter could not be built; events stay in the spool")
        return None


def build_dns_for(config: AgentConfig, daemon: Daemon) -> tuple[Any, str]:
    """The DNS sensor, imported lazily. When it cannot run here the agent goes on without it:
    process enforcement matters more; the reason is logged at ERROR and shown in status."""
    try:
        from proscribe.agent.dns_guard import DnsGuard
        from proscribe.agent.sensors.dns import DnsSettings, build_dns_sensor
    except ImportError as err:
        log.error("DNS sensor not available in this build (%s)", err)
        return None, "unavailable"
    mode = config.sensors.dns
    guard = DnsGuard(
        policy=daemon.policy,
        spool=daemon.spool,
        hostname=daemon.hostname,
        host_info=daemon.host_info,
        on_violation=daemon.notify_reporter,
        window=config.dedupe.window,
    )
    daemon.dns_guard = guard
    try:
        settings = DnsSettings.from_config(config.dns, enforce=config.agent.mode == "enforce")
        sensor = build_dns_sensor(mode, settings, guard.on_observation, guard.decide)
    except ProscribeError as err:
        log.error("DNS sensor (%s) not started: %s", mode, err)
        return None, f"unavailable: {err}"
    except Exception as err:
        log.exception("DNS sensor (%s) could not be built", mode)
        return None, f"failed: {err}"
    built = _encrypted_dns_watch(config, guard)
    if built is not None:
        sensor = DnsParts(sensor, *built)
    return sensor, "starting"


def _encrypted_dns_watch(config: AgentConfig, guard: Any) -> tuple[Any, Any] | None:
    """The DoT/DoH connection watch (``[dns] watch_encrypted``), Linux only, and the
    attributor it owns (closed with it)."""
    import sys

    if not config.dns.watch_encrypted or not sys.platform.startswith("linux"):
        return None
    from proscribe.agent.sensors.dns import ProcessAttributor
    from proscribe.agent.sensors.dns.encrypted import EncryptedDnsWatch, resolver_table

    attributor = ProcessAttributor()

    def attribute(connection: Any) -> tuple[Any, str | None] | None:
        found = attributor.attribute(connection.transport, connection.local, connection.remote)
        if found.forwarded:
            return None  # a stub resolver (e.g. resolved with DNSOverTLS): apps' queries seen
        return found.process, found.reason

    watch = EncryptedDnsWatch(
        guard.on_encrypted,
        attribute,
        window=max(config.dedupe.window, 3600.0),
        resolvers=resolver_table(config.dns.doh_resolvers),
    )
    return watch, attributor


class DnsParts:
    """The DNS sensor and the encrypted-DNS watch, started and stopped as one part."""

    def __init__(self, sensor: Any, watch: Any, attributor: Any) -> None:
        self.sensor = sensor
        self.watch = watch
        self._attributor = attributor

    def start(self) -> None:
        self.sensor.start()  # its failure is the DNS state's (the daemon reports it)
        try:
            self.watch.start()
        except Exception:
            log.exception("encrypted DNS watch could not start (DNS sensor unaffected)")

    def stop(self, timeout: float = 2.0) -> None:
        self.watch.stop(timeout)
        self._attributor.close()
        self.sensor.stop(timeout)

    def stats(self) -> dict[str, Any]:
        stats = dict(self.sensor.stats())
        stats["encrypted_dns"] = dict(self.watch.counts)
        return stats


def build_exec_guard_for(config: AgentConfig, daemon: Daemon) -> Any:
    """The pre-exec guard when ``enforce.exec_deny_mounts`` names mounts, else ``None``."""
    if not config.enforce.exec_deny_mounts:
        return None
    import sys

    if not sys.platform.startswith("linux"):
        raise ConfigError(
            f"{config.source}: enforce.exec_deny_mounts: pre-exec deny needs Linux fanotify "
            "(fix: remove the key on this platform)"
        )
    from proscribe.agent.enforce.exec_deny import build_exec_guard

    def on_denied(request: Any, verdict: Any) -> None:
        record_exec_denied(daemon, request, verdict)

    return build_exec_guard(
        {
            "exec_deny_mounts": list(config.enforce.exec_deny_mounts),
            "exec_deny_timeout_ms": config.enforce.exec_deny_timeout_ms,
            "exec_deny_cache_size": config.enforce.exec_deny_cache_size,
        },
        lambda: daemon.policy.compiled,
        on_denied,
        config.agent.mode,
        host=daemon.hostname,
        now=daemon.policy.now,
    )


def record_exec_denied(daemon: Daemon, request: Any, verdict: Any) -> None:
    """Commit a ``process`` event for an exec the guard refused (or would have, in monitor)."""
    from os.path import basename

    from proscribe.agent.process_guard import process_section
    from proscribe.core.events import new_event
    from proscribe.core.policy.matchers import ProcessFacts

    compiled = daemon.policy.compiled
    facts = ProcessFacts(
        pid=request.pid,
        name=basename(request.path)[:15],
        exe=request.path,
        user=request.user or "",
        uid=request.uid,
        sha256=request.sha256,
    )
    severity = next((d.severity for d in verdict.decisions if d.rule_id == verdict.rule_id), "high")
    event = new_event(
        "process",
        rule=verdict.rule_id,
        action=verdict.action,
        severity=severity,
        policy=daemon.guard.policy_section(compiled) if compiled is not None else None,
        host=daemon.host_info(),
        process=process_section(facts),
        detail=f"{verdict.reason} (exec refused before start)"
        if verdict.action == "denied"
        else f"{verdict.reason} (monitor: exec would have been refused)",
    )
    if daemon.spool.append(event):
        daemon.notify_reporter()
