"""Model identity from content: GGUF written by llama.cpp's writer, safetensors headers, the
Hugging Face cache and the Ollama store as their tools lay them out; hostile and innocent files."""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proscribe.core.models.gguf import MAX_READ, read_gguf_header
from proscribe.core.models.identity import identify
from proscribe.core.models.stores import user_stores
from tests.support.models import (
    hf_cache_repo,
    ollama_store,
    write_gguf,
    write_gguf_bytes,
    write_safetensors,
)

R1 = {
    "arch": "qwen2",
    "name": "DeepSeek R1 Distill Qwen 7B",
    "basename": "DeepSeek-R1-Distill-Qwen",
    "organization": "Deepseek Ai",
    "base_models": (("Qwen2.5 Math 7B", "Qwen"),),
}


def test_gguf_fields_agree_with_llama_cpp_reader(tmp_path: Path) -> None:
    import gguf

    path = write_gguf(tmp_path / "model.gguf", tokens=30000, **R1)  # type: ignore[arg-type]
    with path.open("rb") as handle:
        ours = read_gguf_header(handle)
    assert ours is not None and ours.complete and not ours.problem
    theirs = gguf.GGUFReader(str(path))
    for key, fld in theirs.fields.items():
        if key.startswith("general.") and fld.types == [gguf.GGUFValueType.STRING]:
            assert ours.fields[key] == fld.contents(), key
    assert ours.text("general.architecture") == "qwen2"
    # the 30000-token vocabulary (hundreds of KB) is not read
    assert ours.bytes_read <= 16 * 1024 < path.stat().st_size


def test_renamed_gguf_is_identified_by_its_metadata(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "model.gguf", **R1)  # type: ignore[arg-type]
    found = identify(str(path))
    assert found is not None and found.format == "gguf"
    assert ("GGUF general.name", "DeepSeek R1 Distill Qwen 7B") in found.names
    assert ("GGUF general.architecture", "qwen2") in found.architectures
    assert "GGUF general.name = 'DeepSeek R1 Distill Qwen 7B'" in found.evidence()


def test_dataset_and_licence_names_are_not_the_models_names(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("Llama 3.1 8B Instruct")
    writer.add_dataset_count(1)
    writer.add_dataset_name(0, "deepseek-distilled-chats")
    writer.add_license_name("deepseek-license")
    writer.add_tensor("w", __import__("numpy").zeros(4, dtype="float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    found = identify(str(path))
    assert found is not None
    assert all("deepseek" not in v.lower() for _f, v in found.names)


def test_big_endian_gguf(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "be.gguf"
    writer = gguf.GGUFWriter(str(path), "deepseek2", endianess=gguf.GGUFEndian.BIG)
    writer.add_name("DeepSeek V2 Lite")
    writer.add_tensor("w", __import__("numpy").zeros(4, dtype="float32").byteswap())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    found = identify(str(path))
    assert found is not None
    assert ("GGUF general.architecture", "deepseek2") in found.architectures


@pytest.mark.parametrize(
    "tail",
    [
        struct.pack("<Q", 1 << 62),  # a key of 4 EiB
        struct.pack("<Q", 12) + b"general.name" + struct.pack("<I", 8) + struct.pack("<Q", 1 << 40),
        struct.pack("<Q", 12) + b"general.tags" + struct.pack("<IIQ", 9, 8, 1 << 60),
        struct.pack("<Q", 12) + b"general.name" + struct.pack("<I", 99),  # unknown type
        struct.pack("<Q", 12) + b"general.name" + struct.pack("<I", 8) + struct.pack("<Q", 100),
    ],
)
def test_hostile_gguf_headers_stop_cheaply(tail: bytes) -> None:
    data = b"GGUF" + struct.pack("<IQQ", 3, 1, 5) + tail
    header = read_gguf_header(io.BytesIO(data))
    assert header is not None and not header.complete
    assert header.bytes_read <= MAX_READ


def test_gguf_claiming_huge_counts_reads_nothing_more() -> None:
    handle = io.BytesIO(b"GGUF" + struct.pack("<IQQ", 3, 1, 1 << 40) + b"\0" * 1000)
    header = read_gguf_header(handle)
    assert header is not None and header.problem and header.fields == {}


def test_gguf_reader_never_reads_past_its_cap(tmp_path: Path) -> None:
    # a header of general.* strings longer than the cap: reading stops at MAX_READ
    pairs = b""
    for i in range(40):
        key = f"general.x{i}".encode()
        value = b"v" * 16000
        pairs += struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, len(value)) + value
    path = tmp_path / "long.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 40) + pairs)
    with path.open("rb") as handle:
        header = read_gguf_header(handle)
    assert header is not None and not header.complete and header.bytes_read <= MAX_READ


def test_safetensors_metadata_and_long_tensor_tables(tmp_path: Path) -> None:
    meta = {"format": "pt", "name": "DeepSeek-V3", "modelspec.architecture": "deepseek_v3"}
    short = write_safetensors(tmp_path / "a.safetensors", meta)
    long = write_safetensors(tmp_path / "b.safetensors", meta, tensors=5000)  # header > 64 KiB
    for path in (short, long):
        found = identify(str(path))
        assert found is not None and found.format == "safetensors"
        assert ("safetensors __metadata__.name", "DeepSeek-V3") in found.names
        assert found.bytes_read <= 64 * 1024 + 16


def test_hf_cache_snapshot_config_and_repo_name(tmp_path: Path) -> None:
    config = {
        "model_type": "deepseek_v3",
        "architectures": ["DeepseekV3ForCausalLM"],
        "_name_or_path": "deepseek-ai/DeepSeek-V3",
    }
    weights = tmp_path / "w.safetensors"
    write_safetensors(weights, {"format": "pt"})
    snapshot = hf_cache_repo(
        tmp_path / "hub",
        "SomeOrg/DEEPSEEK-Mirror",
        {"config.json": json.dumps(config).encode(), "model.safetensors": weights.read_bytes()},
    )
    found = identify(str(snapshot / "model.safetensors"))
    assert found is not None
    assert ("Hugging Face cache repository", "SomeOrg/DEEPSEEK-Mirror") in found.names
    assert ("config.json beside it: model_type", "deepseek_v3") in found.architectures
    blob = (snapshot / "model.safetensors").resolve()  # blobs/<sha256 of the file>
    assert identify(str(snapshot / "config.json")) is not None
    by_blob = identify(str(blob))
    assert by_blob is not None and by_blob.digests
    assert ("Hugging Face cache repository", "SomeOrg/DEEPSEEK-Mirror") in by_blob.names


def test_ollama_manifest_and_blob(tmp_path: Path) -> None:
    blob_bytes = write_gguf_bytes(tmp_path / "src.gguf", **R1)  # type: ignore[arg-type]
    manifest, blob = ollama_store(tmp_path / "models", "myr1", "latest", blob_bytes)
    found = identify(str(manifest))
    assert found is not None and found.format == "ollama-manifest"
    assert ("Ollama manifest", "registry.ollama.ai/library/myr1:latest") in found.names
    digest = "sha256:" + blob.name[len("sha256-") :]
    assert found.digests == (digest,)
    by_blob = identify(str(blob))
    assert by_blob is not None and by_blob.digests == (digest,)
    assert ("GGUF general.name", "DeepSeek R1 Distill Qwen 7B") in by_blob.names
    # the copy's manifest (ollama cp) says what its blob says
    label = f"model blob {digest[7:19]}…: GGUF general.name"
    assert (label, "DeepSeek R1 Distill Qwen 7B") in found.names


def test_vllm_folder_with_config_and_bin_weights(tmp_path: Path) -> None:
    folder = tmp_path / "srv" / "r1-distill-qwen-7b"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps(
            {"model_type": "qwen2", "_name_or_path": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"}
        )
    )
    (folder / "pytorch_model.bin").write_bytes(b"PK\3\4" + b"\0" * 4096)
    found = identify(str(folder / "pytorch_model.bin"))
    assert found is not None and found.format == "weights"
    assert any("DeepSeek-R1-Distill" in v for _f, v in found.names)


def test_innocent_files_are_not_models(tmp_path: Path) -> None:
    notes = tmp_path / "deepseek-notes.md"
    notes.write_text("# DeepSeek R1 notes\nGGUF general.name = DeepSeek\n")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"name": "deepseek", "theme": "dark"}))
    binary = tmp_path / "deepseek.bin"
    binary.write_bytes(os.urandom(4096))
    json_like = tmp_path / "data.safetensors"
    json_like.write_bytes(b"\xff" * 8 + b"{}")
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    link = tmp_path / "zero.gguf"
    link.symlink_to("/dev/zero")
    for path in (notes, config, binary, json_like, fifo, link, tmp_path / "missing.gguf"):
        assert identify(str(path)) is None, path


def test_user_stores_follow_the_users_environment() -> None:
    stores = dict(user_stores("/home/ann", {"HF_HOME": "/data/hf", "OLLAMA_MODELS": "/big/ol"}))
    assert "/data/hf" in stores and "/big/ol" in stores
    assert "/home/ann/.cache/huggingface" not in stores
    assert "/home/ann/.lmstudio" in stores
    default = dict(user_stores("/home/bo/", {}))
    assert "/home/bo/.ollama/models" in default and "/home/bo/.cache/huggingface" in default


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096), st.sampled_from([b"", b"GGUF\x03\x00\x00\x00", b"{"]))
def test_any_bytes_are_read_without_an_exception(tail: bytes, head: bytes) -> None:
    header = read_gguf_header(io.BytesIO(head + tail))
    assert header is None or header.bytes_read <= MAX_READ


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=8, max_size=2048))
def test_any_file_is_identified_or_not_without_an_exception(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for name in ("x.safetensors", "config.json", "x.gguf"):
            path = Path(folder) / name
            path.write_bytes(struct.pack("<Q", len(data)) + data if name[0] == "x" else data)
            identify(str(path))
        manifests = Path(folder) / "manifests" / "r" / "l" / "m"
        manifests.mkdir(parents=True)
        (manifests / "t").write_bytes(b"{" + data)
        identify(str(manifests / "t"))
