"""CSV for spreadsheets and terminals: one escaping rule for every export.

The API's ``format=csv``, the dashboard's violations and report downloads and ``proscribe
collector report --format csv`` all write their cells through :func:`safe_cell`:

* a cell that starts with ``= + - @`` (or a tab / carriage return, which some spreadsheets strip
  before looking) is prefixed with ``'`` so Excel/LibreOffice show it as text instead of running
  it (OWASP "CSV injection");
* then every control, bidi and other invisible character (ESC, CR, TAB, U+202E …) becomes a
  visible escape (:func:`proscribe.collector.literal.visible_text`): a CSV is often read with
  ``cat``, where ``\\x1b[2J`` would clear the screen and U+202E would reverse a line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from proscribe.collector.literal import visible_text

COLUMNS = (
    "time",
    "hostname",
    "user",
    "rule",
    "kind",
    "action",
    "severity",
    "process",
    "exe",
    "cmdline",
    "qname",
    "path",
    "detail",
    "count",
    "policy_serial",
    "agent_id",
    "id",
    "received",
)
_DANGEROUS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> str:
    text = "" if value is None else str(value)
    return visible_text("'" + text if text.startswith(_DANGEROUS) else text)


def _iso(us: int | None) -> str:
    if us is None:
        return ""
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")


def violation_row(event: dict[str, Any]) -> list[str]:
    process = event.get("process") or {}
    dns = event.get("dns") or {}
    file = event.get("file") or {}
    host = event.get("host") or {}
    policy = event.get("policy") or {}
    values = (
        event.get("time"),
        host.get("hostname"),
        process.get("user"),
        event.get("rule"),
        event.get("kind"),
        event.get("action"),
        event.get("severity"),
        process.get("name"),
        process.get("exe"),
        " ".join(process.get("cmdline") or []),
        dns.get("qname"),
        file.get("path"),
        event.get("detail"),
        event.get("count", 1),
        policy.get("serial"),
        host.get("agent_id"),
        event.get("id"),
        _iso(event.get("received_us")),
    )
    return [safe_cell(v) for v in values]


def iter_violations_csv(
    events: Iterable[dict[str, Any]], rows_per_chunk: int = 500
) -> Iterator[str]:
    """The CSV in chunks of ``rows_per_chunk`` rows (the header first), for streaming."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    pending = 0
    for event in events:
        writer.writerow(violation_row(event))
        pending += 1
        if pending >= rows_per_chunk:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
            pending = 0
    yield out.getvalue()


def violations_csv(events: Iterable[dict[str, Any]]) -> str:
    return "".join(iter_violations_csv(events))
