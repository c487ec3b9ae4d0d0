"""Export of the violations page's current filter, streamed so any size stays in flat memory.

CSV cells are formula-safe (``= + - @`` get a ``'``, see :mod:`proscribe.collector.csvexport`)
and have control characters escaped; JSON is ASCII with ``< > &`` escaped.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from proscribe.collector.csvexport import COLUMNS
from proscribe.collector.storage import Database, queries
from proscribe.collector.web.literal import safe_json
from proscribe.collector.web.report import csv_row

ROWS_PER_CHUNK = 500


def _events(db: Database, flt: queries.ViolationFilter) -> Iterator[dict[str, Any]]:
    with db.read() as conn:
        yield from queries.iter_violations(conn, flt, page=ROWS_PER_CHUNK)


def stream_csv(db: Database, flt: queries.ViolationFilter) -> Iterator[bytes]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    pending = 0
    for event in _events(db, flt):
        writer.writerow(csv_row(event))
        pending += 1
        if pending >= ROWS_PER_CHUNK:
            yield out.getvalue().encode("utf-8")
            out.seek(0)
            out.truncate()
            pending = 0
    yield out.getvalue().encode("utf-8")


def stream_json(db: Database, flt: queries.ViolationFilter) -> Iterator[bytes]:
    head = {k: v for k, v in asdict(flt).items() if v not in (None, False)}
    yield f'{{"filter": {safe_json(head)}, "violations": ['.encode()
    first = True
    chunk: list[str] = []
    for event in _events(db, flt):
        chunk.append(("" if first else ",") + "\n" + safe_json(event))
        first = False
        if len(chunk) >= ROWS_PER_CHUNK:
            yield "".join(chunk).encode()
            chunk = []
    chunk.append("\n]}\n")
    yield "".join(chunk).encode()
