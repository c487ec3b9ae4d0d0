"""The model sensor and its guard, built together (``[models]`` in agent.toml).

:func:`build_models_for` is what ``daemon.build()`` calls: one line there, everything about local
models here. The part is ``None`` when ``models.sensor = "off"``.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from proscribe.agent.config import AgentConfig
from proscribe.agent.enforce.kill import Killer
from proscribe.agent.evidence import Evidence
from proscribe.agent.model_guard import ModelGuard
from proscribe.agent.model_quarantine import Quarantine
from proscribe.agent.policy_source import PolicyInForce
from proscribe.agent.sensors.models import ModelSensor, discover_stores
from proscribe.agent.sensors.users import UserNames

__all__ = ["ModelPart", "build_models_for"]

log = logging.getLogger(__name__)


class ModelPart:
    """Starts the guard before the sensor that feeds it; stops in the other order."""

    def __init__(self, sensor: ModelSensor, guard: ModelGuard) -> None:
        self.sensor = sensor
        self.guard = guard

    def start(self) -> None:
        self.guard.start()
        self.sensor.start()

    def stop(self, timeout: float = 2.0) -> None:
        self.sensor.stop(timeout)
        self.guard.stop(timeout)

    def healthy(self) -> bool:
        return self.sensor.healthy()

    def policy_changed(self) -> None:
        self.guard.policy_changed()
        self.sensor.request_sweep()

    def stats(self) -> dict[str, Any]:
        return {**self.sensor.stats(), **self.guard.stats()}

    @property
    def state(self) -> str:
        return self.sensor.state

    @property
    def errors(self) -> int:
        return self.sensor.errors


def build_models_for(
    config: AgentConfig,
    *,
    policy: PolicyInForce,
    evidence: Evidence,
    killer: Killer,
    users: UserNames,
    hostname: str,
    procfs: Path = Path("/proc"),
) -> ModelPart | None:
    section = config.models
    if section.sensor == "off":
        return None
    quarantine = Quarantine(
        section.quarantine_dir or config.state_dir / "quarantine",
        config.state_dir / "quarantine.jsonl",
    )
    guard = ModelGuard(
        policy=policy,
        evidence=evidence,
        killer=killer,
        users=users,
        mode=config.agent.mode,
        hostname=hostname,
        quarantine=quarantine,
        memory=config.state_dir / "models-allowed.json",
    )
    sensor = ModelSensor(
        on_file=guard.on_file,
        on_open=guard.on_open,
        on_mapped=guard.on_mapped,
        stores=partial(
            discover_stores,
            dirs=section.dirs,
            users=section.user_stores,
            system=section.system_stores,
            procfs=procfs,
        ),
        sweep_interval=section.sweep_interval,
        files_per_second=section.sweep_files_per_second,
        maps_interval=section.maps_interval,
        procfs=procfs,
        on_swept=guard.save_memory,
    )
    return ModelPart(sensor, guard)
