"""Signing keys by name: who a key id in a policy's signature is (name, role, added by, when).

The registry only names keys; it never decides trust (the collector's and the agents' trusted
keys do). A retired key keeps its name, so old serials it signed still read "signed by Vera
(CISO), retired 2026-03-01".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, insert, select, update

from proscribe.collector.storage.tables import signers


class SignerExists(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Signer:
    keyid: str
    name: str
    role: str
    added_by: str
    added_us: int
    retired_us: int | None

    def describe(self) -> str:
        role = f" ({self.role})" if self.role else ""
        return f"{self.name}{role}{', retired' if self.retired_us is not None else ''}"


def _signer(r: object) -> Signer:
    return Signer(
        r.keyid,  # type: ignore[attr-defined]
        r.name,  # type: ignore[attr-defined]
        r.role,  # type: ignore[attr-defined]
        r.added_by,  # type: ignore[attr-defined]
        int(r.added_us),  # type: ignore[attr-defined]
        None if r.retired_us is None else int(r.retired_us),  # type: ignore[attr-defined]
    )


def add_signer(
    conn: Connection, keyid: str, *, name: str, role: str, added_by: str, now_us: int
) -> Signer:
    if conn.execute(select(signers.c.keyid).where(signers.c.keyid == keyid)).first():
        raise SignerExists(keyid)
    conn.execute(
        insert(signers).values(
            keyid=keyid, name=name, role=role, added_by=added_by, added_us=now_us, retired_us=None
        )
    )
    return Signer(keyid, name, role, added_by, now_us, None)


def list_signers(conn: Connection) -> list[Signer]:
    return [_signer(r) for r in conn.execute(select(signers).order_by(signers.c.added_us))]


def retire_signer(conn: Connection, keyid: str, now_us: int) -> bool:
    result = conn.execute(
        update(signers)
        .where(signers.c.keyid == keyid, signers.c.retired_us.is_(None))
        .values(retired_us=now_us)
    )
    return result.rowcount > 0


def signers_by_keyid(conn: Connection, keyids: Iterable[str]) -> dict[str, Signer]:
    ids = list(keyids)
    if not ids:
        return {}
    rows = conn.execute(select(signers).where(signers.c.keyid.in_(ids)))
    return {r.keyid: _signer(r) for r in rows}
