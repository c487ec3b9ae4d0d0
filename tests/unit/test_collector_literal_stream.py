"""``safe_json_stream``: the streamed exports (violations page, report JSON, ``collector
report``) write what ``safe_json`` of the whole document writes, in pieces."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from proscribe.collector.literal import safe_json, safe_json_stream

HOSTILE = {"id": "1", "name": "<script>&\u202e\x1b[2J", "cmd": ['"stream-', "]}"]}


@pytest.mark.parametrize("indent", [None, 1])
@pytest.mark.parametrize("count", [0, 1, 5, 12])
def test_pieces_join_to_the_whole_document(indent: int | None, count: int) -> None:
    items = [{**HOSTILE, "id": str(i)} for i in range(count)]
    document = {"filter": {"host": "<h>"}, "violations": None, "after": [1, 2]}
    pieces = list(safe_json_stream(document, "violations", items, indent=indent, chunk=5))
    text = "".join(pieces)
    assert json.loads(text) == json.loads(safe_json({**document, "violations": items}))
    assert "<" not in text and ">" not in text and "&" not in text and text.isascii()
    assert len(pieces) == 2 + count // 5  # the head alone, then five items a piece
    assert text.count("\n" + (" " * 2 * (indent or 0)) + "{") == count  # one item a line


def test_the_items_are_read_only_as_they_are_written() -> None:
    read: list[int] = []

    def items() -> Iterator[dict[str, int]]:
        for i in range(10):
            read.append(i)
            yield {"id": i}

    stream = safe_json_stream({"violations": None}, "violations", items(), chunk=3)
    next(stream)  # the head, before any item
    assert read == []
    next(stream)
    assert read == [0, 1, 2]
