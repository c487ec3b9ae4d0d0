"""ProcessMatcher: names (comm, argv0, exe basename), paths, command lines, hashes, explanations."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proscribe.core.policy.matchers import ProcessFacts, ProcessMatcher
from proscribe.core.policy.matchers.process import glob_prefix_regex
from proscribe.core.policy.model import ProcessRule
from proscribe.core.policy.regex_safety import MAX_CMDLINE_MATCH_CHARS

DIGEST = "ab" * 32

DEEPSEEK = ProcessRule(
    id="deepseek-desktop",
    names=("deepseek*", "DeepSeek Harness*", "dsh"),
    paths=("/opt/deepseek/**",),
    cmdline=(r"(?i)\b(ollama|llama-server|lms)\b.*\bdeepseek",),
    sha256=(DIGEST,),
)


def facts(**kw: object) -> ProcessFacts:
    base: dict[str, object] = {"pid": 4242, "ppid": 1, "user": "alice", "uid": 1000}
    base.update(kw)
    return ProcessFacts(**base)  # type: ignore[arg-type]


def one(matcher: ProcessMatcher, f: ProcessFacts) -> tuple[str, str, str]:
    found = matcher.match(f)
    assert len(found) == 1, found
    return found[0].field, found[0].pattern, found[0].value


def test_name_glob_matches_comm_case_insensitively() -> None:
    m = ProcessMatcher([DEEPSEEK])
    assert one(m, facts(name="DeepSeek", exe="/usr/bin/other")) == (
        "name",
        "deepseek*",
        "DeepSeek",
    )
    hit = m.match(facts(name="deepseek", exe="/usr/bin/deepseek"))[0]
    assert hit.explanation == "name glob 'deepseek*' matched comm 'deepseek'"


def test_name_glob_matches_argv0_and_exe_basenames() -> None:
    m = ProcessMatcher([DEEPSEEK])
    assert one(m, facts(name="node", argv0="/home/a/bin/dsh", exe="/usr/bin/node")) == (
        "argv0",
        "dsh",
        "dsh",
    )
    assert one(m, facts(name="x", argv0="x", exe="/home/a/.local/DeepSeek Harness.exe")) == (
        "exe_name",
        "deepseek*",
        "DeepSeek Harness.exe",
    )
    # a Windows-style path still yields its basename
    assert one(m, facts(name="", exe="C:\\Users\\a\\DeepSeek Harness\\DeepSeek Harness.exe"))[
        0
    ] == ("exe_name")


def test_glob_is_anchored_not_substring() -> None:
    m = ProcessMatcher([DEEPSEEK])
    assert m.match(facts(name="mydsh", argv0="dshx", exe="/usr/bin/notdeepseek")) == []


def test_path_glob_double_star_crosses_directories_single_does_not() -> None:
    m = ProcessMatcher([DEEPSEEK, ProcessRule(id="one-level", paths=("/srv/*/run",))])
    assert one(m, facts(name="x", exe="/opt/deepseek/app/bin/x")) == (
        "path",
        "/opt/deepseek/**",
        "/opt/deepseek/app/bin/x",
    )
    assert one(m, facts(name="run", exe="/srv/a/run"))[0] == "path"
    assert m.match(facts(name="run", exe="/srv/a/b/run")) == []
    assert m.match(facts(name="x", exe="/OPT/deepseek/x")) == []  # paths are case-sensitive


def test_deleted_executable_is_still_matched_by_path_and_name() -> None:
    m = ProcessMatcher([DEEPSEEK])
    found = m.match(facts(name="x", exe="/opt/deepseek/x (deleted)"))
    assert found[0].value == "/opt/deepseek/x"
    assert one(m, facts(name="x", exe="/tmp/dsh (deleted)"))[:2] == ("exe_name", "dsh")


def test_cmdline_regex_searches_joined_command_line() -> None:
    m = ProcessMatcher([DEEPSEEK])
    f = facts(
        name="ollama", exe="/usr/local/bin/ollama", cmdline=("ollama", "run", "deepseek-r1:7b")
    )
    field, pattern, value = one(m, f)
    assert (field, pattern) == ("cmdline", DEEPSEEK.cmdline[0])
    assert value == "ollama run deepseek"
    assert m.match(facts(name="ollama", cmdline=("ollama", "run", "llama3"))) == []


def test_cmdline_beyond_the_window_is_not_searched() -> None:
    rule = ProcessRule(id="mid", cmdline=(r"needle-in-the-middle",))
    m = ProcessMatcher([rule])
    pad = "x" * MAX_CMDLINE_MATCH_CHARS
    assert m.match(facts(cmdline=("prog", "needle-in-the-middle"))) != []
    assert m.match(facts(cmdline=("prog", pad, "needle-in-the-middle", pad))) == []


def test_sha256_exact() -> None:
    m = ProcessMatcher([DEEPSEEK])
    assert m.needs_sha256
    found = m.match(facts(name="renamed", exe="/tmp/renamed", sha256=DIGEST.upper()))
    assert [(x.field, x.pattern) for x in found] == [("sha256", DIGEST)]
    assert "sha256" in found[0].explanation
    assert m.match(facts(name="renamed", exe="/tmp/renamed", sha256="cd" * 32)) == []
    assert not ProcessMatcher([ProcessRule(id="n", names=("x",))]).needs_sha256


def test_truncated_comm_matches_long_name_glob_when_full_name_is_unknown() -> None:
    m = ProcessMatcher([ProcessRule(id="harness", names=("DeepSeek Harness*",))])
    comm = "DeepSeek Harness"[:15]
    # an interpreted script: exe and argv0 are the interpreter, comm is the script's name
    found = m.match(facts(name=comm, argv0="python3", exe="/usr/bin/python3.11"))
    assert [(x.field, x.pattern, x.truncated_comm) for x in found] == [
        ("name", "DeepSeek Harness*", True)
    ]
    assert "cut to 15 characters" in found[0].explanation


def test_truncated_comm_not_used_when_exe_carries_the_full_name() -> None:
    rule = ProcessRule(id="long", names=("abcdefghijklmnop-tool",))
    m = ProcessMatcher([rule])
    comm = "abcdefghijklmno"  # a harmless 15-character program that is a prefix of a denied name
    assert m.match(facts(name=comm, argv0=comm, exe=f"/usr/bin/{comm}")) == []
    # its full name is the denied one: matched by the exe basename, not by the guess
    assert one(m, facts(name=comm, exe="/usr/bin/abcdefghijklmnop-tool"))[0] == "exe_name"
    # 14 characters cannot be truncated
    assert m.match(facts(name="abcdefghijklmn", exe="/usr/bin/python3")) == []


def test_one_match_per_rule_in_policy_order_and_bad_regex_rejected() -> None:
    rules = [
        ProcessRule(id="b", cmdline=(r"\bdeepseek\b",)),
        ProcessRule(id="a", names=("deepseek",)),
        ProcessRule(id="c", names=("ollama",)),
    ]
    m = ProcessMatcher(rules)
    found = m.match(facts(name="deepseek", cmdline=("deepseek", "--serve")))
    assert [x.rule_id for x in found] == ["b", "a"]
    with pytest.raises(ValueError):
        ProcessMatcher([ProcessRule(id="bad", cmdline=("(a+)+$",))])


def test_no_rules_no_matches() -> None:
    m = ProcessMatcher([])
    assert len(m) == 0
    assert m.match(facts(name="deepseek")) == []


_glob_chars = st.sampled_from([*"abcXY-. ", "*", "?", "[ab]", "[!a]"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_glob_chars, min_size=1, max_size=10).map("".join), st.text("abcxy-. ", max_size=8))
def test_prefix_regex_accepts_exactly_the_prefixes_of_matches(glob: str, text: str) -> None:
    """A string is accepted iff some completion of it matches the glob (checked by brute force)."""
    from proscribe.core.policy.globs import compile_glob

    full = compile_glob(glob, path=False, ignore_case=True)
    prefix = re.compile(glob_prefix_regex(glob), re.IGNORECASE)
    # completions up to the glob's length over a small alphabet cover every token
    alphabet = "abxy"
    completions = [""] + list(alphabet) + [a + b for a in alphabet for b in alphabet]
    brute = any(full.match(text + c) for c in completions)
    if brute:
        assert prefix.match(text), (glob, text)
    if not prefix.match(text):
        assert not brute


# -- property: the prefiltered matcher agrees with trying every pattern of every rule ----------

_name_glob = st.sampled_from(["deepseek*", "dsh", "*seek*", "ollama", "Kimi?", "[dk]*"])
_path_glob = st.sampled_from(["/opt/deepseek/**", "/usr/bin/*", "/srv/*/run", "**/kimi*"])
_cmd = st.sampled_from([r"\bdeepseek\b", r"(?i)ollama\s+run", r"--model[= ]\S*r1"])
_rule = st.builds(
    lambda i, n, p, c: ProcessRule(id=f"r{i}", names=tuple(n), paths=tuple(p), cmdline=tuple(c)),
    st.integers(0, 10_000),
    st.lists(_name_glob, max_size=2),
    st.lists(_path_glob, max_size=2),
    st.lists(_cmd, max_size=1),
)
_word = st.sampled_from(["deepseek", "dsh", "Kimi2", "ollama", "bash", "run", "--model=r1", "x"])
_exe = st.sampled_from(
    ["", "/opt/deepseek/bin/x", "/usr/bin/dsh", "/srv/a/run", "/home/u/kimi-cli", "/bin/sh"]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_rule, max_size=5, unique_by=lambda r: r.id),
    _word,
    _word,
    _exe,
    st.lists(_word, max_size=4),
)
def test_agrees_with_trying_every_pattern(
    rules: list[ProcessRule], comm: str, argv0: str, exe: str, args: list[str]
) -> None:
    from proscribe.core.policy.globs import compile_glob
    from proscribe.core.policy.regex_safety import cmdline_window

    f = facts(name=comm, argv0=argv0, exe=exe, cmdline=(argv0, *args))
    expected = []
    for rule in rules:
        values = [v for v in (comm, argv0.rsplit("/", 1)[-1], exe.rsplit("/", 1)[-1]) if v]
        if (
            any(
                compile_glob(g, path=False, ignore_case=True).match(v)
                for g in rule.names
                for v in values
            )
            or any(
                exe and compile_glob(g, path=True, ignore_case=False).match(exe) for g in rule.paths
            )
            or any(re.search(c, cmdline_window(f.cmdline)) for c in rule.cmdline)
        ):
            expected.append(rule.id)
    found = ProcessMatcher(rules).match(f)
    assert [m.rule_id for m in found] == expected
    by_id = {r.id: r for r in rules}
    for m in found:
        r = by_id[m.rule_id]
        assert m.pattern in (*r.names, *r.paths, *r.cmdline)
