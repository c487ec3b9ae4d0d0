"""FileMatcher: ~ and $VAR expansion per user, skipped globs, escaping, matching."""

from __future__ import annotations

import glob as pyglob
from pathlib import Path

import pytest

from proscribe.core.policy.matchers import FileMatcher
from proscribe.core.policy.model import FileRule

WEIGHTS = FileRule(
    id="deepseek-weights",
    globs=(
        "~/.cache/huggingface/hub/models--deepseek-ai--*",
        "$HF_HOME/hub/models--deepseek-ai--*",
        "${OLLAMA_MODELS}/manifests/*/*/deepseek-*/*",
        "/usr/share/ollama/.ollama/models/manifests/**/deepseek-*/*",
    ),
)


def test_expand_per_user_and_skip_unset_variables() -> None:
    m = FileMatcher([WEIGHTS])
    patterns = m.expand("/home/alice", {"HF_HOME": "/data/hf/"})
    assert patterns == [
        "/home/alice/.cache/huggingface/hub/models--deepseek-ai--*",
        "/data/hf/hub/models--deepseek-ai--*",
        "/usr/share/ollama/.ollama/models/manifests/**/deepseek-*/*",
    ]
    skipped = [(e.glob, e.skipped) for e in m.expansions("/home/alice", {}) if e.pattern is None]
    assert skipped == [
        ("$HF_HOME/hub/models--deepseek-ai--*", "$HF_HOME is not set for this user"),
        ("${OLLAMA_MODELS}/manifests/*/*/deepseek-*/*", "$OLLAMA_MODELS is not set for this user"),
    ]


def test_empty_variable_and_missing_home_are_skipped_not_rooted() -> None:
    m = FileMatcher([WEIGHTS])
    assert "/hub/models--deepseek-ai--*" not in m.expand(None, {"HF_HOME": ""})
    reasons = {e.glob: e.skipped for e in m.expansions(None, {})}
    assert reasons[WEIGHTS.globs[0]] == "no home directory is known for this user"


def test_match_says_which_glob_and_expansion() -> None:
    m = FileMatcher([WEIGHTS])
    path = "/home/bob/.cache/huggingface/hub/models--deepseek-ai--DeepSeek-R1"
    hit = m.match(path, "/home/bob", {})
    assert hit is not None
    assert hit.rule_id == "deepseek-weights"
    assert hit.glob == WEIGHTS.globs[0]
    assert hit.explanation == (
        f"file glob {WEIGHTS.globs[0]!r} (here "
        "'/home/bob/.cache/huggingface/hub/models--deepseek-ai--*') matched " + repr(path)
    )
    # the same path is not bob's file for alice
    assert m.match(path, "/home/alice", {}) is None
    # "*" does not cross "/", "**" does
    assert m.match(path + "/snapshots", "/home/bob", {}) is None
    deep = "/usr/share/ollama/.ollama/models/manifests/registry.ollama.ai/library/deepseek-r1/7b"
    assert m.match(deep, None, {}) is not None


def test_variables_expanded_with_braces_and_home_fallback() -> None:
    m = FileMatcher([FileRule(id="r", globs=("$HOME/.lmstudio/models/*/*/*.gguf",))])
    assert m.expand("/home/c", {}) == ["/home/c/.lmstudio/models/*/*/*.gguf"]
    assert m.expand("/home/c", {"HOME": "/other"}) == ["/other/.lmstudio/models/*/*/*.gguf"]
    hit = m.match("/home/c/.lmstudio/models/p/m/x.gguf", "/home/c", {})
    assert hit is not None


def test_glob_characters_in_home_are_literal(tmp_path: Path) -> None:
    home = tmp_path / "we[ir]d*home"
    target = home / ".ollama" / "deepseek-r1"
    target.parent.mkdir(parents=True)
    target.write_text("x")
    decoy = tmp_path / "weid-home" / ".ollama" / "deepseek-r1"  # what an unescaped glob hits
    decoy.parent.mkdir(parents=True)
    decoy.write_text("x")
    m = FileMatcher([FileRule(id="r", globs=("~/.ollama/deepseek-*",))])
    (pattern,) = m.expand(str(home), {})
    assert pyglob.glob(pattern) == [str(target)]  # a scanner can use it as it is
    assert m.match(str(target), str(home), {}) is not None
    assert m.match(str(decoy), str(home), {}) is None


def test_relative_and_tilde_user_forms_are_skipped() -> None:
    m = FileMatcher([FileRule(id="r", globs=("$REL/x", "~bob/x"))])
    reasons = [e.skipped for e in m.expansions("/home/a", {"REL": "rel"})]
    assert reasons[0] == "expands to the relative path 'rel/x'"
    assert "~user" in reasons[1]
    assert m.expand("/home/a", {"REL": "rel"}) == []


def test_one_match_per_rule_and_cache_follows_environment() -> None:
    rules = [
        FileRule(id="a", globs=("$X/*.gguf", "/srv/*.gguf")),
        FileRule(id="b", globs=("/srv/**",)),
    ]
    m = FileMatcher(rules)
    assert [x.rule_id for x in m.match_all("/srv/m.gguf", None, {})] == ["a", "b"]
    assert m.match("/one/m.gguf", None, {"X": "/one"}) is not None
    assert m.match("/one/m.gguf", None, {"X": "/two"}) is None
    for i in range(100):  # more users than the cache holds: still right
        assert m.match(f"/u{i}/m.gguf", None, {"X": f"/u{i}"}) is not None


TREE = [
    ".cache/huggingface/hub/models--deepseek-ai--DeepSeek-R1/config.json",
    ".cache/huggingface/hub/models--deepseek-ai--V3/x",
    ".cache/huggingface/hub/models--unsloth--DeepSeek-R1-GGUF/x",
    ".ollama/models/manifests/registry.ollama.ai/library/deepseek-r1/7b",
    ".ollama/models/manifests/registry.ollama.ai/library/llama3/8b",
    ".lmstudio/models/bartowski/deepseek-coder/a.gguf",
    ".lmstudio/models/bartowski/qwen/b.gguf",
    "notes/.hidden-deepseek",
]


@pytest.mark.parametrize(
    "rule_glob",
    [
        "~/.cache/huggingface/hub/models--deepseek-ai--*",
        "~/.cache/huggingface/hub/models--*--*DeepSeek*",
        "~/.ollama/models/manifests/*/*/deepseek-*/*",
        "~/.lmstudio/models/*/*/*.gguf",
        "~/.lmstudio/models/?artowski/[dq]*/*.gguf",
        "~/notes/*deepseek",
        "$MODELS/manifests/*/library/[!l]*/*",
    ],
)
def test_expanded_patterns_find_what_the_matcher_matches(tmp_path: Path, rule_glob: str) -> None:
    """A scanner lists candidates with Python's glob on expand(); the matcher must agree."""
    home = tmp_path / "h[1]"
    for rel in TREE:
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text("x")
    env = {"MODELS": str(home / ".ollama" / "models")}
    m = FileMatcher([FileRule(id="r", globs=(rule_glob,))])
    (pattern,) = m.expand(str(home), env)
    found = set(pyglob.glob(pattern, include_hidden=True))
    every = {str(p) for p in home.rglob("*")}
    matched = {p for p in every if m.match(p, str(home), env) is not None}
    assert found == matched
    assert matched  # every pattern above matches something in the tree
