"""Real model files for tests and benchmarks, laid out as the runtimes lay them out.

GGUF files are written by llama.cpp's own writer (the ``gguf`` package), so the agent's reader is
checked against the format's reference implementation; safetensors headers are written as the
format defines them (8-byte little-endian length, JSON with ``__metadata__`` first); the Hugging
Face cache as ``huggingface_hub`` lays it out (``models--org--name/{blobs,refs,snapshots}`` with
relative blob symlinks); an Ollama store as Ollama does (``manifests/registry.ollama.ai/…`` and
``blobs/sha256-…``).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np


def write_gguf(
    path: Path,
    *,
    arch: str = "llama",
    name: str | None = None,
    basename: str | None = None,
    organization: str | None = None,
    base_models: tuple[tuple[str, str], ...] = (),  # (name, organization)
    tokens: int = 0,  # a vocabulary after general.* (the reader must stop before it)
    tensor_bytes: int = 64,
) -> Path:
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    if name is not None:
        writer.add_name(name)
    if basename is not None:
        writer.add_basename(basename)
    if organization is not None:
        writer.add_organization(organization)
    if base_models:
        writer.add_base_model_count(len(base_models))
        for i, (bname, borg) in enumerate(base_models):
            writer.add_base_model_name(i, bname)
            writer.add_base_model_organization(i, borg)
    writer.add_context_length(4096)
    if tokens:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list([f"tok{i}" for i in range(tokens)])
    writer.add_tensor("w", np.zeros(max(1, tensor_bytes // 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_safetensors(path: Path, metadata: dict[str, str] | None, *, tensors: int = 2) -> Path:
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for i in range(tensors):
        header[f"layer.{i}.weight"] = {
            "dtype": "F32",
            "shape": [2, 2],
            "data_offsets": [offset, offset + 16],
        }
        offset += 16
    body = json.dumps(header, separators=(",", ":")).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * offset)
    return path


def hf_cache_repo(
    hub: Path, repo_id: str, files: dict[str, bytes], *, revision: str = "a" * 40
) -> Path:
    """``hub/models--org--name`` as huggingface_hub writes it; returns the snapshot folder."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        blob = repo / "blobs" / digest
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def ollama_store(models: Path, name: str, tag: str, model_blob: bytes) -> tuple[Path, Path]:
    """An Ollama store holding ``name:tag``; returns (manifest, model blob)."""
    digest = hashlib.sha256(model_blob).hexdigest()
    blobs = models / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    blob = blobs / f"sha256-{digest}"
    blob.write_bytes(model_blob)
    config = json.dumps({"model_format": "gguf", "model_family": "qwen2"}).encode()
    config_digest = hashlib.sha256(config).hexdigest()
    (blobs / f"sha256-{config_digest}").write_bytes(config)
    namespace = "library" if "/" not in name else ""
    manifest_dir = models / "manifests" / "registry.ollama.ai"
    manifest_dir = manifest_dir / namespace / name if namespace else manifest_dir / name
    manifest_dir.mkdir(parents=True, exist_ok=True)
    manifest = manifest_dir / tag
    manifest.write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "digest": f"sha256:{config_digest}",
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.ollama.image.model",
                        "digest": f"sha256:{digest}",
                        "size": len(model_blob),
                    }
                ],
            }
        )
    )
    return manifest, blob


def write_gguf_bytes(scratch: Path, **fields: object) -> bytes:
    """The bytes of a GGUF file written by :func:`write_gguf` (for a content-addressed store)."""
    path = write_gguf(scratch, **fields)  # type: ignore[arg-type]
    data = path.read_bytes()
    path.unlink()
    return data
