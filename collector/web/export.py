"""Export of the violations page's current filter, streamed so any size stays in flat memory.

The escaping rules are every export's (:mod:`proscribe.collector.csvexport` for CSV,
:func:`proscribe.collector.literal.safe_json` for JSON: ASCII, ``< > &`` escaped).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from proscribe.collector.csvexport import iter_violations_csv
from proscribe.collector.literal import safe_json_stream
from proscribe.collector.storage import Database, queries

ROWS_PER_CHUNK = 500


def _events(db: Database, flt: queries.ViolationFilter) -> Iterator[dict[str, Any]]:
    with db.read() as conn:
        yield from queries.iter_violations(conn, flt, page=ROWS_PER_CHUNK)


def stream_csv(db: Database, flt: queries.ViolationFilter) -> Iterator[bytes]:
    for chunk in iter_violations_csv(_events(db, flt), ROWS_PER_CHUNK):
        yield chunk.encode("utf-8")


def stream_json(db: Database, flt: queries.ViolationFilter) -> Iterator[bytes]:
    head = {k: v for k, v in asdict(flt).items() if v not in (None, False)}
    document = {"filter": head, "violations": None}
    for piece in safe_json_stream(document, "violations", _events(db, flt), chunk=ROWS_PER_CHUNK):
        yield piece.encode()
