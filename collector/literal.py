"""Showing strings from endpoints literally: HTML, CSV and JSON.

Everything an agent sends (host names, user names, command lines, DNS names, paths) is
attacker-controlled: a process may be named ``<script>``, ``{{7*7}}``, U+202E (which flips the
rest of a line) or ``\\x1b[2J`` (which clears a terminal). HTML escaping is Jinja2's autoescape;
this module adds the other half: control and bidirectional-formatting characters become visible
escapes (``\\x1b``, ``\\u202e``) so a reader sees them instead of being fooled by them.
"""

from __future__ import annotations

import json
import unicodedata
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from markupsafe import Markup, escape

# Cc: C0, DEL and C1 controls; Cf: bidi overrides/isolates, zero-width characters, BOM;
# Zl/Zp: line and paragraph separators. None of them should reach a reader unmarked.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
DEFAULT_CLIP = 300


def _escape_char(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _is_invisible(ch: str) -> bool:
    return unicodedata.category(ch) in _INVISIBLE_CATEGORIES


def visible_text(value: object) -> str:
    """Plain text with every control/format character replaced by a visible escape."""
    text = "" if value is None else str(value)
    if text.isprintable():  # the common case, checked in C: nothing to mark
        return text
    return "".join(_escape_char(ch) if _is_invisible(ch) else ch for ch in text)


def clip(text: str, limit: int = DEFAULT_CLIP) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def show_html(value: object, limit: int | None = DEFAULT_CLIP) -> Markup:
    """HTML for an endpoint string: escaped, control characters shown as marked-up escapes,
    clipped to ``limit`` characters (``None``: no limit)."""
    text = "" if value is None else str(value)
    if limit is not None:
        text = clip(text, limit)
    if text.isprintable():  # no control, format or separator character: plain escaping
        return escape(text)
    parts: list[str] = []
    plain: list[str] = []
    for ch in text:
        if _is_invisible(ch):
            if plain:
                parts.append(str(escape("".join(plain))))
                plain = []
            code = f"U+{ord(ch):04X}"
            parts.append(
                f'<span class="ctl" title="control character {code}">{_escape_char(ch)}</span>'
            )
        else:
            plain.append(ch)
    if plain:
        parts.append(str(escape("".join(plain))))
    return Markup("".join(parts))  # noqa: S704 - every piece is escaped above


def safe_json(data: Any, *, indent: int | None = None, compact: bool = False) -> str:
    """JSON that is ASCII only (so controls and bidi characters are ``\\u`` escapes) and has no
    ``< > &`` (so it stays inert even if someone pastes it into HTML). NaN and infinities are
    refused (they are not JSON)."""
    separators = (",", ":") if compact else None
    text = json.dumps(
        data, ensure_ascii=True, indent=indent, separators=separators, allow_nan=False, default=str
    )
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def safe_json_stream(
    document: dict[str, Any],
    key: str,
    items: Iterable[Any],
    *,
    indent: int | None = None,
    chunk: int = 500,
) -> Iterator[str]:
    """``safe_json(document, indent=indent)`` with its top-level member ``key`` the list of
    ``items``, in pieces: the document up to that list, then the items ``chunk`` at a time, one
    a line (compact), as they are read — an export of millions of events in flat memory. The
    other members are written where ``document`` has them, around the list."""
    marker = f"stream-{uuid.uuid4().hex}"  # where the list goes; nothing else can say it
    text = safe_json({**document, key: marker}, indent=indent)
    before, after = text.split(json.dumps(marker), 1)
    pad = " " * indent if indent is not None else ""
    pieces: list[str] = [before + "["]
    yield pieces.pop()
    for n, item in enumerate(items):
        pieces.append(("\n" if n == 0 else ",\n") + pad * 2 + safe_json(item))
        if len(pieces) >= chunk:
            yield "".join(pieces)
            pieces = []
    pieces.append("\n" + pad + "]" + after + "\n")
    yield "".join(pieces)
