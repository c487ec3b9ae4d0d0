"""The daemon's optional parts, each imported lazily so the agent runs without them, and the
Protocols the daemon sees them through.

* the reporter (:class:`ReporterPart`), when ``[collector]`` is configured: without it (or if it
  cannot be built) events stay in the spool. Its identity (key and agent id) is built first, on
  its own, because every event's ``host`` section names the agent id;
* the DNS part (:class:`DnsPart`, made as :class:`DnsParts`): the DNS sensor
  (``proscribe.agent.sensors.dns``) with the :class:`~proscribe.agent.dns_guard.DnsGuard`
  deciding and recording, and the encrypted-DNS watch; when the chosen mode cannot run here
  the agent goes on without DNS and its ``state`` says why;
* the fanotify pre-exec guard (:class:`ExecGuardPart`, ``[enforce] exec_deny_mounts``), Linux
  only: asked for explicitly, so when it cannot run the agent refuses to start with a clear
  error.

Each builder takes what it needs as arguments; none of them sees the daemon.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from proscribe.agent.config import AgentConfig
from proscribe.agent.evidence import Evidence
from proscribe.agent.policy_source import PolicyInForce
from proscribe.agent.sensors.users import UserNames
from proscribe.agent.spool import Spool
from proscribe.core.errors import ConfigError, ProscribeError

if TYPE_CHECKING:
    from proscribe.agent.dns_guard import DnsGuard
    from proscribe.agent.enforce.dns_redirect import DnsRedirect
    from proscribe.agent.enforce.exec_verdicts import Decide, OnDenied
    from proscribe.agent.reporter import IdentityStore
    from proscribe.agent.sensors.dns import DnsSensor, ProcessAttributor
    from proscribe.agent.sensors.dns.encrypted import EncryptedDnsConnection, EncryptedDnsWatch
    from proscribe.agent.sensors.dns.encrypted_block import EncryptedDnsBlocker

__all__ = [
    "DnsPart",
    "DnsParts",
    "ExecGuardPart",
    "ReporterPart",
    "auto_dns_mode",
    "build_dns_for",
    "build_exec_guard_for",
    "build_identity_for",
    "build_reporter_for",
]

log = logging.getLogger(__name__)


class ReporterPart(Protocol):
    def start(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...

    def status(self) -> Mapping[str, Any]: ...

    def farewell(self, by: str, timeout: float = 3.0) -> bool: ...


class DnsPart(Protocol):
    @property
    def state(self) -> str: ...

    def start(self) -> None: ...

    def stop(self, timeout: float = 2.0) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def event_counts(self) -> dict[str, int]: ...

    def flush_repeats(self) -> None: ...

    def dropped(self) -> int: ...


class ExecGuardPart(Protocol):
    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def set_decider(self, decide: Decide) -> None: ...


def build_identity_for(config: AgentConfig) -> IdentityStore | None:
    """The agent's key and collector-given id when ``[collector]`` is configured."""
    if config.collector is None:
        return None
    try:
        from proscribe.agent.reporter import build_identity
    except ImportError as err:
        log.warning("reporter not available (%s); events stay in the spool", err)
        return None
    return build_identity(config)  # a ConfigError (state_dir) stops the agent: fix the config


def build_reporter_for(
    config: AgentConfig,
    *,
    spool: Spool,
    identity: IdentityStore | None,
    heartbeat: Callable[[], dict[str, Any]],
    on_policy: Callable[[bytes, bytes], object],
    wake: threading.Event,
) -> ReporterPart | None:
    """The reporter when ``[collector]`` is configured; unavailable, events stay spooled."""
    if config.collector is None or identity is None:
        return None
    from proscribe.agent.reporter import build_reporter

    try:
        return build_reporter(
            config,
            spool=spool,
            identity=identity,
            heartbeat_source=heartbeat,
            on_policy=on_policy,
            wake=wake,
        )
    except ProscribeError:
        raise  # a bad [collector] key: the user must fix the config
    except Exception:
        log.exception("reporter could not be built; events stay in the spool")
        return None


class DnsParts:
    """The DNS sensor, the encrypted-DNS watch and the guard recording what they see, started
    and stopped as one part. ``state`` says whether it runs and, when not, why."""

    def __init__(
        self,
        state: str,
        *,
        guard: DnsGuard | None = None,
        sensor: DnsSensor | None = None,
        watch: EncryptedDnsWatch | None = None,
        attributor: ProcessAttributor | None = None,
        redirect: Callable[[int, bool, int | None, int | None], DnsRedirect] | None = None,
        blocker: EncryptedDnsBlocker | None = None,
        fallback: str | None = None,
    ) -> None:
        self._fallback = fallback  # auto fell back to capture: why (shown in the state)
        self.state = state
        self.guard = guard
        self.sensor = sensor
        self.watch = watch
        self._attributor = attributor
        # (resolver port, IPv6 resolver runs, encrypted-DNS queue, log group) -> the redirect
        self._make_redirect = redirect
        self.blocker = blocker
        self.redirect: DnsRedirect | None = None

    def start(self) -> None:
        if self.sensor is None:
            return
        try:
            self.sensor.start()
        except Exception as err:  # the process sensor matters more: go on without DNS
            self.state = f"failed: {err}"
            log.error("DNS sensor could not start: %s", err)
            return
        self.state = "running" if self._fallback is None else f"running ({self._fallback})"
        if self._make_redirect is not None:
            self._start_redirect(self._make_redirect)
        if self.watch is not None:
            try:
                self.watch.start()
            except Exception:
                log.exception("encrypted DNS watch could not start (DNS sensor unaffected)")

    def _start_redirect(
        self, make: Callable[[int, bool, int | None, int | None], DnsRedirect]
    ) -> None:
        """Every DNS query to the resolver (nftables). Without it the resolver still answers
        what is sent to it and capture reports the rest; the state says so.

        Encrypted-DNS attempts go through the agent's queue (exact attribution) where the
        kernel has nftables' ``queue`` expression; else the kernel rejects them and copies
        each to an NFLOG group the agent reads (uid always, process when still findable)."""
        port = int(getattr(self.sensor, "port", 53))
        ipv6 = bool(getattr(self.sensor, "ipv6", False))
        resolver_error = getattr(self.sensor, "resolver_error", None)
        if resolver_error:
            self.state = f"capture only, nothing redirected: {resolver_error}"
            return
        queue: int | None = None
        if self.blocker is not None:
            try:
                self.blocker.start()
                queue = self.blocker.queue
            except Exception as err:  # rejected all the same, but not reported per attempt
                log.error("encrypted DNS queue not bound (%s): attempts rejected unreported", err)
                self.blocker = None
        try:
            try:
                redirect = make(port, ipv6, queue, None)
                redirect.start()
            except Exception as err:
                if queue is None or self.blocker is None:
                    raise
                log.info("nftables queue unavailable (%s); encrypted DNS reported via NFLOG", err)
                self.blocker.stop(final=False)
                group: int | None = self.blocker.queue
                try:
                    self.blocker.start(log_only=True)
                except Exception as log_err:
                    log.error("NFLOG not available (%s): attempts rejected unreported", log_err)
                    self.blocker, group = None, None
                redirect = make(port, ipv6, None, group)
                redirect.start()
        except Exception as err:
            self.state = f"running without redirect: {err}"
            log.error("DNS redirect (nftables) not installed: %s", err)
            return
        self.redirect = redirect
        self.state = "running (redirect active)"

    def stop(self, timeout: float = 2.0) -> None:
        if self.redirect is not None:  # first: DNS must flow normally before the resolver stops
            self.redirect.stop(timeout)
        if self.blocker is not None:
            self.blocker.stop(timeout)
        if self.watch is not None:
            self.watch.stop(timeout)
        if self._attributor is not None:
            self._attributor.close()
        if self.sensor is not None:
            self.sensor.stop(timeout)
        if self.guard is not None:
            self.guard.flush_repeats()  # the last repeats, before the spool closes

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {"state": self.state}
        if self.sensor is not None:
            stats.update(self.sensor.stats())
        if self.watch is not None:
            stats["encrypted_dns"] = dict(self.watch.counts)
        if self.redirect is not None:
            stats["redirect"] = self.redirect.stats()
        if self.blocker is not None:
            stats["encrypted_dns_blocked"] = self.blocker.stats()
        return stats

    def dropped(self) -> int:
        """DNS messages lost before the agent saw them: kernel receive-buffer overflows and
        full hand-off queues, of every DNS socket (``dns_dropped`` in the heartbeat)."""
        if self.sensor is None:
            return 0
        try:
            stats = self.sensor.stats()
        except Exception:
            return 0
        parts = [stats] + [v for v in stats.values() if isinstance(v, dict)]
        return sum(
            int(part.get(key, 0) or 0)
            for part in parts
            for key in ("dropped_kernel", "dropped_queue")
        )

    def event_counts(self) -> dict[str, int]:
        """The guard's counts of ``dns`` events by action (``dns_events`` in status)."""
        return self.guard.counts.snapshot() if self.guard is not None else {}

    def flush_repeats(self) -> None:
        if self.guard is not None:
            self.guard.flush_repeats()


def build_dns_for(
    config: AgentConfig,
    *,
    policy: PolicyInForce,
    evidence: Evidence,
    hostname: str,
    users: UserNames,
) -> DnsPart:
    """The DNS part for ``[sensors] dns``, imported lazily. When it cannot run here the agent
    goes on without it: process enforcement matters more; the reason is logged at ERROR and
    shown in status."""
    mode: str = config.sensors.dns
    if mode == "off":
        return DnsParts("off")
    if mode == "auto":
        mode = auto_dns_mode(config)
    try:
        from proscribe.agent.dns_guard import DnsGuard
        from proscribe.agent.sensors.dns import DnsSettings, build_dns_sensor
    except ImportError as err:
        log.error("DNS sensor not available in this build (%s)", err)
        return DnsParts("unavailable")
    guard = DnsGuard(
        policy=policy, evidence=evidence, hostname=hostname, window=config.dedupe.window
    )
    redirect = None
    fallback: str | None = None
    try:
        settings = DnsSettings.from_config(config.dns, enforce=config.agent.mode == "enforce")
        if mode == "auto":
            from dataclasses import replace

            from proscribe.agent.enforce.dns_redirect import AGENT_MARK

            settings = replace(settings, mark=AGENT_MARK)
            redirect = _redirect_factory(config)
        try:
            sensor = build_dns_sensor(
                mode, settings, guard.on_observation, guard.decide, users=users
            )
        except ProscribeError as err:
            if mode != "auto":
                raise
            # e.g. no upstream to forward to: capture alone, and the state says why
            log.error("DNS resolver not built (%s); capture only, nothing redirected", err)
            redirect = None
            fallback = f"capture only, nothing redirected: {err}"
            sensor = build_dns_sensor(
                "capture", settings, guard.on_observation, guard.decide, users=users
            )
    except ProscribeError as err:
        log.error("DNS sensor (%s) not started: %s", mode, err)
        return DnsParts(f"unavailable: {err}", guard=guard)
    except Exception as err:
        log.exception("DNS sensor (%s) could not be built", mode)
        return DnsParts(f"failed: {err}", guard=guard)
    watch, attributor = _encrypted_dns_watch(config, guard.on_encrypted, users)
    blocker = None
    if redirect is not None and config.dns.block_encrypted:
        blocker = _encrypted_dns_blocker(config, guard.on_encrypted, users)
    return DnsParts(
        "starting",
        guard=guard,
        sensor=sensor,
        watch=watch,
        attributor=attributor,
        redirect=redirect,
        blocker=blocker,
        fallback=fallback,
    )


def _encrypted_dns_blocker(
    config: AgentConfig,
    on_connection: Callable[[EncryptedDnsConnection], None],
    users: UserNames,
) -> EncryptedDnsBlocker:
    """Reads the attempts the redirect's rules queue (attributed, rejected, reported)."""
    from proscribe.agent.enforce.dns_redirect import DEFAULT_QUEUE, REJECT_MARK
    from proscribe.agent.sensors.dns import ProcessAttributor
    from proscribe.agent.sensors.dns.encrypted import resolver_table
    from proscribe.agent.sensors.dns.encrypted_block import EncryptedDnsBlocker

    lookup = ProcessAttributor(users=users)  # its own: the watch's runs on another thread

    def attribute(
        transport: str, local: tuple[str, int], remote: tuple[str, int]
    ) -> tuple[dict[str, Any] | None, str | None]:
        found = lookup.attribute(transport, local, remote)
        return found.process, found.reason

    return EncryptedDnsBlocker(
        on_connection,
        attribute,
        queue=DEFAULT_QUEUE,
        reject_mark=REJECT_MARK,
        resolvers=resolver_table(config.dns.doh_resolvers),
        on_stop=lookup.close,
    )


def auto_dns_mode(config: AgentConfig) -> str:
    """What ``[sensors] dns = "auto"`` runs here: the enforcing resolver with capture and
    the nftables redirect on Linux as root in enforce mode ("auto"); capture alone otherwise
    (monitor mode must not put a resolver in the path; capture says itself why it cannot run
    when not root)."""
    linux_root = sys.platform.startswith("linux") and os.geteuid() == 0
    if linux_root and config.agent.mode == "enforce":
        return "auto"
    return "capture"


def _redirect_factory(
    config: AgentConfig,
) -> Callable[[int, bool, int | None, int | None], DnsRedirect]:
    def make(port: int, ipv6: bool, queue: int | None, log_group: int | None) -> DnsRedirect:
        from proscribe.agent.enforce.dns_redirect import DnsRedirect, stub_resolver_uids
        from proscribe.agent.sensors.dns.encrypted import resolver_table

        return DnsRedirect(
            port=port,
            ipv6=ipv6,
            block_encrypted=config.dns.block_encrypted,
            ttl=config.dns.redirect_ttl,
            queue=queue,
            log_group=log_group,
            exempt_uids=stub_resolver_uids(),
            refresh=config.dns.redirect_ttl / 5,
            doh_resolvers=resolver_table(config.dns.doh_resolvers),
        )

    return make


def _encrypted_dns_watch(
    config: AgentConfig,
    on_connection: Callable[[EncryptedDnsConnection], None],
    users: UserNames,
) -> tuple[EncryptedDnsWatch | None, ProcessAttributor | None]:
    """The DoT/DoH connection watch (``[dns] watch_encrypted``), Linux only, and the
    attributor it owns (closed with it)."""
    if not config.dns.watch_encrypted or not sys.platform.startswith("linux"):
        return None, None
    from proscribe.agent.sensors.dns import ProcessAttributor
    from proscribe.agent.sensors.dns.encrypted import (
        EncryptedDnsWatch,
        TcpConnection,
        resolver_table,
    )

    attributor = ProcessAttributor(users=users)

    def attribute(connection: TcpConnection) -> tuple[dict[str, Any] | None, str | None] | None:
        found = attributor.attribute(connection.transport, connection.local, connection.remote)
        if found.forwarded:
            return None  # a stub resolver (e.g. resolved with DNSOverTLS): apps' queries seen
        return found.process, found.reason

    watch = EncryptedDnsWatch(
        on_connection,
        attribute,
        window=max(config.dedupe.window, 3600.0),
        resolvers=resolver_table(config.dns.doh_resolvers),
    )
    return watch, attributor


def build_exec_guard_for(
    config: AgentConfig,
    *,
    policy: PolicyInForce,
    on_denied: OnDenied,
    hostname: str,
    users: UserNames,
) -> ExecGuardPart | None:
    """The pre-exec guard when ``enforce.exec_deny_mounts`` names mounts, else ``None``."""
    if not config.enforce.exec_deny_mounts:
        return None
    if not sys.platform.startswith("linux"):
        raise ConfigError(
            f"{config.source}: enforce.exec_deny_mounts: pre-exec deny needs Linux fanotify "
            "(fix: remove the key on this platform)"
        )
    from proscribe.agent.enforce.exec_deny import build_exec_guard

    return build_exec_guard(
        config.enforce,
        lambda: policy.compiled,
        on_denied,
        config.agent.mode,
        host=hostname,
        now=policy.now,
        users=users,
    )
