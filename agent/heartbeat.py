"""The heartbeat the reporter sends (see the collector API): what this agent is running now,
and how well it is enforcing.

Built from the parts it describes (policy, spool, sensors, the optional pre-exec guard) and
handed to the reporter as its ``heartbeat_source``; nothing here starts or owns anything.

The ``health`` section (additive to the wire schema; an older collector ignores it) is what a
compliance officer needs from the host without logging in to it:

* ``guard``: the active guard by :func:`active_guard` (the rule ``agent status`` uses too):
  ``bpf``, ``fanotify``, ``netlink``, ``poll``, ``off``, or ``monitor`` in monitor mode;
* ``drops``: per-reason counts, ``"<where>.<reason>"`` (process sensor queue, DNS part when its
  stats carry a ``drops`` map, spool, exec guard reports), cumulative;
* ``fail_open``: decisions the pre-exec guard let through because it could not decide in time
  (``timeouts``, ``overloads``), cumulative;
* ``sensors``: each sensor's state and whether its threads are alive;
* ``policy_rejections`` and ``last_policy_rejection`` (kind and reason of the last refused
  policy).

A ``goodbye`` section (``by``: who or what stopped the agent, :func:`stopped_by`) is added by
the reporter's ``farewell`` to the last heartbeat of a clean stop, so the collector shows the
host as *stopped*, not as an outage.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from proscribe.agent.evidence import os_name
from proscribe.agent.policy_source import PolicySource
from proscribe.agent.spool import Spool
from proscribe.core import __version__

__all__ = ["Heartbeat", "ProcessSensorPart", "SensorState", "StatsPart", "health_section"]

# Exec-guard counters that are decisions let through for want of an answer (fail-open).
FAIL_OPEN_COUNTERS = ("timeouts", "overloads")


class SensorState(Protocol):
    """A sensor as the heartbeat sees it: its state in one word or line."""

    @property
    def state(self) -> str: ...


class StatsPart(Protocol):
    def stats(self) -> dict[str, Any]: ...


class KernelActive(Protocol):
    """The kernel (eBPF) guard as the heartbeat sees it: whether it is enforcing."""

    @property
    def active(self) -> bool: ...


class ProcessSensorPart(SensorState, StatsPart, Protocol):
    def healthy(self) -> bool: ...


def _ints(values: Any) -> dict[str, int]:
    if not isinstance(values, Mapping):
        return {}
    return {str(k): int(v) for k, v in values.items() if isinstance(v, int) and v}


def active_guard(
    *, mode: str, kernel_active: bool, exec_guard: bool, process_backend: str | None
) -> str:
    """Which guard stops a denied program here, strongest first: ``bpf`` (killed in the
    kernel at exec), ``fanotify`` (refused before exec, on the guarded mounts only, with the
    process sensor for the rest), ``netlink`` or ``poll`` (killed by the process sensor after
    it started), ``off``; ``monitor`` in monitor mode (nothing is stopped). The one rule for
    ``agent status`` and the heartbeat."""
    if mode != "enforce":
        return "monitor"
    if kernel_active:
        return "bpf"
    if exec_guard:
        return "fanotify"
    return process_backend if process_backend in ("netlink", "poll") else "off"


def health_section(
    *,
    guard: str,
    process: Mapping[str, Any],
    process_alive: bool,
    dns: Mapping[str, Any],
    exec_deny: Mapping[str, Any] | None,
    spool_dropped: Mapping[str, int],
    policy: Mapping[str, Any],
) -> dict[str, Any]:
    """The heartbeat's ``health`` section from the parts' own status (pure; tested alone)."""
    drops: dict[str, int] = {}
    for where, counts in (
        ("process_sensor", process.get("drops")),
        ("dns", dns.get("drops")),  # when the DNS part counts its drops by reason
        ("spool", spool_dropped),
        ("exec_deny", {"reports_dropped": (exec_deny or {}).get("reports_dropped", 0)}),
    ):
        for reason, n in _ints(counts).items():
            drops[f"{where}.{reason}"] = n
    fail_open = {k: int((exec_deny or {}).get(k, 0) or 0) for k in FAIL_OPEN_COUNTERS}
    sensors: dict[str, Any] = {
        "process": {
            "state": str(process.get("state", "unknown")),
            "alive": bool(process_alive) and process.get("state") == "running",
        },
        "dns": {
            "state": str(dns.get("state", "unknown")),
            "alive": dns.get("state") == "running",
        },
    }
    if exec_deny is not None:
        sensors["exec_deny"] = {
            "state": "running" if exec_deny.get("running") else "stopped",
            "alive": bool(exec_deny.get("running")),
        }
    last = policy.get("last_rejection")
    last_text = (
        f"{last.get('kind')}: {last.get('reason')}"[:1000] if isinstance(last, Mapping) else None
    )
    return {
        "guard": guard,
        "drops": drops,
        "fail_open": fail_open,
        "sensors": sensors,
        "policy_rejections": int(policy.get("rejections") or 0),
        "last_policy_rejection": last_text,
    }


def stopped_by(signal_name: str | None) -> str:
    """Who or what stopped the agent, in words, for the goodbye heartbeat."""
    if signal_name is None:
        return "stopped by its owner (in-process stop)"
    via = " from systemd (systemctl stop or shutdown)" if os.environ.get("INVOCATION_ID") else ""
    return f"{signal_name}{via}"


class Heartbeat:
    def __init__(
        self,
        *,
        hostname: str,
        mode: str,
        policy: PolicySource,
        spool: Spool,
        process: ProcessSensorPart,
        dns: SensorState,
        exec_guard: StatsPart | None = None,
        kernel: KernelActive | None = None,
        dns_dropped: Callable[[], int] | None = None,
        models: SensorState | None = None,  # None: [models] sensor = "off"
    ) -> None:
        self.hostname = hostname
        self.mode = mode
        self.policy = policy
        self.spool = spool
        self.process = process
        self.dns = dns
        self.exec_guard = exec_guard
        self.kernel = kernel
        self.dns_dropped = dns_dropped
        self.models = models

    def health(self, policy: Mapping[str, Any], spool_dropped: Mapping[str, int]) -> dict[str, Any]:
        dns: Mapping[str, Any] = {"state": self.dns.state}
        stats = getattr(self.dns, "stats", None)
        if callable(stats):
            try:
                dns = stats()
            except Exception:  # a DNS part that cannot count still has a state
                dns = {"state": self.dns.state}
        process = self.process.stats()
        guard = active_guard(
            mode=self.mode,
            kernel_active=self.kernel is not None and self.kernel.active,
            exec_guard=self.exec_guard is not None,
            process_backend=process.get("backend"),
        )
        health = health_section(
            guard=guard,
            process=process,
            process_alive=self.process.healthy(),
            dns=dns,
            exec_deny=self.exec_guard.stats() if self.exec_guard is not None else None,
            spool_dropped=spool_dropped,
            policy=policy,
        )
        lost = self.dns_dropped() if self.dns_dropped is not None else 0
        if lost:  # DNS messages lost before the agent saw them: a drop like any other
            health["drops"]["dns.lost"] = int(lost)
        return health

    def __call__(self) -> dict[str, Any]:
        policy = self.policy.status()
        spool = self.spool.stats()
        sensors: dict[str, Any] = {
            "process": self.process.state,
            "dns": self.dns.state,
            "models": self.models.state if self.models is not None else "off",
        }
        if self.dns_dropped is not None:
            # DNS messages lost before the agent saw them (kernel overflows, full queues)
            sensors["dns_dropped"] = self.dns_dropped()
        return {
            "agent_version": __version__,
            "hostname": self.hostname,
            "os": os_name(),
            "mode": self.mode,
            "policy": {k: policy.get(k) for k in ("id", "serial", "sha256", "expires", "stale")},
            "sensors": sensors,
            "spool": {"depth": spool.depth, "bytes": spool.bytes, "dropped": spool.dropped_total},
            "health": self.health(policy, spool.dropped),
            "time": datetime.now(UTC).isoformat(),
        }
