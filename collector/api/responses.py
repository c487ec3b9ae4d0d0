"""JSON answers that stay inert wherever they end up.

Everything the API returns may quote an endpoint's strings (a process named ``<script>``, a
host name with U+202E). :class:`SafeJSONResponse` is the app's default response class: ASCII
only (control and bidirectional characters become ``\\u`` escapes) with ``< > &`` escaped, so a
body pasted into HTML or shown in a terminal cannot run or disguise anything. The values
round-trip exactly through any JSON parser.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from proscribe.collector.literal import safe_json


class SafeJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return safe_json(content, compact=True).encode("ascii")
