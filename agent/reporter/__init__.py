"""The agent's reporter: delivers spooled events to the collector, heartbeats, polls policy.

Public surface::

    build_identity(agent_config) -> IdentityStore                               (daemon)
    build_reporter(agent_config, *, spool, identity=, heartbeat_source=, on_policy=, wake=)
    reporter_for_url(spool, *, url, ca_file, enroll_secret_file, state_dir, heartbeat_source=,
                     on_policy=, config=, host_facts=, identity=, wake=) -> Reporter
    Reporter(spool, transport, identity, config, clock, *, heartbeat_source, on_policy, rng,
             wake)
        .start() .stop(timeout) .notify() .status() .run_once()
    Transport(url, *, ca_file, timeout)      pinned CA, trust_env off, timeouts, loopback-only http
    IdentityStore(state_dir, enroll_secret_file, host_facts)
    parse_retry_after(value, now) / backoff_delay(attempt, rng) / Backoff
    read_status(path)                        what the daemon's reporter last wrote (agent status;
                                             the agent's one status-file reader)

See ``docs/delivery.md`` for the guarantees.
"""

from proscribe.agent.status_file import read_status

from .backoff import Backoff, backoff_delay, parse_retry_after
from .identity import IdentityStore
from .reporter import Reporter, ReporterConfig, build_identity, build_reporter, reporter_for_url
from .transport import Reply, Transport, TransportError, check_collector_url

__all__ = [
    "Backoff",
    "IdentityStore",
    "Reply",
    "Reporter",
    "ReporterConfig",
    "Transport",
    "TransportError",
    "backoff_delay",
    "build_identity",
    "build_reporter",
    "check_collector_url",
    "parse_retry_after",
    "read_status",
    "reporter_for_url",
]
