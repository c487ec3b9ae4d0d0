"""What a file says it is: the identity of a local AI model, read from the file and its store.

:func:`identify` opens one path (a regular file only: never a FIFO, device or socket, whatever a
symlink points at), reads a few KB and returns a :class:`ModelIdentity` — the format and every
name, architecture and digest the file or its store records, each with the field it came from —
or ``None`` when the path is not a model file. File names are never evidence (anyone can rename
a file); the store's own records are (a Hugging Face cache's repository directory, an Ollama
manifest's path, a content-addressed blob's digest).

Formats read: GGUF (:mod:`.gguf`), safetensors (the JSON header's ``__metadata__``), a Hugging
Face ``config.json`` (``model_type``, ``architectures``, ``_name_or_path``), an Ollama manifest
(its name and the digests of its ``application/vnd.ollama.image.model`` layers). Weights in
another format (PyTorch ``.bin``/``.pt``, ONNX) are identified by the ``config.json`` beside them
and the cache they sit in.
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import PurePosixPath

from proscribe.core.models.gguf import read_gguf_header

__all__ = ["MAX_JSON", "ModelIdentity", "identify", "normalize"]

MAX_JSON = 1024 * 1024  # config.json and manifests larger than this are not read
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the format's own cap
SAFETENSORS_READ = 64 * 1024  # __metadata__ comes first; the tensor table after it is not read
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".onnx", ".safetensors", ".gguf", ".ckpt", ".mlmodel")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HF_REPO = re.compile(r"^models--(.+)$")
_NAME_KEYS = ("name", "basename", "finetune", "organization", "repo_url", "url", "doi")


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    path: str
    format: str  # gguf | safetensors | hf-config | ollama-manifest | weights | blob
    names: tuple[tuple[str, str], ...] = ()  # (where it was read, value)
    architectures: tuple[tuple[str, str], ...] = ()
    digests: tuple[str, ...] = ()  # "sha256:<hex>" of blobs this file is or references
    bytes_read: int = 0

    @property
    def display_name(self) -> str:
        for _field, value in self.names:
            return value
        for _field, value in self.architectures:
            return value
        return PurePosixPath(self.path).name

    def evidence(self, limit: int = 6) -> list[str]:
        lines = [f"{f} = {v!r}" for f, v in (*self.names, *self.architectures)]
        lines += [f"blob {d}" for d in self.digests]
        return lines[:limit]

    def to_dict(self) -> dict[str, object]:
        return {
            "format": self.format,
            "name": self.display_name,
            "names": [[f, v] for f, v in self.names],
            "architectures": [[f, v] for f, v in self.architectures],
            "digests": list(self.digests),
        }


def normalize(text: str) -> str:
    """Lower case, letters and digits only: ``DeepSeek-R1`` and ``deepseek_r1`` agree."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _open_regular(path: str) -> tuple[int, os.stat_result] | None:
    try:
        before = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(before.st_mode):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    after = os.fstat(fd)
    if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (
        before.st_dev,
        before.st_ino,
    ):
        os.close(fd)  # swapped between stat and open
        return None
    return fd, after


def _read_json(path: str) -> tuple[object, int] | None:
    opened = _open_regular(path)
    if opened is None:
        return None
    fd, st = opened
    try:
        if st.st_size > MAX_JSON:
            return None
        data = os.read(fd, MAX_JSON + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return json.loads(data.decode("utf-8")), len(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def _store_context(path: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Names and digests the store records for a file at ``path`` (not the file's own name)."""
    names: list[tuple[str, str]] = []
    digests: list[str] = []
    parts = PurePosixPath(path).parts
    for i, part in enumerate(parts[:-1]):
        m = _HF_REPO.match(part)
        if m and i + 1 < len(parts) and parts[i + 1] in ("snapshots", "blobs", "refs"):
            names.append(("Hugging Face cache repository", m.group(1).replace("--", "/")))
    name = parts[-1] if parts else ""
    parent = parts[-2] if len(parts) > 1 else ""
    candidate = ""
    if name.startswith("sha256-") and parent == "blobs":  # Ollama, ramalama
        candidate = name[7:]
    elif parent == "blobs" or (parent == "sha256" and len(parts) > 2 and parts[-3] == "blobs"):
        candidate = name  # Hugging Face cache (sha256 of LFS files), OCI, Docker Model Runner
    if _HEX64.match(candidate):
        digests.append(f"sha256:{candidate}")
    return names, digests


def _gguf_name_key(key: str) -> bool:
    """The model's own names: not its datasets', licence's or tags' (general.dataset.0.name)."""
    if not key.startswith("general.") or key.startswith(("general.dataset", "general.license")):
        return False
    return key.rsplit(".", 1)[-1] in _NAME_KEYS


def _gguf(fd: int, path: str) -> ModelIdentity | None:
    with os.fdopen(os.dup(fd), "rb", buffering=0) as handle:
        header = read_gguf_header(handle)
    if header is None:
        return None
    names: list[tuple[str, str]] = []
    archs: list[tuple[str, str]] = []
    for key, value in header.fields.items():
        if not isinstance(value, str) or not value.strip():
            continue
        if key == "general.architecture":
            archs.append((f"GGUF {key}", value))
        elif _gguf_name_key(key) or key == "general.source.huggingface.repository":
            names.append((f"GGUF {key}", value))
    return ModelIdentity(path, "gguf", tuple(names), tuple(archs), (), header.bytes_read)


def _safetensors(fd: int, path: str, head: bytes) -> ModelIdentity | None:
    (length,) = struct.unpack("<Q", head[:8])
    if not 2 <= length <= MAX_SAFETENSORS_HEADER or head[8:9] != b"{":
        return None
    data = head + os.read(fd, max(0, min(length + 8, SAFETENSORS_READ) - len(head)))
    body = data[8 : 8 + length].decode("utf-8", "replace")
    metadata: object = None
    try:
        if length + 8 <= len(data):
            parsed = json.loads(body)
            if not isinstance(parsed, dict):
                return None
            metadata = parsed.get("__metadata__")
        else:  # a long tensor table: __metadata__ is written first, decode just that object
            at = body.find('"__metadata__"')
            if at >= 0:
                colon = body.index(":", at)
                metadata, _end = json.JSONDecoder().raw_decode(body[colon + 1 :].lstrip())
    except (ValueError, RecursionError):
        return None
    names: list[tuple[str, str]] = []
    archs: list[tuple[str, str]] = []
    if isinstance(metadata, dict):
        for key, value in list(metadata.items())[:64]:
            if not isinstance(key, str) or not isinstance(value, str) or key == "format":
                continue
            where = f"safetensors __metadata__.{key[:64]}"
            if "arch" in key.lower() or key.lower() in ("model_type", "modelspec.architecture"):
                archs.append((where, value[:256]))
            elif any(k in key.lower() for k in ("name", "model", "repo", "title", "author")):
                names.append((where, value[:256]))
    return ModelIdentity(path, "safetensors", tuple(names), tuple(archs), (), len(data))


def _hf_config(document: object, path: str, read: int, prefix: str) -> ModelIdentity | None:
    if not isinstance(document, dict):
        return None
    archs: list[tuple[str, str]] = []
    names: list[tuple[str, str]] = []
    model_type = document.get("model_type")
    architectures = document.get("architectures")
    if not isinstance(model_type, str) and not isinstance(architectures, list):
        return None  # not a transformers config
    if isinstance(model_type, str):
        archs.append((f"{prefix}model_type", model_type[:256]))
    if isinstance(architectures, list):
        archs += [
            (f"{prefix}architectures", a[:256]) for a in architectures[:8] if isinstance(a, str)
        ]
    name_or_path = document.get("_name_or_path")
    if isinstance(name_or_path, str) and name_or_path:
        names.append((f"{prefix}_name_or_path", name_or_path[:256]))
    return ModelIdentity(path, "hf-config", tuple(names), tuple(archs), (), read)


def _ollama_manifest(document: object, path: str, read: int) -> ModelIdentity | None:
    if not isinstance(document, dict):
        return None
    layers = document.get("layers")
    if not isinstance(layers, list):
        return None
    digests = []
    for layer in layers[:64]:
        if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_LAYER:
            digest = layer.get("digest")
            if (
                isinstance(digest, str)
                and digest.startswith("sha256:")
                and _HEX64.match(digest[7:])
            ):
                digests.append(digest)
    if not digests:
        return None
    parts = PurePosixPath(path).parts
    names: list[tuple[str, str]] = []
    archs: list[tuple[str, str]] = []
    if "manifests" in parts:
        at = len(parts) - 1 - parts[::-1].index("manifests")
        rest = parts[at + 1 :]
        if len(rest) >= 2:
            model = "/".join(rest[:-1])
            names.append(("Ollama manifest", f"{model}:{rest[-1]}"))
        # What the model blob says about itself: a copy (`ollama cp deepseek-r1 myr1`) names
        # the same blob, whatever the copy is called.
        store = os.path.join("/", *parts[:at]) if parts[0] == "/" else os.path.join(*parts[:at])
        for digest in digests[:2]:
            blob = os.path.join(store, "blobs", "sha256-" + digest[7:])
            opened = _open_regular(blob)
            if opened is None:
                continue
            fd, _st = opened
            try:
                magic = os.read(fd, 4)
                os.lseek(fd, 0, os.SEEK_SET)
                inner = _gguf(fd, blob) if magic == b"GGUF" else None
            except OSError:
                inner = None
            finally:
                os.close(fd)
            if inner is not None:
                label = f"model blob {digest[7:19]}…: "
                names += [(label + f, v) for f, v in inner.names]
                archs += [(label + f, v) for f, v in inner.architectures]
                read += inner.bytes_read
    return ModelIdentity(path, "ollama-manifest", tuple(names), tuple(archs), tuple(digests), read)


def identify(path: str) -> ModelIdentity | None:
    """The identity of the model file at ``path``, or None when it is not one."""
    opened = _open_regular(path)
    if opened is None:
        return None
    fd, st = opened
    try:
        try:
            head = os.read(fd, 16)
        except OSError:
            return None
        found: ModelIdentity | None = None
        if head[:4] == b"GGUF":
            os.lseek(fd, 0, os.SEEK_SET)
            found = _gguf(fd, path)
        elif len(head) >= 9 and head[8:9] == b"{":
            found = _safetensors(fd, path, head)
    except OSError:
        return None
    finally:
        os.close(fd)
    name = PurePosixPath(path).name
    if found is None and name == "config.json" and st.st_size <= MAX_JSON:
        loaded = _read_json(path)
        if loaded is not None:
            found = _hf_config(loaded[0], path, loaded[1], "config.json ")
    in_manifests = "manifests" in PurePosixPath(path).parts
    if found is None and in_manifests and st.st_size <= MAX_JSON and head[:1] == b"{":
        loaded = _read_json(path)
        if loaded is not None:
            found = _ollama_manifest(loaded[0], path, loaded[1])
    if found is None and name.lower().endswith(WEIGHT_SUFFIXES) and st.st_size >= 1024:
        found = ModelIdentity(path, "weights", bytes_read=16)
    if found is None and _store_context(path)[1]:
        found = ModelIdentity(path, "blob", bytes_read=16)  # judged by its digest only
    if found is None:
        return None
    return _with_context(found, path)


def _with_context(found: ModelIdentity, path: str) -> ModelIdentity | None:
    names, digests = _store_context(path)
    extra_archs: list[tuple[str, str]] = []
    if found.format in ("safetensors", "weights", "gguf", "blob"):
        # The config.json beside the weights (an HF snapshot, a folder given to vLLM).
        sibling = os.path.join(os.path.dirname(path), "config.json")
        loaded = _read_json(sibling) if os.path.basename(path) != "config.json" else None
        if loaded is not None:
            config = _hf_config(loaded[0], sibling, loaded[1], "config.json beside it: ")
            if config is not None:
                names += config.names
                extra_archs += config.architectures
    if found.format == "weights" and not (names or extra_archs or digests):
        return None  # weights that nothing describes: nothing to judge
    return ModelIdentity(
        found.path,
        found.format,
        tuple(dict.fromkeys((*found.names, *names))),
        tuple(dict.fromkeys((*found.architectures, *extra_archs))),
        tuple(dict.fromkeys((*found.digests, *digests))),
        found.bytes_read,
    )
