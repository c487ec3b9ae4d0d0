"""Compliance state per host, from facts — the one rule behind the dashboard, the people API,
``proscribe collector hosts`` and the report.

A host is, first match wins:

* ``never_enrolled``: an inventory entry that no enrolled agent matches;
* ``revoked``: its agent was revoked by an admin;
* ``stopped``: its last heartbeat was a goodbye (a clean stop; who or what stopped it is said);
* ``stale``: no heartbeat within the heartbeat window (or none ever);
* ``monitoring``: the agent runs in monitor mode (it records, it does not enforce);
* ``degraded``: enforce mode, but something enforcement needs is missing — a sensor the policy
  needs is not running, the policy is not the current serial (or stale, or rolled back), no
  policy at all, or events were dropped / decisions failed open within the window; each reason
  is listed;
* ``enforcing``: enforce mode, the sensors the policy needs running, the current policy serial,
  a fresh heartbeat, and no drops or fail-open decisions within the window.

Over a period (the report's headline) the same facts come from the heartbeat history
(:func:`period_coverage`): a host enforced *continuously* from A to B when its history shows no
gap — silence longer than the window, a clean stop, monitor mode, a required sensor down, no
policy or another policy, drops or fail-open decisions — anywhere in ``[A, B)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from proscribe.collector.storage.inventory import InventoryEntry
from proscribe.collector.storage.queries import HostCoverage, list_hosts
from proscribe.collector.storage.tables import agents, host_history, hosts

STATES = (
    "enforcing",
    "monitoring",
    "degraded",
    "stopped",
    "stale",
    "never_enrolled",
    "revoked",
)
LABELS = {
    "enforcing": "enforcing",
    "monitoring": "monitoring only",
    "degraded": "degraded",
    "stopped": "stopped",
    "stale": "stale",
    "never_enrolled": "never enrolled",
    "revoked": "revoked",
}
# A sensor state that means running, in heartbeats without a health section.
_RUNNING = frozenset({"running", "netlink", "poll", "ok"})


@dataclass(frozen=True, slots=True)
class HostState:
    state: str
    reasons: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return LABELS[self.state]

    @property
    def enforcing(self) -> bool:
        return self.state == "enforcing"

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "label": self.label, "reasons": list(self.reasons)}


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What the collector knows of one host, as of its last heartbeat."""

    last_seen_us: int | None
    mode: str | None
    policy_id: str | None
    policy_serial: int | None
    policy_stale: bool = False
    serial_regressed: bool = False
    sensors: Mapping[str, Any] = field(default_factory=dict)
    health: Mapping[str, Any] | None = None
    goodbye_us: int | None = None
    goodbye_by: str | None = None
    revoked: bool = False


def required_sensors(policy: Any) -> tuple[str, ...]:
    """The sensors a policy needs: the process sensor always (it enforces process rules and
    reports everything else), DNS when the policy has domain rules."""
    needed = ["process"]
    if policy is not None and bool(getattr(policy, "domain", None)):
        needed.append("dns")
    return tuple(needed)


def _sensor_running(facts: HostFacts, name: str) -> tuple[bool, str]:
    """Whether sensor ``name`` runs, and its state in words. The health section's liveness
    wins (a running state with a dead thread is not running); older agents send only a
    state."""
    health = facts.health or {}
    sensors = health.get("sensors") if isinstance(health, dict) else None
    if isinstance(sensors, dict) and isinstance(sensors.get(name), dict):
        entry = sensors[name]
        state = str(entry.get("state", "unknown"))
        return bool(entry.get("alive")), state
    raw = facts.sensors.get(name)
    if isinstance(raw, dict):
        raw = raw.get("state")
    state = str(raw) if raw is not None else "absent"
    return state in _RUNNING, state


def recent_failures(health: Mapping[str, Any] | None, now_us: int, window_us: int) -> str | None:
    """The drops / fail-open decisions the collector saw grow within the window, in words."""
    if not isinstance(health, dict):
        return None
    kept = health.get("collector")
    if not isinstance(kept, dict):
        return None
    when = kept.get("last_failure_us")
    what = kept.get("last_failure")
    if not isinstance(when, int) or now_us - when > window_us or not isinstance(what, dict):
        return None
    return failure_text(what)


def failure_text(growth: Mapping[str, Any]) -> str:
    parts = []
    for section, noun in (("drops", "dropped"), ("fail_open", "failed open")):
        counts = growth.get(section)
        if isinstance(counts, dict):
            for reason, n in sorted(counts.items()):
                parts.append(f"{n} {noun} ({reason})")
    return ", ".join(parts) or "failures"


def host_state(
    facts: HostFacts | None,
    *,
    now_us: int,
    window_us: int,
    current_serial: int | None,
    required: Sequence[str] = ("process",),
) -> HostState:
    """The compliance state of one host (``facts`` None: never heard from)."""
    if facts is None or facts.last_seen_us is None:
        if facts is not None and facts.revoked:
            return HostState("revoked", ("revoked by an admin",))
        return HostState("stale", ("enrolled, never sent a heartbeat",))
    if facts.revoked:
        return HostState("revoked", ("revoked by an admin",))
    if facts.goodbye_us is not None and facts.goodbye_us >= facts.last_seen_us:
        return HostState("stopped", (f"stopped cleanly: {facts.goodbye_by or 'unknown'}",))
    if now_us - facts.last_seen_us > window_us:
        silent = (now_us - facts.last_seen_us) // 1_000_000
        return HostState("stale", (f"no heartbeat for {silent} s",))
    if facts.mode != "enforce":
        return HostState("monitoring", (f"mode {facts.mode or 'unknown'}",))
    reasons: list[str] = []
    for name in required:
        running, state = _sensor_running(facts, name)
        if not running:
            reasons.append(f"{name} sensor not running ({state})")
    if facts.policy_serial is None:
        reasons.append("no policy in force")
    elif current_serial is not None and facts.policy_serial < current_serial:
        reasons.append(f"policy serial {facts.policy_serial}, current is {current_serial}")
    if facts.policy_stale:
        reasons.append("policy stale or expired")
    if facts.serial_regressed:
        reasons.append("policy serial went down (rollback)")
    failures = recent_failures(facts.health, now_us, window_us)
    if failures:
        reasons.append(f"within the window: {failures}")
    if reasons:
        return HostState("degraded", tuple(reasons))
    return HostState("enforcing")


def _json_dict(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def facts_of(host: HostCoverage | None, revoked: bool = False) -> HostFacts | None:
    """A host record (:class:`HostCoverage`) as facts; None for a host never heard from."""
    if host is None:
        return HostFacts(None, None, None, None, revoked=True) if revoked else None
    return HostFacts(
        last_seen_us=host.last_seen_us,
        mode=host.mode,
        policy_id=host.policy_id,
        policy_serial=host.policy_serial,
        policy_stale=host.policy_stale,
        serial_regressed=host.serial_regressed,
        sensors=host.sensors,
        health=host.health,
        goodbye_us=host.goodbye_us,
        goodbye_by=host.goodbye_by,
        revoked=revoked,
    )


@dataclass(frozen=True, slots=True)
class FleetHost:
    """One host as every view shows it: its agent (None if never enrolled), its last
    heartbeat (None if never heard from), its inventory entry (None if not in the inventory,
    with ``matched_by`` "machine id" or "hostname"), and its compliance state."""

    agent_id: str | None
    hostname: str
    host: HostCoverage | None
    state: HostState
    inventory: InventoryEntry | None = None
    matched_by: str | None = None
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class Fleet:
    hosts: tuple[FleetHost, ...]
    current_serial: int | None
    required: tuple[str, ...]
    has_inventory: bool

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for h in self.hosts:
            out[h.state.state] += 1
        return out

    def in_scope(self, group: str | None = None) -> list[FleetHost]:
        """The hosts that must be covered: the inventory (of ``group``) when one was
        imported, else every enrolled agent not revoked."""
        if self.has_inventory:
            return [
                h
                for h in self.hosts
                if h.inventory is not None and (group is None or h.inventory.group == group)
            ]
        return [h for h in self.hosts if h.agent_id is not None and not h.revoked]


def policy_context(conn: Connection) -> tuple[int | None, tuple[str, ...]]:
    """The current policy serial and the sensors it needs: what every state is judged by."""
    from proscribe.collector.storage.policies import current_policy
    from proscribe.core.errors import PolicyError
    from proscribe.core.policy.loader import load_policy

    stored = current_policy(conn)
    if stored is None:
        return None, required_sensors(None)
    try:
        policy = load_policy(stored.policy, f"policy serial {stored.serial}")
    except PolicyError:
        policy = None
    return stored.serial, required_sensors(policy)


def state_of(
    conn: Connection, host: HostCoverage | None, *, revoked: bool, now_us: int, window_us: int
) -> HostState:
    """One host's state, judged exactly as :func:`fleet` judges every host."""
    current_serial, required = policy_context(conn)
    return host_state(
        facts_of(host, revoked),
        now_us=now_us,
        window_us=window_us,
        current_serial=current_serial,
        required=required,
    )


def fleet(conn: Connection, *, now_us: int, window_us: int) -> Fleet:
    """Every host the collector knows of — enrolled agents and inventory entries — with its
    compliance state, computed by :func:`host_state` against the current policy."""
    from proscribe.collector.storage.inventory import list_inventory, match_inventory

    current_serial, required = policy_context(conn)
    records = {
        h.agent_id: h for h in list_hosts(conn, now_us=now_us, heartbeat_window_us=window_us)
    }
    agent_rows = conn.execute(
        select(
            agents.c.agent_id, agents.c.hostname, agents.c.revoked_us, agents.c.machine_id
        ).order_by(agents.c.hostname, agents.c.agent_id)
    ).all()
    entries = list_inventory(conn)
    matches = match_inventory(entries, agent_rows, records) if entries else {}
    out: list[FleetHost] = []
    matched_entries: set[str] = set()
    for row in agent_rows:
        host = records.get(row.agent_id)
        revoked = row.revoked_us is not None
        state = host_state(
            facts_of(host, revoked),
            now_us=now_us,
            window_us=window_us,
            current_serial=current_serial,
            required=required,
        )
        entry, how = matches.get(row.agent_id, (None, None))
        if entry is not None:
            matched_entries.add(entry.hostname)
        out.append(FleetHost(row.agent_id, row.hostname, host, state, entry, how, revoked))
    for entry in entries:
        if entry.hostname not in matched_entries:
            out.append(
                FleetHost(
                    None,
                    entry.hostname,
                    None,
                    HostState("never_enrolled", ("in the inventory, no agent enrolled",)),
                    entry,
                )
            )
    out.sort(key=lambda h: (h.hostname.lower(), h.agent_id or ""))
    return Fleet(tuple(out), current_serial, required, bool(entries))


# --- over a period -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gap:
    start_us: int
    end_us: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"start_us": self.start_us, "end_us": self.end_us, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class HostPeriod:
    agent_id: str | None
    hostname: str
    gaps: tuple[Gap, ...]

    @property
    def continuous(self) -> bool:
        return not self.gaps


@dataclass(frozen=True, slots=True)
class PeriodCoverage:
    since_us: int
    until_us: int
    directive: str | None  # the policy id the hosts had to run (None: any)
    hosts: tuple[HostPeriod, ...]

    @property
    def in_scope(self) -> int:
        return len(self.hosts)

    @property
    def continuous(self) -> int:
        return sum(1 for h in self.hosts if h.continuous)


@dataclass
class _Timeline:
    """A host's state replayed from its history rows."""

    mode: str | None = None
    policy_id: str | None = None
    sensors: dict[str, bool] = field(default_factory=dict)
    bad_since: int | None = None
    bad_reason: str = ""
    gaps: list[Gap] = field(default_factory=list)
    alive_reported: set[str] = field(default_factory=set)


def _alive_from_first(detail: Mapping[str, Any]) -> dict[str, bool]:
    out: dict[str, bool] = {}
    sensors = detail.get("sensors")
    if isinstance(sensors, dict):
        for name, value in sensors.items():
            if isinstance(value, dict):
                value = value.get("state")
            out[str(name)] = str(value) in _RUNNING
    return out


def _why_not(tl: _Timeline, directive: str | None, required: Sequence[str]) -> str | None:
    if tl.mode != "enforce":
        return f"mode {tl.mode or 'unknown'}"
    if directive is not None and tl.policy_id != directive:
        return f"policy {tl.policy_id or 'none'} in force, not {directive}"
    down = [name for name in required if not tl.sensors.get(name, False)]
    if down:
        return f"{', '.join(down)} sensor not running"
    return None


def _close(tl: _Timeline, at_us: int) -> None:
    if tl.bad_since is not None:
        tl.gaps.append(Gap(tl.bad_since, at_us, tl.bad_reason))
        tl.bad_since = None


def _settle(tl: _Timeline, at_us: int, directive: str | None, required: Sequence[str]) -> None:
    why = _why_not(tl, directive, required)
    if why is None:
        _close(tl, at_us)
    elif tl.bad_since is None or why != tl.bad_reason:
        _close(tl, at_us)
        tl.bad_since, tl.bad_reason = at_us, why


def host_period(
    rows: Iterable[tuple[int, str, Mapping[str, Any]]],
    *,
    since_us: int,
    until_us: int,
    last_seen_us: int | None,
    window_us: int,
    directive: str | None,
    required: Sequence[str] = ("process",),
) -> list[Gap]:
    """The gaps of one host in ``[since, until)``, from its history rows ``(time_us, kind,
    detail)`` in time order (all of them up to ``until``, including those before ``since``,
    which set the state the period starts in)."""
    tl = _Timeline()
    started = False
    for time_us, kind, detail in rows:
        if time_us >= until_us:
            break
        if kind == "first":
            tl.mode = detail.get("mode")
            tl.policy_id = detail.get("policy id")
            tl.sensors = _alive_from_first(detail)
            alive = detail.get("sensors alive")
            if isinstance(alive, dict):
                tl.sensors.update({str(k): bool(v) for k, v in alive.items()})
                tl.alive_reported.update(str(k) for k in alive)
            if not started and time_us > since_us:
                tl.gaps.append(Gap(since_us, time_us, "not reporting yet (first heartbeat)"))
            started = True
        elif kind == "resumed":
            silent_us = int(detail.get("silent_s", 0)) * 1_000_000
            tl.gaps.append(Gap(max(time_us - silent_us, since_us), time_us, "silent"))
        elif kind == "stopped":
            _close(tl, time_us)
            tl.bad_since, tl.bad_reason = time_us, f"stopped: {detail.get('by', 'unknown')}"
            continue
        elif kind == "failures":
            tl.gaps.append(Gap(time_us, time_us, failure_text(detail)))
        elif kind == "changed":
            for label, change in detail.items():
                if not isinstance(change, list) or len(change) != 2:
                    continue
                after = change[1]
                if label == "mode":
                    tl.mode = after
                elif label == "policy id":
                    tl.policy_id = after
                elif label.startswith("sensor alive "):
                    name = label.removeprefix("sensor alive ")
                    tl.alive_reported.add(name)
                    tl.sensors[name] = bool(after)
                elif label.startswith("sensor "):
                    name = label.removeprefix("sensor ")
                    if name not in tl.alive_reported:  # an agent without a health section
                        value = after.get("state") if isinstance(after, dict) else after
                        tl.sensors[name] = str(value) in _RUNNING
        if tl.bad_reason.startswith("stopped") and tl.bad_since is not None:
            _close(tl, time_us)  # any heartbeat after a goodbye ends the stop
        _settle(tl, max(time_us, since_us), directive, required)
    if not started:
        return [Gap(since_us, until_us, "never reported")]
    if last_seen_us is not None and until_us - last_seen_us > window_us:
        start = max(last_seen_us, since_us)
        if tl.bad_since is None or tl.bad_since > start:
            _close(tl, start)
            tl.bad_since, tl.bad_reason = start, "silent"
    _close(tl, until_us)
    gaps = []
    for g in tl.gaps:  # clipped to the period (a new Gap only where one sticks out)
        if g.end_us > since_us or (g.start_us == g.end_us and g.start_us >= since_us):
            if g.start_us < since_us or g.end_us > until_us:
                g = Gap(max(g.start_us, since_us), min(g.end_us, until_us), g.reason)
            if g.start_us < until_us:
                gaps.append(g)
    return gaps


IN_SLICE = 10_000  # agent ids per IN list (bind parameters per query)


def _id_conditions(ids: list[str]) -> Iterator[Callable[[Any], list[Any]]]:
    """The conditions that read the rows of agents ``ids``, one query each: IN lists of
    :data:`IN_SLICE` ids for a small scope (a group); for a larger one, no condition at all —
    every row is read and the caller keeps its scope's. One IN list per query is one bind
    parameter per id, which the drivers cap (PostgreSQL 65,535, SQLite 32,766); in slices,
    psycopg split the query text of each in Python: 0.3 s a slice, 3 s for 100,000 hosts."""
    if len(ids) > IN_SLICE:
        yield lambda column: []
        return
    yield lambda column: [column.in_(ids)]


def period_coverage(
    conn: Connection,
    *,
    since_us: int,
    until_us: int,
    now_us: int,
    window_us: int,
    directive: str | None,
    required: Sequence[str] = ("process",),
    scope: Sequence[tuple[str | None, str]] | None = None,
    last_seen: Mapping[str, int] | None = None,
) -> PeriodCoverage:
    """Every host in scope over ``[since, until)``. ``scope``: ``(agent_id or None,
    hostname)`` pairs (the inventory, with its matches); None: every agent enrolled before
    ``until`` and not revoked before ``since``. ``last_seen``: each agent's last heartbeat,
    when the caller has read the hosts already (:func:`fleet` has); None: read here."""
    if scope is None:
        rows = conn.execute(
            select(agents.c.agent_id, agents.c.hostname)
            .where(agents.c.enrolled_us < until_us)
            .where((agents.c.revoked_us.is_(None)) | (agents.c.revoked_us >= since_us))
            .order_by(agents.c.hostname, agents.c.agent_id)
        ).all()
        scope = [(r.agent_id, r.hostname) for r in rows]
    ids = [a for a, _h in scope if a is not None]
    history: dict[str, list[tuple[int, str, dict[str, Any]]]] = {a: [] for a in ids}
    # Each distinct detail text decoded once: a change that reaches the whole fleet (a new
    # policy serial, a mode flip) is the same text on every host. The replay only reads them.
    decoded: dict[str | None, dict[str, Any]] = {}
    read_seen: dict[str, int] = {}
    for where in _id_conditions(ids):
        if last_seen is None:
            read_seen.update(
                (agent_id, int(seen))
                for agent_id, seen in conn.execute(
                    select(hosts.c.agent_id, hosts.c.last_seen_us).where(*where(hosts.c.agent_id))
                ).all()
            )
        for agent_id, time_us, kind, detail in (
            conn.execute(
                select(host_history.c.agent_id, host_history.c.time_us, host_history.c.kind)
                .add_columns(host_history.c.detail)
                .where(*where(host_history.c.agent_id), host_history.c.time_us < until_us)
                # Each host's rows in time order is all the replay needs: sorting by the
                # agent id too (text, by collation) was most of this query's server time.
                .order_by(host_history.c.time_us, host_history.c.seq)
            ).all()  # one fetch (iterating the result fetches a row at a time)
        ):
            timeline = history.get(agent_id)
            if timeline is not None:  # in scope
                values = decoded.get(detail)
                if values is None:
                    values = decoded[detail] = _json_dict(detail)
                timeline.append((int(time_us), kind, values))
    seen_of = last_seen if last_seen is not None else read_seen
    out = []
    for agent_id, hostname in scope:
        if agent_id is None:
            gaps = [Gap(since_us, until_us, "never enrolled")]
        else:
            gaps = host_period(
                history.get(agent_id, []),
                since_us=since_us,
                until_us=min(until_us, now_us),
                last_seen_us=seen_of.get(agent_id),
                window_us=window_us,
                directive=directive,
                required=required,
            )
        out.append(HostPeriod(agent_id, hostname, tuple(gaps)))
    return PeriodCoverage(since_us, until_us, directive, tuple(out))
