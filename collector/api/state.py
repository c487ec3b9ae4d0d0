"""The per-app collaborators, built once by :func:`proscribe.collector.app.create_app`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from proscribe.collector.api.agent_auth import AgentAuthenticator
from proscribe.collector.api.metrics import Metrics
from proscribe.collector.api.ratelimit import EnrollRateLimiter
from proscribe.collector.config import CollectorSettings
from proscribe.collector.storage import Database, to_us
from proscribe.collector.storage.group_commit import GroupCommit
from proscribe.collector.storage.heartbeat_batch import HeartbeatFlusher


@dataclass
class CollectorState:
    settings: CollectorSettings
    db: Database
    clock: Callable[[], float]
    metrics: Metrics
    authenticator: AgentAuthenticator
    enroll_limiter: EnrollRateLimiter
    event_commits: GroupCommit = field(init=False)
    # PostgreSQL: heartbeats written in batches by one thread (started by the lifespan);
    # None on SQLite, where a heartbeat is written by its own request.
    heartbeats: HeartbeatFlusher | None = None

    def __post_init__(self) -> None:
        # concurrent event batches share one transaction and one fsync
        self.event_commits = GroupCommit(self.db)

    def now_us(self) -> int:
        return to_us(self.clock())
