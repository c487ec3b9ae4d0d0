"""Anti-rollback state: what policy was last accepted, and the latest time ever seen.

``state.json`` records the last accepted policy's id, serial and sha256 and the largest
wall-clock time the agent has observed (including the ``issued`` time of every accepted,
signed policy, which an attacker cannot forge). The rules (:func:`judge_offer`) are pure:

* serial lower than the last accepted one → rejected (rollback);
* same serial, different sha256 → rejected (two different policies under one serial);
* same serial, same sha256 → unchanged (a no-op, also after a restart);
* a new policy that is already expired → rejected. "Now" for this check is never earlier than
  the latest time seen, so setting the clock back cannot make an expired policy fresh again.

Serials are monotonic per agent, whatever the policy id: switching to another policy needs a
higher serial, otherwise a stale policy with another id could be replayed.

Writes are atomic (:func:`proscribe.core.fs.atomic_write`), so a crash or ``kill -9`` leaves the
old or the new state, never a mix.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from proscribe.core.fs import atomic_write

__all__ = [
    "CLOCK_BACK_TOLERANCE",
    "OfferVerdict",
    "PolicyState",
    "advance",
    "clock_went_back",
    "judge_offer",
    "load_state",
    "save_state",
]

log = logging.getLogger(__name__)

# NTP steps and VM resumes move clocks by seconds or minutes; an hour back is deliberate.
CLOCK_BACK_TOLERANCE = timedelta(hours=1)
_MAX_STATE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class PolicyState:
    policy_id: str
    serial: int
    sha256: str
    max_time_seen: datetime  # timezone-aware
    issued: datetime | None = None
    expires: datetime | None = None
    accepted_at: datetime | None = None
    origin: str = ""

    def to_bytes(self) -> bytes:
        doc = {
            "version": 1,
            "policy_id": self.policy_id,
            "serial": self.serial,
            "sha256": self.sha256,
            "max_time_seen": _iso(self.max_time_seen),
            "issued": _iso(self.issued),
            "expires": _iso(self.expires),
            "accepted_at": _iso(self.accepted_at),
            "origin": self.origin,
        }
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> PolicyState:
        """Parse; raise ``ValueError`` on anything unexpected."""
        doc = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise ValueError("not a version 1 state document")
        policy_id = doc["policy_id"]
        serial = doc["serial"]
        sha256 = doc["sha256"]
        if not isinstance(policy_id, str) or not isinstance(sha256, str):
            raise ValueError("policy_id and sha256 must be strings")
        if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
            raise ValueError("serial must be a non-negative integer")
        max_time = _parse_time(doc["max_time_seen"])
        if max_time is None:
            raise ValueError("max_time_seen is required")
        origin = doc.get("origin", "")
        return cls(
            policy_id=policy_id,
            serial=serial,
            sha256=sha256,
            max_time_seen=max_time,
            issued=_parse_time(doc.get("issued")),
            expires=_parse_time(doc.get("expires")),
            accepted_at=_parse_time(doc.get("accepted_at")),
            origin=origin if isinstance(origin, str) else "",
        )


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat()


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("times must be ISO 8601 strings")
    t = datetime.fromisoformat(value)
    if t.tzinfo is None:
        raise ValueError("times must carry a zone")
    return t


@dataclass(frozen=True, slots=True)
class OfferVerdict:
    """What :func:`judge_offer` says about an offered policy: accept it, keep the one in force,
    or reject it (and why)."""

    outcome: Literal["accept", "unchanged", "reject"]
    kind: str  # machine-readable: new, first, same, rollback, conflicting_hash, expired
    reason: str  # one line for people and for the tamper event


def clock_went_back(state: PolicyState | None, now: datetime) -> bool:
    return state is not None and now < state.max_time_seen - CLOCK_BACK_TOLERANCE


def judge_offer(
    state: PolicyState | None,
    *,
    policy_id: str,
    serial: int,
    sha256: str,
    expires: datetime | None,
    now: datetime,
) -> OfferVerdict:
    """Decide about a verified, parsed policy given what was accepted before."""
    if state is not None:
        if serial < state.serial:
            return OfferVerdict(
                "reject",
                "rollback",
                f"serial {serial} is lower than the accepted serial {state.serial} "
                f"of {state.policy_id!r} (rollback)",
            )
        if serial == state.serial:
            if sha256 == state.sha256:
                return OfferVerdict("unchanged", "same", f"serial {serial} is already in force")
            return OfferVerdict(
                "reject",
                "conflicting_hash",
                f"serial {serial} is already accepted with another content "
                f"(sha256 {state.sha256[:12]}…, offered {sha256[:12]}…); "
                "fix: publish changes under a higher serial",
            )
    effective_now = now if state is None else max(now, state.max_time_seen)
    if expires is not None and expires <= effective_now:
        return OfferVerdict(
            "reject",
            "expired",
            f"policy {policy_id!r} serial {serial} expired at {_iso(expires)} "
            "before it arrived; fix: re-issue it with a later 'expires'",
        )
    return OfferVerdict("accept", "first" if state is None else "new", f"serial {serial} accepted")


def load_state(path: Path) -> PolicyState | None:
    """The saved state, or None when there is none.

    A state file that does not parse cannot come from :func:`save_state` (writes are atomic),
    so it is moved aside as ``state.json.corrupt`` for inspection and treated as missing; the
    caller rebuilds what it can from the last good policy it kept.
    """
    try:
        with path.open("rb") as fh:
            data = fh.read(_MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    try:
        if len(data) > _MAX_STATE_BYTES:
            raise ValueError("state file too large")
        return PolicyState.from_bytes(data)
    except (ValueError, KeyError, UnicodeDecodeError) as err:
        aside = path.with_name(path.name + ".corrupt")
        log.warning("%s: corrupt policy state (%s); moved to %s", path, err, aside)
        os.replace(path, aside)
        return None


def save_state(path: Path, state: PolicyState) -> None:
    atomic_write(path, state.to_bytes())


def advance(state: PolicyState, now: datetime) -> PolicyState:
    """``state`` with ``max_time_seen`` moved forward to ``now`` if that is later."""
    return state if now <= state.max_time_seen else replace(state, max_time_seen=now)
