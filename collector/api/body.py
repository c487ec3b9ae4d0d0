"""Reading request bodies with hard caps, whatever the client claims.

The cap counts the bytes actually streamed: a lying or absent ``Content-Length`` and chunked
transfer all stop at the same limit. ``Content-Encoding: gzip`` is decompressed incrementally
with the same cap on the output, so a gzip bomb costs at most that much memory. Bodies are
JSON and must say so (:func:`require_json`): a form, XML or text/plain post is 415.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from starlette.requests import ClientDisconnect, Request

from proscribe.collector.api.errors import ApiError


def _too_large(limit: int, what: str = "request body") -> ApiError:
    return ApiError(413, "too_large", f"{what} exceeds {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body as sent (still compressed), or 413 past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", "Content-Length is not a number")
        if int(declared) > limit:
            raise _too_large(limit)
    buffer = bytearray()
    try:
        async for chunk in request.stream():
            buffer += chunk
            if len(buffer) > limit:
                raise _too_large(limit)
    except ClientDisconnect as err:
        raise ApiError(400, "bad_request", "client disconnected mid-body") from err
    return bytes(buffer)


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (identity or gzip) with ``limit`` on the decoded size."""
    name = (encoding or "identity").strip().lower()
    if name in ("", "identity"):
        return body
    if name != "gzip":
        raise ApiError(415, "unsupported_media_type", f"Content-Encoding {name!r} (use gzip)")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as err:
        raise ApiError(422, "invalid_body", f"gzip: {err}") from err
    if len(out) > limit or inflater.unconsumed_tail:
        raise _too_large(limit, "decompressed body")
    if not inflater.eof:
        raise ApiError(422, "invalid_body", "gzip stream is truncated")
    if inflater.unused_data:
        raise ApiError(422, "invalid_body", "data after the end of the gzip stream")
    return out


def require_json(headers: Mapping[str, str]) -> None:
    """415 unless ``Content-Type`` is ``application/json`` (parameters such as ``charset=utf-8``
    allowed); an absent header is refused too, so what was stored is what was declared."""
    declared = headers.get("content-type", "")
    media = declared.split(";", 1)[0].strip().lower()
    if media != "application/json":
        shown = declared[:80].encode("ascii", "backslashreplace").decode("ascii") or "none"
        raise ApiError(
            415, "unsupported_media_type", f"Content-Type {shown!r}: send application/json"
        )
