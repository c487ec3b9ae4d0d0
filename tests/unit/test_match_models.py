"""``[[model]]`` rules: lint, matching by content, the packs, the look-alikes left alone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from proscribe.core.errors import PolicyError
from proscribe.core.models.identity import ModelIdentity, identify
from proscribe.core.policy.loader import lint_policy, load_policy, load_policy_file
from proscribe.core.policy.matchers import CompiledPolicy
from tests.support.models import hf_cache_repo, ollama_store, write_gguf, write_gguf_bytes

NOW = datetime(2027, 1, 1, tzinfo=UTC)
HEAD = b"""[meta]
schema = 1
id = "t"
serial = 1
issued = 2026-01-01T00:00:00Z
title = "t"
"""
PACKS = Path(__file__).resolve().parents[2] / "policies"


def _policy(body: str) -> CompiledPolicy:
    return CompiledPolicy.compile(load_policy(HEAD + body.encode()))


def _issues(body: str) -> list[str]:
    return [f"{i.line}: {i.message} | {i.fix}" for i in lint_policy(HEAD + body.encode())]


def test_lint_accepts_quarantine_and_rejects_bad_model_rules() -> None:
    ok = _policy('[[model]]\nid = "m"\nfamilies = ["DeepSeek"]\naction = "quarantine"\n')
    rule = ok.policy.model[0]
    assert rule.action == "quarantine" and rule.families == ("deepseek",)
    issues = _issues(
        '[[model]]\nid = "a"\naction = "kill"\nfamilies = ["x"]\n'
        '[[model]]\nid = "b"\ndigests = ["sha256:12"]\n'
        '[[model]]\nid = "c"\n'
        '[[model]]\nid = "d"\nfamily = ["deepseek"]\n'
        '[[process]]\nid = "p"\nnames = ["x"]\naction = "quarantine"\n'
    )
    text = "\n".join(issues)
    assert "action 'kill' is not one of report, block, quarantine" in text
    assert "family 'x' has fewer than 3 letters" in text
    assert "'sha256:12' is not sha256:<64 hex>" in text
    assert "[[model]] 'c': rule has no criteria" in text
    assert "unknown key" in text and "family" in text
    assert "action 'quarantine' is not one of report, block" in text  # processes cannot


def _gguf(tmp_path: Path, filename: str, **kw: object) -> ModelIdentity:
    found = identify(str(write_gguf(tmp_path / filename, **kw)))  # type: ignore[arg-type]
    assert found is not None
    return found


@pytest.mark.parametrize(
    "pack", ["us-navy-deepseek-2025.toml", "government-restricted-ai-2025.toml"]
)
def test_packs_find_deepseek_however_it_is_named(tmp_path: Path, pack: str) -> None:
    compiled = CompiledPolicy.compile(load_policy_file(PACKS / pack))
    denied = [
        _gguf(tmp_path, "a", arch="qwen2", name="DeepSeek R1 Distill Qwen 7B"),
        _gguf(tmp_path, "b", arch="llama", basename="DeepSeek-R1-Distill-Llama"),
        _gguf(tmp_path, "c", arch="deepseek2"),  # no name at all
        _gguf(tmp_path, "d", arch="llama", base_models=(("DeepSeek R1", "deepseek-ai"),)),
    ]
    snapshot = hf_cache_repo(
        tmp_path / "hub", "SOMEONE/DEEPSEEK-R1-GGUF", {"x.gguf": write_gguf_bytes(tmp_path / "s")}
    )
    denied.append(identify(str(snapshot / "x.gguf")))  # type: ignore[arg-type]
    manifest, _blob = ollama_store(
        tmp_path / "ollama", "deepseek-r1", "7b", write_gguf_bytes(tmp_path / "o")
    )
    denied.append(identify(str(manifest)))  # type: ignore[arg-type]
    # `ollama cp` of a DeepSeek model under a bland name: its blob says what it is
    copy, _ = ollama_store(
        tmp_path / "ollama", "myr1", "latest", write_gguf_bytes(tmp_path / "c", name="DeepSeek R1")
    )
    denied.append(identify(str(copy)))  # type: ignore[arg-type]
    for identity in denied:
        decision = compiled.check_model(identity, "h", "ann", NOW)
        assert decision is not None and decision.rule_id == "deepseek-models", identity
        assert decision.action == "block" and decision.kind == "model"
        assert "deepseek" in decision.value.lower()


def test_look_alikes_are_left_alone(tmp_path: Path) -> None:
    compiled = CompiledPolicy.compile(load_policy_file(PACKS / "us-navy-deepseek-2025.toml"))
    innocent = [
        _gguf(tmp_path, "deepseek-r1.gguf", arch="llama", name="Llama 3.1 8B Instruct"),
        _gguf(tmp_path, "DeepSeek.gguf", arch="llama", name="Mistral 7B Instruct v0.3"),
        _gguf(tmp_path, "n", arch="qwen2", name="Qwen2.5 7B Instruct"),
    ]
    manifest, _blob = ollama_store(
        tmp_path / "ollama", "llama3.2", "latest", write_gguf_bytes(tmp_path / "o", name="Llama")
    )
    innocent.append(identify(str(manifest)))  # type: ignore[arg-type]
    for identity in innocent:
        assert compiled.check_model(identity, "h", "ann", NOW) is None, identity


def test_an_ollama_copy_is_caught_by_its_blob_digest(tmp_path: Path) -> None:
    _original, blob = ollama_store(tmp_path / "m", "deepseek-r1", "7b", b"GGUF" + b"\0" * 100)
    digest = "sha256:" + blob.name.removeprefix("sha256-")
    compiled = _policy(f'[[model]]\nid = "r1-blob"\ndigests = ["{digest.upper()[7:]}"]\n')
    copy, _ = ollama_store(tmp_path / "m", "myr1", "latest", b"GGUF" + b"\0" * 100)
    for path in (copy, blob):
        identity = ModelIdentity(str(path), "x", digests=(digest,))
        found = identify(str(path))
        assert found is not None and digest in found.digests
        decision = compiled.check_model(identity, "h", None, NOW)
        assert decision is not None and decision.field == "blob"


def test_names_globs_architectures_and_exemptions() -> None:
    compiled = _policy(
        '[[meta.reference]]\nid = "r"\ntitle = "r"\n'
        '[[model]]\nid = "glob"\nnames = ["*r1-distill*"]\n'
        '[[model]]\nid = "arch"\narchitectures = ["DeepSeek2"]\n'
        '[[exemption]]\nid = "lab"\nrules = ["arch"]\nusers = ["researcher"]\n'
    )
    named = ModelIdentity("/x", "gguf", names=(("GGUF general.name", "Acme R1-Distill 8B"),))
    assert compiled.check_model(named, "h", None, NOW).rule_id == "glob"  # type: ignore[union-attr]
    other = ModelIdentity("/x", "gguf", names=(("GGUF general.name", "R1 distill"),))
    assert compiled.check_model(other, "h", None, NOW) is None  # the glob needs the hyphen
    arch = ModelIdentity("/x", "gguf", architectures=(("GGUF general.architecture", "deepseek2"),))
    assert compiled.check_model(arch, "h", "ann", NOW).exempted_by is None  # type: ignore[union-attr]
    assert compiled.check_model(arch, "h", "researcher", NOW).exempted_by == "lab"  # type: ignore[union-attr]


def test_a_model_rule_needs_a_valid_policy() -> None:
    with pytest.raises(PolicyError):
        load_policy(HEAD + b'[[model]]\nid = "m"\nnames = ["[z-a]"]\n')
