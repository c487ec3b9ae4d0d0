"""Command-line regexes: unsafe shapes are refused, accepted ones finish fast on hostile input."""

from __future__ import annotations

import re
import time
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proscribe.core.policy.regex_safety import (
    MAX_CMDLINE_MATCH_CHARS,
    MAX_PATTERN_CHARS,
    cmdline_window,
    compile_cmdline_regex,
)

POLICIES = Path(__file__).resolve().parents[2] / "policies"

REALISTIC = [
    r"(?i)\b(ollama|llama-server|lms)\b.*\bdeepseek",
    r"(?i)ollama\s+(run|pull|serve)\s+deepseek",
    r"(?i)\bvllm\b.*deepseek-ai/",
    r"(?i)python3?\s+-m\s+vllm\b.*deepseek",
    r"(?i)--model[= ]\S*deepseek",
    r"(?i)models--deepseek-ai--\w+",
    r"(?i)\bdsh\b",
    r"(?i)(kimi|moonshot)-?(k2|v1)",
    r"\w+\b-",
    r"(?i)\w+\b-",
    r"\s+$",
    r"a.*b.{0,15}c",
    r"(?i)deepseek-(r1|v3|coder)(:\d+(\.\d+)?b)?",
    r"(?i)https?://[^/\s]*deepseek\.com",
    r"(?i)\bhf\s+download\s+deepseek-ai/\S+",
    r"(?i)lms\s+(load|get)\s+\S*deepseek",  # \s+ before \S: guarded by complement
    r"(?i)--model(=|\s+)\S*deepseek",
    r"(?i)python[0-9.]*\s.*deepseek",  # [0-9.]* before \s: guarded by a finite class
    r"\s+\S+\s+\S+x",
]

REDOS = {
    r"(a+)+$": "repeated group contains another repeat",
    r"(a*)*b": "repeated group contains another repeat",
    r"(\w+\s?)*$": "repeated group contains another repeat",
    r"^(([a-z])+.)+[A-Z]([a-z])+$": "repeated group contains another repeat",
    r"(a|aa)+": "contains alternatives",
    r"(.*a){12}": "repeated group contains another repeat",
    r"a.*b.*c": "more than one open-ended repeat",
    r"\s*.*\s*deepseek": "more than one open-ended repeat",
    r".*\s+x": "more than one open-ended repeat",  # 9 s on 2048 spaces in plain re
    r"(?i)ollama.*\s+deepseek": "more than one open-ended repeat",
    r"(?i)\bollama\b.*\b(run|pull)\b.*deepseek": "more than one open-ended repeat",
    r"\S+\S+x": "more than one open-ended repeat",
    r"(x)\1": "backreferences",
    r"(?P<a>x)(?P=a)": "backreferences",
    r"(?=deepseek)\w+": "lookahead and lookbehind",
    r"(?<!not)deepseek": "lookahead and lookbehind",
    r"(a)?(?(1)b|c)": "conditional groups",
    r".*": "match empty text",
    r"^$": "match empty text",
    r"deepseek|": "match empty text",
    r"[unclosed": "not a valid regular expression",
    "": "empty pattern",
    "a" * (MAX_PATTERN_CHARS + 1): "the limit is 512",
}


@pytest.mark.parametrize("pattern", sorted(REDOS))
def test_unsafe_patterns_are_refused_with_a_reason(pattern: str) -> None:
    with pytest.raises(ValueError, match=re.escape(REDOS[pattern])):
        compile_cmdline_regex(pattern)


def test_possessive_and_guarded_repeats_are_accepted() -> None:
    # \s+ before a literal it cannot match cannot backtrack; possessive never gives back.
    compile_cmdline_regex(r"ollama\s+run\s+deepseek.*")
    compile_cmdline_regex(r"(?i)\bollama\s++run\s++deepseek")


def _pack_patterns() -> list[str]:
    found = []
    for path in sorted(POLICIES.glob("*.toml")):
        doc = tomllib.loads(path.read_text("utf-8"))
        for rule in doc.get("process", []):
            found.extend(rule.get("cmdline", []))
    return found


def _hostile_inputs(pattern: str) -> list[str]:
    """Inputs that make backtracking work hard: long runs of the pattern's own pieces."""
    n = 4096  # longer than the window: the matcher searches cmdline_window(argv)
    words = re.findall(r"[A-Za-z0-9]{2,}", pattern) or ["a"]
    chars = [*sorted(set("".join(words))), " ", "-", "/", "\t", "é"]
    inputs = [c * n for c in chars]
    for word in words:
        inputs.append((word + " ") * (n // (len(word) + 1) + 1))
        inputs.append((word[:-1] + " ") * (n // len(word) + 1))
        inputs.append(word + " " * n)
        inputs.append(word + "x" * n)
    joined = " ".join(words)
    inputs.append((joined + " ") * (n // (len(joined) + 1) + 1))
    inputs.append((joined[:-1] + "-") * (n // len(joined) + 1))
    return [cmdline_window([text]) for text in inputs]


def test_realistic_pattern_set_compiles() -> None:
    for pattern in REALISTIC:
        compile_cmdline_regex(pattern)


def test_pack_patterns_exist_and_compile() -> None:
    patterns = _pack_patterns()
    assert patterns, "the policy packs should carry command-line rules"
    for pattern in patterns:
        compile_cmdline_regex(pattern)


@pytest.mark.parametrize("pattern", REALISTIC + _pack_patterns())
def test_accepted_patterns_are_fast_on_hostile_command_lines(pattern: str) -> None:
    compiled = compile_cmdline_regex(pattern)
    worst = 0.0
    for text in _hostile_inputs(pattern):
        assert len(text) <= MAX_CMDLINE_MATCH_CHARS
        best = float("inf")
        for _ in range(3):  # fastest of 3 in CPU time: the regex's cost, not the scheduler's
            start = time.thread_time()
            compiled.search(text)
            best = min(best, time.thread_time() - start)
        worst = max(worst, best)
    # The regex's real cost is the point (no clock to inject). Typically well under 50 ms of
    # CPU; 100 ms leaves room for a slower machine.
    assert worst < 0.100, f"{pattern!r} took {worst * 1000:.1f} ms"


def test_the_bound_is_what_makes_it_safe() -> None:
    # The same refused shape really is slow in plain `re`: the check is not theoretical.
    slow = re.compile(r"a.*b.*c")
    text = "ab" * 150
    start = time.thread_time()  # CPU time of this thread: the search's cost, not the wait
    slow.search(text)
    small = time.thread_time() - start
    start = time.thread_time()
    slow.search("ab" * 600)
    large = time.thread_time() - start
    assert large > small * 8  # cubic: 4x the input, ~64x the time


def test_cmdline_window_keeps_head_and_tail() -> None:
    argv = ["ollama", "run", "x" * 10_000, "deepseek-r1"]
    window = cmdline_window(argv)
    assert len(window) == MAX_CMDLINE_MATCH_CHARS
    assert window.startswith("ollama run ")
    assert window.endswith(" deepseek-r1")
    assert cmdline_window(["a", "b"]) == "a b"


PATTERN_ALPHABET = list("ab.*+?{}()[]|\\^$-,0123456789dsSwW:<=!P#i&~")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(PATTERN_ALPHABET), max_size=60))
def test_random_patterns_raise_only_value_error(pattern: str) -> None:
    try:
        compiled = compile_cmdline_regex(pattern)
    except ValueError as err:
        assert str(err) and "\n" not in str(err)
        return
    start = time.thread_time()
    for text in ("a" * MAX_CMDLINE_MATCH_CHARS, "ab" * (MAX_CMDLINE_MATCH_CHARS // 2), " " * 1024):
        compiled.search(text)
    # the regex's CPU cost is the point; a backtracking pattern takes seconds, not 0.2 s
    assert time.thread_time() - start < 0.2, pattern


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [
        ("(" * 200 + "a" + ")" * 200, ""),
        ("a{99999999999999}", "repeat count is too large"),
        ("[z-a]", "bad character range"),
        ("[[a]", "ambiguous regular expression: Possible nested set"),
        ("x[a&&b]", "ambiguous regular expression: Possible set intersection"),
    ],
)
def test_odd_patterns(pattern: str, needle: str) -> None:
    if not needle:
        compile_cmdline_regex(pattern)  # deep but harmless nesting is fine
        return
    with pytest.raises(ValueError, match=needle):
        compile_cmdline_regex(pattern)
