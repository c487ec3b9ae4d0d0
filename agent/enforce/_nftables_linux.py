"""libnftables through ctypes, JSON in and out (``libnftables-json(5)``).

Why the library and not the ``nft`` command: one process-free call per change, every change of
a batch applied atomically by the kernel (all or nothing), errors returned as text we can put
in one line. Why ctypes and not Debian's ``python3-nftables`` module: the agent runs in its own
virtual environment (installed from the wheelhouse), where the system's ``dist-packages`` are
not importable; that module is itself a thin ctypes wrapper over the same three functions.
What the agent needs from the system is only ``libnftables.so.1`` (package ``libnftables1``,
pulled in by ``nftables``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import threading
from typing import Any

__all__ = ["Nftables", "NftablesError", "NftablesUnavailable"]

_NFT_CTX_OUTPUT_JSON = 1 << 4
_NFT_CTX_OUTPUT_HANDLE = 1 << 3


class NftablesUnavailable(OSError):
    """``libnftables.so.1`` cannot be loaded (package ``libnftables1`` missing)."""


class NftablesError(RuntimeError):
    """libnftables refused a command; the message is its error text, on one line."""


class Nftables:
    """One libnftables context; ``run`` is serialized (the context is not thread-safe)."""

    def __init__(self, library: str | None = None) -> None:
        name = library or ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as err:
            raise NftablesUnavailable(
                f"cannot load {name} ({err}); install the nftables package (libnftables1)"
            ) from err
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.restype = ctypes.c_int
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.restype = ctypes.c_int
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise NftablesUnavailable("nft_ctx_new failed")
        flags = lib.nft_ctx_output_get_flags(self._ctx)
        lib.nft_ctx_output_set_flags(self._ctx, flags | _NFT_CTX_OUTPUT_JSON)
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._ctx:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None

    def run(self, commands: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Apply a batch of JSON commands atomically; the parsed output (``list``) or None."""
        text = json.dumps({"nftables": commands}).encode()
        with self._lock:
            if not self._ctx:
                raise NftablesError("nftables context closed")
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text)
            output = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            error = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if rc != 0:
            message = " ".join(error.decode(errors="replace").split()) or f"rc={rc}"
            raise NftablesError(message)
        if not output.strip():
            return None
        value = json.loads(output)
        return value if isinstance(value, dict) else None
