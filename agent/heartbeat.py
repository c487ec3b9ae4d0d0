"""The heartbeat the reporter sends (see the collector API): what this agent is running now.

Built from the parts it describes (policy, spool, sensors) and handed to the reporter as its
``heartbeat_source``; nothing here starts or owns anything.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from proscribe.agent.evidence import os_name
from proscribe.agent.policy_source import PolicySource
from proscribe.agent.spool import Spool
from proscribe.core import __version__

__all__ = ["Heartbeat", "SensorState"]


class SensorState(Protocol):
    """A sensor as the heartbeat sees it: its state in one word or line."""

    @property
    def state(self) -> str: ...


class Heartbeat:
    def __init__(
        self,
        *,
        hostname: str,
        mode: str,
        policy: PolicySource,
        spool: Spool,
        process: SensorState,
        dns: SensorState,
        dns_dropped: Callable[[], int] | None = None,
        models: SensorState | None = None,  # None: [models] sensor = "off"
    ) -> None:
        self.hostname = hostname
        self.mode = mode
        self.policy = policy
        self.spool = spool
        self.process = process
        self.dns = dns
        self.dns_dropped = dns_dropped
        self.models = models

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
            "time": datetime.now(UTC).isoformat(),
        }
