"""A GGUF header reader, written for hostile input: it reads a few KB and never trusts a count.

GGUF (llama.cpp's model file) starts with ``b"GGUF"``, a version (2 or 3), the tensor count and
the metadata key/value count, then the key/value pairs. Writers put ``general.*`` first
(``general.architecture``, ``general.name``, ``general.basename``, ``general.organization``,
``general.base_model.N.*``, repository URLs) and the large tokenizer arrays last, so the identity
of a model is in its first few KB. This reader:

* reads at most :data:`MAX_READ` bytes, in growing chunks, and stops at the first ``tokenizer.``
  key (the vocabulary can be megabytes);
* caps every count and length (keys, strings, arrays, nesting) and gives up on a file that
  exceeds one, returning what it read so far;
* keeps only strings and small scalars (and short lists of strings) under ``general.``, plus
  every ``*.architecture``-like scalar it passes.

A file that does not start with the magic is not GGUF (``None``); a truncated or malformed one
gives what was readable before the damage. Both byte orders are read (big-endian GGUF exists for
s390x).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO

__all__ = ["MAX_READ", "GgufHeader", "read_gguf_header"]

MAGIC = b"GGUF"
MAX_READ = 256 * 1024  # bytes of header read at most
FIRST_READ = 16 * 1024
MAX_KV = 1 << 16  # a header claiming more key/value pairs is hostile
MAX_KEY = 256
MAX_STRING = 64 * 1024
MAX_ARRAY = 1 << 24
KEEP_LIST = 32  # strings kept from a general.* array (tags, languages)

_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9


class _Short(Exception):
    """The buffer ended before the value: read more, or stop."""


class _Bad(Exception):
    """The header breaks a rule or a cap: stop, keep what was read."""


@dataclass(slots=True)
class GgufHeader:
    version: int
    tensor_count: int
    kv_count: int
    fields: dict[str, str | int | float | bool | tuple[str, ...]] = field(default_factory=dict)
    complete: bool = False  # every key up to the tokenizer (or the end) was read
    bytes_read: int = 0
    problem: str = ""  # why reading stopped early, when it did

    def text(self, key: str) -> str:
        value = self.fields.get(key)
        return value if isinstance(value, str) else ""


class _Cursor:
    def __init__(self, data: bytes, order: str) -> None:
        self.data = data
        self.pos = 0
        self.order = order

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise _Short
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: str) -> int | float | bool:
        size = struct.calcsize(fmt)
        value: int | float | bool = struct.unpack(self.order + fmt, self.take(size))[0]
        return value

    def u32(self) -> int:
        return int(self.unpack("I"))

    def u64(self) -> int:
        return int(self.unpack("Q"))

    def string(self, cap: int) -> str:
        length = self.u64()
        if length > cap:
            raise _Bad(f"string of {length} bytes (cap {cap})")
        return self.take(length).decode("utf-8", "replace")

    def skip_string(self) -> None:
        length = self.u64()
        if length > MAX_STRING:
            raise _Bad(f"string of {length} bytes (cap {MAX_STRING})")
        self.take(length)


def _keep(key: str) -> bool:
    return key.startswith("general.") or key.endswith(".architecture")


def _value(cur: _Cursor, vtype: int, key: str, out: dict[str, object], depth: int = 0) -> None:
    if vtype in _SCALARS:
        value = cur.unpack(_SCALARS[vtype])
        if _keep(key):
            out[key] = value
    elif vtype == _STRING:
        if _keep(key):
            out[key] = cur.string(MAX_STRING)
        else:
            cur.skip_string()
    elif vtype == _ARRAY:
        if depth > 2:
            raise _Bad("arrays nested more than 2 deep")
        item_type = cur.u32()
        count = cur.u64()
        if count > MAX_ARRAY:
            raise _Bad(f"array of {count} items (cap {MAX_ARRAY})")
        if item_type in _SCALARS:
            cur.take(struct.calcsize(_SCALARS[item_type]) * count)
        elif item_type == _STRING:
            kept: list[str] = []
            for _ in range(count):
                if _keep(key) and len(kept) < KEEP_LIST:
                    kept.append(cur.string(MAX_KEY))
                else:
                    cur.skip_string()
            if _keep(key):
                out[key] = tuple(kept)
        elif item_type == _ARRAY:
            for _ in range(count):
                _value(cur, _ARRAY, "", {}, depth + 1)
        else:
            raise _Bad(f"array item type {item_type} unknown")
    else:
        raise _Bad(f"value type {vtype} unknown (key {key!r})")


def _parse(data: bytes, header: GgufHeader, order: str) -> bool:
    """Parse key/value pairs from ``data``; True when done (end, tokenizer or a cap)."""
    cur = _Cursor(data, order)
    cur.pos = 24
    fields: dict[str, object] = {}
    try:
        for _ in range(header.kv_count):
            key = cur.string(MAX_KEY)
            if key.startswith("tokenizer."):
                break
            _value(cur, cur.u32(), key, fields)
    except _Short:
        header.fields = fields  # type: ignore[assignment]
        return False
    except _Bad as err:
        header.fields = fields  # type: ignore[assignment]
        header.problem = str(err)
        return True
    header.fields = fields  # type: ignore[assignment]
    header.complete = True
    return True


def read_gguf_header(handle: BinaryIO) -> GgufHeader | None:
    """The header of the GGUF file open as ``handle`` (at offset 0), or None if not GGUF."""
    data = handle.read(FIRST_READ)
    if len(data) < 24 or data[:4] != MAGIC:
        return None
    order = "<"
    version = struct.unpack("<I", data[4:8])[0]
    if version > 0xFFFF:  # a big-endian file reads as a huge little-endian version
        order = ">"
        version = struct.unpack(">I", data[4:8])[0]
    if version not in (2, 3):  # version 1 (2023, 32-bit lengths) is long gone
        return None
    tensors, kv_count = struct.unpack(order + "QQ", data[8:24])
    header = GgufHeader(version, tensors, kv_count)
    if kv_count > MAX_KV:
        header.problem = f"{kv_count} metadata pairs claimed (cap {MAX_KV})"
        header.bytes_read = len(data)
        return header
    while True:
        done = _parse(data, header, order)
        if done or len(data) >= MAX_READ:
            break
        more = handle.read(min(len(data), MAX_READ - len(data)))
        if not more:
            header.problem = "file ends inside the header"
            break
        data += more
    if not header.complete and not header.problem:
        header.problem = f"header larger than {MAX_READ} bytes read"
    header.bytes_read = len(data)
    return header
