"""The audit log of admin actions, as a hash chain.

Each row stores ``hash = sha256(prev_hash + canonical(row))`` where canonical is the JSON of the
row's own fields (seq, time, actor, action, target, detail) with sorted keys. Changing any byte
of a row breaks its hash; deleting or reordering rows breaks the next row's ``prev_hash`` link
(and the seq run). :func:`verify_chain` names the first broken row. Truncating the newest rows
is only detectable against a head hash recorded elsewhere (``verify_chain`` returns the head).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from proscribe.collector.storage.tables import audit_log

GENESIS = "0" * 64
_RETRIES = 5


@dataclass(frozen=True, slots=True)
class ChainVerdict:
    ok: bool
    rows: int
    head: str
    broken_at: int | None = None
    reason: str = ""


def _canonical(seq: int, time_us: int, actor: str, action: str, target: str, detail: str) -> str:
    fields = {
        "seq": seq,
        "time_us": time_us,
        "actor": actor,
        "action": action,
        "target": target,
        "detail": detail,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def row_hash(prev_hash: str, canonical: str) -> str:
    return hashlib.sha256((prev_hash + canonical).encode("ascii")).hexdigest()


def _head(conn: Connection) -> tuple[int, str]:
    row = conn.execute(
        select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
    ).first()
    return (0, GENESIS) if row is None else (int(row.seq), str(row.hash))


def append_audit(
    conn: Connection,
    *,
    actor: str,
    action: str,
    target: str,
    detail: dict[str, Any] | None,
    now_us: int,
) -> str:
    """Append one entry inside the caller's transaction; returns its hash."""
    detail_text = json.dumps(detail or {}, sort_keys=True, separators=(",", ":"))
    last_seq, prev = _head(conn)
    seq = last_seq + 1
    digest = row_hash(prev, _canonical(seq, now_us, actor, action, target, detail_text))
    # Explicit seq: the hash covers it, so it must be known before the insert. A concurrent
    # appender that read the same head fails on the unique prev_hash (and the seq key).
    conn.execute(
        insert(audit_log).values(
            seq=seq,
            time_us=now_us,
            actor=actor,
            action=action,
            target=target,
            detail=detail_text,
            prev_hash=prev,
            hash=digest,
        )
    )
    return digest


def append_audit_retrying(db: Any, **entry: Any) -> str:
    """Append in its own transaction, retrying if another writer took the head first."""
    for attempt in range(_RETRIES):
        try:
            with db.write() as conn:
                return append_audit(conn, **entry)
        except IntegrityError:
            if attempt == _RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def verify_chain(conn: Connection) -> ChainVerdict:
    """Walk the chain from the genesis; the first mismatch is reported."""
    prev = GENESIS
    expected_seq = 1
    count = 0
    for row in conn.execute(select(audit_log).order_by(audit_log.c.seq)):
        count += 1
        if row.seq != expected_seq:
            return ChainVerdict(False, count, prev, int(row.seq), "a row is missing before it")
        if row.prev_hash != prev:
            return ChainVerdict(
                False, count, prev, int(row.seq), "prev_hash does not link to the row before"
            )
        canonical = _canonical(
            int(row.seq), int(row.time_us), row.actor, row.action, row.target, row.detail
        )
        if row_hash(prev, canonical) != row.hash:
            return ChainVerdict(False, count, prev, int(row.seq), "row content does not match")
        prev = row.hash
        expected_seq += 1
    return ChainVerdict(True, count, prev)


def list_audit(conn: Connection, limit: int = 100) -> list[dict[str, Any]]:
    rows = conn.execute(select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit))
    return [dict(r._mapping) for r in rows]
