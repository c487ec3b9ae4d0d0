"""Events handed to the running agent by another process (``proscribe scan --report``).

The spool has one writer, the daemon. A one-shot command that wants its findings sent as the
agent sends its own writes them as one JSON file into ``state_dir/inbox/`` (root-only, like the
state directory; written to a temporary name, then renamed); the daemon drains the folder at
start and then every status interval: each event is checked against the wire schema's kinds,
actions and limits, stamped with this agent's host section, committed to the spool, and the file
is removed. A file that is not valid JSON is moved to ``inbox/rejected/`` and logged; one bad
event never blocks the others.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from proscribe.agent.evidence import Evidence
from proscribe.core.events import EVENT_ACTIONS, KINDS, MAX_BATCH_BYTES, SEVERITIES, Event

__all__ = ["drain_inbox", "write_inbox"]

log = logging.getLogger(__name__)

MAX_FILES_PER_DRAIN = 100


def write_inbox(state_dir: Path, events: list[Event]) -> Path:
    folder = state_dir / "inbox"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = f"{uuid.uuid4().hex}.json"
    tmp = folder / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"events": events}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    final = folder / name
    os.replace(tmp, final)
    return final


def _acceptable(event: Any) -> bool:
    return (
        isinstance(event, dict)
        and event.get("kind") in KINDS
        and event.get("action") in EVENT_ACTIONS
        and event.get("severity", "high") in SEVERITIES
        and isinstance(event.get("id"), str)
        and isinstance(event.get("time"), str)
        and len(json.dumps(event)) < MAX_BATCH_BYTES // 4
    )


def drain_inbox(state_dir: Path, evidence: Evidence) -> int:
    """Commit the events waiting in the inbox; the number committed."""
    folder = state_dir / "inbox"
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and n[0] != ".")
    except OSError:
        return 0
    committed = 0
    for name in names[:MAX_FILES_PER_DRAIN]:
        path = folder / name
        try:
            if path.stat().st_size > MAX_BATCH_BYTES * 8:
                raise ValueError("larger than the inbox allows")
            document = json.loads(path.read_text(encoding="utf-8"))
            items = document["events"]
            if not isinstance(items, list):
                raise ValueError("'events' is not a list")
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.error("inbox file %s refused: %s (moved to inbox/rejected)", path, err)
            (folder / "rejected").mkdir(exist_ok=True, mode=0o700)
            os.replace(path, folder / "rejected" / name)
            continue
        for item in items:
            if not _acceptable(item):
                log.error("inbox %s: an event was refused (not the event schema)", name)
                continue
            item["host"] = evidence.host()
            if evidence.commit(item):
                committed += 1
        path.unlink()
    return committed
