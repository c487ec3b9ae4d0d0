"""Local AI model findings per host (``model`` events, agent/model_guard.py), for the host page
and the compliance report: what (the model's own name), where (path), whose (owner), since when
(first and last event), the identity evidence, and what was done (reported, programs killed,
quarantined).

The events are folded here, one finding per host and path, from the newest
:data:`MAX_EVENTS` model events that match: no table of its own, no migration.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from proscribe.collector.storage.tables import events

__all__ = ["MAX_EVENTS", "ModelFinding", "model_findings", "model_findings_json"]

MAX_EVENTS = 5000


@dataclass
class ModelFinding:
    agent_id: str
    hostname: str
    path: str
    owner: str
    name: str
    format: str
    rule: str
    first_us: int
    last_us: int
    evidence: list[str] = field(default_factory=list)
    sha256: str = ""
    actions: Counter[str] = field(default_factory=Counter)
    programs: list[str] = field(default_factory=list)  # "pid 42 llama-server (alice)"
    quarantine: str = ""


def model_findings(
    conn: Connection,
    *,
    agent_id: str | None = None,
    since_us: int | None = None,
    until_us: int | None = None,
    limit: int = MAX_EVENTS,
) -> list[ModelFinding]:
    where: list[Any] = [events.c.kind == "model"]
    if agent_id is not None:
        where.append(events.c.agent_id == agent_id)
    if since_us is not None:
        where.append(events.c.time_us >= since_us)
    if until_us is not None:
        where.append(events.c.time_us < until_us)
    rows = conn.execute(
        select(events.c.agent_id, events.c.hostname, events.c.time_us, events.c.body)
        .where(*where)
        .order_by(events.c.time_us.desc(), events.c.seq.desc())
        .limit(limit)
    ).all()
    found: dict[tuple[str, str], ModelFinding] = {}
    for row in rows:
        try:
            body = json.loads(row.body)
        except ValueError:
            continue
        section = body.get("file") if isinstance(body, dict) else None
        if not isinstance(section, dict) or not isinstance(section.get("path"), str):
            continue
        raw_model = section.get("model")
        model: dict[str, Any] = raw_model if isinstance(raw_model, dict) else {}
        key = (str(row.agent_id), section["path"])
        time_us = int(row.time_us)
        finding = found.get(key)
        if finding is None:
            raw_evidence = model.get("evidence")
            evidence: list[Any] = raw_evidence if isinstance(raw_evidence, list) else []
            finding = found[key] = ModelFinding(
                agent_id=key[0],
                hostname=str(row.hostname or ""),
                path=key[1],
                owner=str(section.get("owner") or ""),
                name=str(model.get("name") or ""),
                format=str(model.get("format") or ""),
                rule=str(body.get("rule") or ""),
                first_us=time_us,
                last_us=time_us,
                evidence=[str(line) for line in evidence[:8]],
                sha256=str(section.get("sha256") or ""),
            )
        finding.first_us = min(finding.first_us, time_us)
        finding.last_us = max(finding.last_us, time_us)
        action = str(body.get("action") or "")
        finding.actions[action] += 1
        if section.get("quarantine") and not finding.quarantine:
            finding.quarantine = str(section["quarantine"])
        process = body.get("process")
        if isinstance(process, dict) and len(finding.programs) < 5:
            who = f" ({process.get('user')})" if process.get("user") else ""
            finding.programs.append(
                f"pid {process.get('pid')} {process.get('name') or process.get('exe') or ''}"
                f"{who}: {action}"
            )
    return sorted(found.values(), key=lambda f: (f.hostname, f.path))


def model_findings_json(findings: list[ModelFinding]) -> list[dict[str, Any]]:
    from datetime import UTC, datetime

    def iso(us: int) -> str:
        return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")

    return [
        {
            "agent_id": f.agent_id,
            "hostname": f.hostname,
            "path": f.path,
            "owner": f.owner,
            "model": f.name,
            "format": f.format,
            "rule": f.rule,
            "first_seen": iso(f.first_us),
            "last_seen": iso(f.last_us),
            "evidence": f.evidence,
            "sha256": f.sha256,
            "actions": dict(f.actions),
            "programs": f.programs,
            "quarantine": f.quarantine,
        }
        for f in findings
    ]
