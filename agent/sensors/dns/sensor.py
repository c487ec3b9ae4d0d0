"""``build_dns_sensor``: the one entry point the daemon uses, for either DNS mode.

``capture`` (Linux, root) watches port 53 passively and leaves the decisions to the caller;
``proxy`` (any platform) answers queries itself, calling ``decide`` inline. Both deliver
:class:`DnsObservation` objects to ``on_observation`` on their own delivery thread.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from proscribe.agent.config import DnsSection, parse_host_port
from proscribe.agent.sensors.dns.attribution import ProcessAttributor
from proscribe.agent.sensors.dns.capture import DnsCapture
from proscribe.agent.sensors.dns.observation import Decide, DnsObservation, ObservationSink
from proscribe.agent.sensors.dns.proxy import DnsProxy
from proscribe.agent.sensors.dns.sender_map import BpfUnavailable, SenderMap
from proscribe.agent.sensors.users import UserNames
from proscribe.core.errors import ConfigError

__all__ = [
    "AutoSensor",
    "DnsSensor",
    "DnsSensorUnavailable",
    "DnsSettings",
    "build_dns_sensor",
    "parse_host_port",
    "system_upstreams",
]

log = logging.getLogger(__name__)


class DnsSensorUnavailable(ConfigError):
    """The chosen DNS mode cannot run here (not Linux, not root, port taken)."""


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """What the sensors need; ``from_config`` reads the agent's ``[dns]`` section."""

    proxy_listen: tuple[str, int] = ("127.0.0.1", 53)
    upstreams: tuple[tuple[str, int], ...] = ()
    interfaces: tuple[str, ...] = ()
    enforce: bool = True  # False: monitor mode (the proxy reports "would block", forwards)
    procfs: Path = Path("/proc")
    # capture: deliver responses that carry no CNAME (they add nothing a rule can match)
    plain_responses: bool = False
    # capture: deliver observations no rule matches (the daemon ignores them; off saves CPU)
    unmatched: bool = False
    resolv_conf: Path = Path("/etc/resolv.conf")
    # SO_MARK for the proxy's upstream sockets (auto mode: the redirect lets them through)
    mark: int | None = None
    # attribute from the kernel's sender map (eBPF, root, real /proc); /proc stays the fallback
    kernel_attribution: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, dns_section: DnsSection, *, enforce: bool = True) -> DnsSettings:
        """From the config's ``[dns]`` section (its addresses were checked by the loader)."""
        return cls(
            proxy_listen=parse_host_port(dns_section.proxy_listen, "dns.proxy_listen"),
            upstreams=tuple(parse_host_port(u, "dns.upstreams") for u in dns_section.upstreams),
            interfaces=tuple(dns_section.interfaces),
            enforce=enforce,
            kernel_attribution=dns_section.kernel_attribution,
        )


def system_upstreams(
    resolv_conf: Path, exclude: tuple[str, int] | None = None
) -> tuple[tuple[str, int], ...]:
    """The ``nameserver`` lines of resolv.conf, minus the proxy itself."""
    try:
        text = resolv_conf.read_text(errors="replace")
    except OSError:
        return ()
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            address = (parts[1].split("%")[0], 53)
            if address != exclude:
                found.append(address)
    return tuple(found)


class DnsSensor(Protocol):
    def start(self) -> None: ...
    def stop(self, timeout: float = 2.0) -> None: ...
    def stats(self) -> dict[str, Any]: ...


def build_dns_sensor(
    mode: str,
    settings: DnsSettings,
    on_observation: ObservationSink,
    decide: Decide,
    *,
    attribute_if: Callable[[DnsObservation], bool] | None = None,
    attributor: ProcessAttributor | None = None,
    users: UserNames | None = None,
) -> DnsSensor:
    """A started-on-demand sensor for ``mode`` ("capture" or "proxy").

    Raises :class:`DnsSensorUnavailable` (one line, with the fix) when the mode cannot run
    here; the caller decides whether that is fatal (asked for) or a quiet downgrade (auto).
    """
    owned = attributor is None
    if attributor is None:
        senders, why = open_sender_map(settings)
        attributor = ProcessAttributor(settings.procfs, users=users, senders=senders)
        attributor.kernel_error = why
    try:
        inner = _build(mode, settings, on_observation, decide, attribute_if, attributor)
    except BaseException:
        if owned:
            attributor.close()
        raise
    return _ManagedSensor(inner, mode, attributor, owned=owned)


def open_sender_map(settings: DnsSettings) -> tuple[SenderMap | None, str | None]:
    """The kernel's sender map when it can run here, else ``None`` and why (one line)."""
    if not settings.kernel_attribution:
        return None, "off in the configuration ([dns] kernel_attribution = false)"
    if settings.procfs != Path("/proc"):
        return None, "not with a substitute /proc"
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return None, "needs root on Linux"
    try:
        return SenderMap(), None
    except BpfUnavailable as err:
        log.info("DNS attribution from /proc only: %s", err)
        return None, str(err)


def _build(
    mode: str,
    settings: DnsSettings,
    on_observation: ObservationSink,
    decide: Decide,
    attribute_if: Callable[[DnsObservation], bool] | None,
    attributor: ProcessAttributor,
) -> DnsCapture | DnsProxy | AutoSensor:
    if mode == "capture":
        if not sys.platform.startswith("linux"):
            raise DnsSensorUnavailable(
                '[sensors] dns = "capture" needs Linux; use dns = "proxy" on this platform'
            )

        def matched(names: tuple[str, ...]) -> bool:
            # decide(name, None) is non-None exactly when some rule matches the name.
            return any(decide(n, None) is not None for n in names)

        # Without unmatched delivery the capture drops what no rule matches before attributing
        # (``relevant``), so everything left is attributed: no second ``decide`` per message.
        if attribute_if is None and settings.unmatched:

            def attribute_if(observation: DnsObservation) -> bool:
                return matched(observation.names_to_check)

        return DnsCapture(
            on_observation,
            attributor=attributor,
            attribute_if=attribute_if,
            relevant=None if settings.unmatched else matched,
            interfaces=settings.interfaces,
            plain_responses=settings.plain_responses,
        )
    if mode == "auto":
        return _build_auto(settings, on_observation, decide, attribute_if, attributor)
    if mode == "proxy":
        upstreams: Sequence[tuple[str, int]] = settings.upstreams or system_upstreams(
            settings.resolv_conf, exclude=settings.proxy_listen
        )
        if not upstreams:
            raise DnsSensorUnavailable(
                f"[dns] upstreams: none given and no usable nameserver in {settings.resolv_conf}; "
                'list the real resolvers, e.g. upstreams = ["9.9.9.9:53"]'
            )

        attributor.add_forwarder_pid(os.getpid())
        return DnsProxy(
            settings.proxy_listen,
            upstreams,
            decide,
            on_observation,
            attributor=attributor,
            mode="enforce" if settings.enforce else "monitor",
            mark=settings.mark,
            attribute_unmatched=False,  # the agent records only what a rule matches
        )
    raise DnsSensorUnavailable(f'[sensors] dns = {mode!r}: use "auto", "capture", "proxy" or "off"')


def _build_auto(
    settings: DnsSettings,
    on_observation: ObservationSink,
    decide: Decide,
    attribute_if: Callable[[DnsObservation], bool] | None,
    attributor: ProcessAttributor,
) -> AutoSensor:
    """The enforcing resolver on the proxy address (and on ``[::1]`` at the same port, for
    the IPv6 redirect) with capture beside it. Capture leaves alone what the resolver
    handles: queries to the resolver and the resolver's own upstream queries."""
    proxy = _build("proxy", settings, on_observation, decide, attribute_if, attributor)
    assert isinstance(proxy, DnsProxy)
    proxies = [proxy]
    if settings.proxy_listen[0] == "127.0.0.1":
        v6 = replace(settings, proxy_listen=("::1", settings.proxy_listen[1]))
        extra = _build("proxy", v6, on_observation, decide, attribute_if, attributor)
        assert isinstance(extra, DnsProxy)
        proxies.append(extra)
    capture = _build("capture", settings, on_observation, decide, attribute_if, attributor)
    assert isinstance(capture, DnsCapture)
    return AutoSensor(capture, proxies)


class AutoSensor:
    """Capture and the enforcing resolver(s) as one sensor (``[sensors] dns = "auto"``)."""

    def __init__(self, capture: DnsCapture, proxies: list[DnsProxy]) -> None:
        self.capture = capture
        self.proxies = proxies
        self.ipv6 = False  # whether the [::1] resolver runs (the redirect's IPv6 rule needs it)
        self.resolver_error: str | None = None  # why the resolver is not running, if it is not
        self._running: list[DnsProxy] = []
        self._skip_addresses: set[tuple[str, int]] = set()
        self._skip_ports: set[int] = set()
        capture.set_skip(self._skip)

    @property
    def port(self) -> int:
        return self.proxies[0].address[1]

    def _skip(self, src: tuple[str, int], dst: tuple[str, int]) -> bool:
        return (
            dst in self._skip_addresses
            or src in self._skip_addresses
            or src[1] in self._skip_ports
            or dst[1] in self._skip_ports
        )

    def start(self) -> None:
        """Start the resolver(s) and capture. A resolver that cannot bind (the address is
        taken) leaves capture alone running (``resolver_error`` says why; no redirect)."""
        self.resolver_error = None
        try:
            self.proxies[0].start()
        except Exception as err:
            self.resolver_error = str(err)
            log.error("DNS resolver not started (%s); capture only, nothing redirected", err)
            self.capture.start()
            return
        self._running = [self.proxies[0]]
        for extra in self.proxies[1:]:
            try:
                extra.start()
            except Exception as err:  # no IPv6 loopback here: IPv6 queries are not redirected
                log.info("DNS resolver on %s not started (%s)", extra.address, err)
                continue
            self._running.append(extra)
        self.ipv6 = len(self._running) > 1
        for proxy in self._running:
            self._skip_addresses.add(proxy.address)
            self._skip_ports |= proxy.local_ports()
        try:
            self.capture.start()
        except BaseException:
            for proxy in self._running:
                proxy.stop()
            raise

    def stop(self, timeout: float = 2.0) -> None:
        self.capture.stop(timeout)
        for proxy in self._running:
            proxy.stop(timeout)
        self._running = []

    def stats(self) -> dict[str, Any]:
        proxy = self.proxies[0].stats()
        for extra in self._running[1:]:
            for key, value in extra.stats().items():
                proxy[key] = proxy.get(key, 0) + value
        return {"capture": self.capture.stats(), "proxy": proxy}


class _ManagedSensor:
    """Translates a start failure into one clear line; closes the attributor it owns."""

    def __init__(
        self,
        inner: DnsCapture | DnsProxy | AutoSensor,
        mode: str,
        attributor: ProcessAttributor,
        *,
        owned: bool,
    ) -> None:
        self.inner = inner
        self.mode = mode
        self._attributor = attributor
        self._owned = owned

    def start(self) -> None:
        try:
            self.inner.start()
        except PermissionError as err:
            raise DnsSensorUnavailable(
                f'[sensors] dns = "{self.mode}": opening a packet socket needs root or '
                f'CAP_NET_RAW ({err.strerror}); run the agent as root or use dns = "proxy"'
            ) from err
        except OSError as err:
            raise DnsSensorUnavailable(
                f'[sensors] dns = "{self.mode}": cannot start ({err.strerror})'
            ) from err

    def stop(self, timeout: float = 2.0) -> None:
        self.inner.stop(timeout)
        if self._owned:
            self._attributor.close()

    def stats(self) -> dict[str, Any]:
        stats = dict(self.inner.stats())
        stats["attribution"] = self._attributor.source
        if self._attributor.kernel_error is not None:
            stats["attribution_fallback_reason"] = self._attributor.kernel_error
        stats["attributed_by_kernel"] = self._attributor.kernel_hits
        return stats

    @property
    def ipv6(self) -> bool:
        return bool(getattr(self.inner, "ipv6", False))

    @property
    def port(self) -> int:
        return int(getattr(self.inner, "port", 53))

    @property
    def resolver_error(self) -> str | None:
        error = getattr(self.inner, "resolver_error", None)
        return None if error is None else str(error)
