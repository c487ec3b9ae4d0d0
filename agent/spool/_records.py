"""What the spool hands out: spooled rows, statistics, and the keys that drive eviction."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from proscribe.core.events import Event

#: Kinds that are evicted first when the spool is full: they describe the agent, not a user.
HEALTH_KINDS = frozenset({"health", "heartbeat"})

PENDING = "pending"
SENT = "sent"
DEAD = "dead"


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    """One row of the spool: the event as it will be sent, and its bookkeeping."""

    id: str
    event: Event
    size: int
    state: str = PENDING
    count: int = 1
    created: float = 0.0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """Figures for ``agent status`` and for the heartbeat's ``spool`` section.

    ``depth``/``bytes`` count pending rows only (what is still to be delivered). ``dropped`` maps
    a reason (``evicted_health``, ``folded``, ``evicted_oldest``, ``full``, ``too_large``,
    ``write_error``) to a count; counters are persisted, so they survive restarts.
    """

    depth: int
    bytes: int
    dropped: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    dead_lettered: int = 0
    requeued: int = 0  # dead letters put back into delivery (``agent requeue``)
    last_ack_time: float | None = None
    stored_rows: int = 0
    stored_bytes: int = 0
    max_events: int = 0
    max_bytes: int = 0
    corrupt_moved_to: str | None = None
    corrupt_replaced: int = 0
    corrupt_salvaged: int = 0  # unsent events recovered from corrupt files into this spool

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "bytes": self.bytes,
            "dropped": dict(self.dropped),
            "dropped_total": self.dropped_total,
            "sent": self.sent,
            "dead_lettered": self.dead_lettered,
            "requeued": self.requeued,
            "last_ack_time": self.last_ack_time,
            "stored_rows": self.stored_rows,
            "stored_bytes": self.stored_bytes,
            "max_events": self.max_events,
            "max_bytes": self.max_bytes,
            "corrupt_moved_to": self.corrupt_moved_to,
            "corrupt_replaced": self.corrupt_replaced,
            "corrupt_salvaged": self.corrupt_salvaged,
        }


def _section(event: Event, name: str) -> dict[str, Any]:
    value = event.get(name)
    return value if isinstance(value, dict) else {}


def fold_key(event: Event) -> int | None:
    """Identity under which repeats fold into one row's ``count``; None = never folded.

    Same kind, rule and action, and the same thing seen: for a process its executable (or name),
    user and hash — not its pid, since repeated starts are exactly what folding is for; for DNS
    the query name; for a file its path. Action is part of the key so that a ``killed`` is never
    folded into a ``failed``.
    """
    kind = event.get("kind")
    if kind in HEALTH_KINDS:
        return None
    if kind == "process":
        proc = _section(event, "process")
        seen: list[Any] = [
            proc.get("exe") or proc.get("name"),
            proc.get("user"),
            proc.get("sha256"),
        ]
    elif kind == "dns":
        seen = [_section(event, "dns").get("qname")]
    elif kind == "file":
        seen = [_section(event, "file").get("path")]
    else:
        seen = [event.get("detail")]
    text = json.dumps([kind, event.get("rule"), event.get("action"), *seen], default=str)
    # A signed 64-bit digest keeps the index small; a collision merely folds two unrelated
    # repeats' counts (only ever when the spool is full), it never loses a first violation.
    return int.from_bytes(
        hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True
    )


def rule_key(event: Event) -> str:
    """The group whose first pending violation is never evicted (rule id, else the kind)."""
    rule = event.get("rule")
    return f"rule:{rule}" if rule else f"kind:{event.get('kind')}"
