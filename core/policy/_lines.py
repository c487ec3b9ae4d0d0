"""Where things are in a policy file: a light line index for lint messages.

``tomllib`` returns values without positions, so we scan the source text once for table headers
(``[meta]``, ``[[process]]``, ``[[meta.reference]]``) and ``key =`` lines. The N-th
``[[process]]`` header and the keys under it map to ``("process", N)``. The scan is a
heuristic (it skips multi-line strings and ignores inline tables), which is all a message
needs; it never decides whether a policy is valid.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)(?:\s*\.\s*[A-Za-z0-9_\-"']+)*\s*=""")

TableRef = tuple[str, int]  # ("process", 2) = the third [[process]]; ("meta", 0) = [meta]
ROOT: TableRef = ("", 0)


class LineIndex:
    """Maps tables and keys of a TOML document to 1-based line numbers."""

    def __init__(self, text: str) -> None:
        self.tables: dict[TableRef, int] = {}
        self.keys: dict[tuple[TableRef, str], int] = {}
        counts: dict[str, int] = {}
        current: TableRef = ROOT
        in_multiline: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_multiline is not None:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            header = _HEADER.match(line)
            if header is not None:
                name = re.sub(r"\s+", "", header.group(2)).replace('"', "")
                if header.group(1) == "[[":
                    index = counts.get(name, -1) + 1
                    counts[name] = index
                else:
                    index = 0
                current = (name, index)
                self.tables.setdefault(current, number)
                continue
            key = _KEY.match(line)
            if key is not None:
                name = key.group(1).strip("\"'")
                self.keys.setdefault((current, name), number)
            for quote in ('"""', "'''"):
                if line.count(quote) % 2 == 1:
                    in_multiline = quote
                    break

    def table(self, ref: TableRef) -> int | None:
        return self.tables.get(ref)

    def key(self, ref: TableRef, name: str) -> int | None:
        """The line of ``name`` in table ``ref``, else the table's header line."""
        return self.keys.get((ref, name)) or self.tables.get(ref)
