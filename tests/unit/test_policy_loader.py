"""The policy loader: every lint check, with the line it points at, and valid round-trips."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proscribe.core.errors import LintIssue, PolicyError
from proscribe.core.policy.loader import lint_policy, load_policy, load_policy_file
from proscribe.core.policy.model import MAX_POLICY_BYTES

META = """\
[meta]
schema  = 1
id      = "test-policy"
serial  = 3
issued  = 2025-01-24T00:00:00Z
expires = 2025-03-01T00:00:00Z
title   = "Test policy"

[[meta.reference]]
id        = "opnav-2025-01-24"
title     = "OPNAV email of 2025-01-24"
authority = "US Navy"
issued    = 2025-01-24
# (rules follow)
"""  # 14 lines

VALID = (
    META
    + """
[defaults]
action   = "block"
severity = "critical"

[[process]]
id         = "deepseek-desktop"
names      = ["deepseek*", "DeepSeek Harness*", "dsh"]
paths      = ["/opt/deepseek/**"]
cmdline    = ['(?i)\\b(ollama|llama-server|lms)\\b.*\\bdeepseek']
sha256     = ["ABCDEF0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789"]
directives = ["opnav-2025-01-24"]
kill_children = true
message    = "DeepSeek is prohibited."

[[domain]]
id       = "deepseek-web"
names    = ["DeepSeek.com.", "=api.example.org", "bücher.example"]
severity = "high"
action   = "report"

[[file]]
id    = "deepseek-weights"
globs = ["~/.cache/huggingface/hub/models--deepseek-ai--*"]

[[exemption]]
id      = "lab-eval"
rules   = ["deepseek-web"]
hosts   = ["ai-lab-*"]
users   = ["alice"]
expires = 2025-02-15T12:00:00+01:00
reason  = "Red-team evaluation"

[[exemption]]
id    = "break-glass"
rules = ["*"]
hosts = ["soc-01"]
"""
)


def lint(text: str) -> list[LintIssue]:
    return lint_policy(text.encode("utf-8"), "p.toml")


def only(text: str) -> LintIssue:
    issues = lint(text)
    assert len(issues) == 1, "\n".join(map(str, issues))
    return issues[0]


def with_rule(body: str) -> str:
    """META (14 lines) + blank line 15 + body starting at line 16."""
    return META + "\n" + body


def test_valid_policy_loads_with_defaults_and_normalization() -> None:
    data = VALID.encode()
    policy = load_policy(data, "p.toml")
    assert policy.sha256 == hashlib.sha256(data).hexdigest()
    assert policy.source == "p.toml"
    assert policy.meta.id == "test-policy" and policy.meta.serial == 3
    assert policy.meta.issued == datetime(2025, 1, 24, tzinfo=UTC)
    assert policy.meta.references[0].issued == "2025-01-24"
    assert policy.meta.references[0].authority == "US Navy"
    proc = policy.process[0]
    assert proc.action == "block" and proc.severity == "critical"  # from [defaults]
    assert proc.sha256 == ("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789",)
    assert proc.kill_children is True
    assert proc.directives == ("opnav-2025-01-24",)
    assert proc.line == 20
    dom = policy.domain[0]
    assert dom.names == ("deepseek.com", "=api.example.org", "xn--bcher-kva.example")
    assert dom.action == "report" and dom.severity == "high"
    assert policy.file[0].action == "report"
    assert policy.file[0].severity == "critical"
    lab, glass = policy.exemptions
    assert lab.expires == datetime(2025, 2, 15, 11, 0, tzinfo=UTC)
    assert lab.line == 40
    assert glass.rules == ("*",) and glass.users == () and glass.expires is None
    assert policy.rule("deepseek-web") is dom


def test_defaults_when_no_defaults_table() -> None:
    policy = load_policy(with_rule('[[domain]]\nid = "d"\nnames = ["x.example"]\n').encode())
    assert policy.domain[0].action == "report"
    assert policy.domain[0].severity == "high"
    assert policy.meta.references[0].id == "opnav-2025-01-24"


def test_load_policy_raises_with_every_issue() -> None:
    text = with_rule('[[domain]]\nid = "d"\nnames = ["x..example"]\nactoin = "block"\n')
    with pytest.raises(PolicyError) as info:
        load_policy(text.encode(), "p.toml")
    lines = sorted(i.line or 0 for i in info.value.issues)
    assert lines == [18, 19]
    assert "(+1 more)" in str(info.value)


def test_unknown_key_suggests_the_right_one() -> None:
    issue = only(with_rule('[[process]]\nid = "p"\nnmaes = ["x"]\nnames = ["y"]\n'))
    assert issue.line == 18
    assert "unknown key 'nmaes'" in issue.message
    assert "did you mean 'names'" in issue.fix
    assert str(issue).startswith("p.toml:18: [[process]] 'p': unknown key")


def test_unknown_top_level_table() -> None:
    issue = only(with_rule('[[proces]]\nid = "p"\n'))
    assert "unknown key 'proces'" in issue.message and "process" in issue.fix


def test_unknown_meta_key_and_reference_key() -> None:
    text = META.replace('title   = "Test policy"', 'title   = "T"\ntilte = "x"')
    text = text.replace('authority = "US Navy"', 'authorty = "US Navy"')
    issues = lint(text)
    assert [(i.line, "unknown key" in i.message) for i in issues] == [(8, True), (13, True)]


@pytest.mark.parametrize(
    ("old", "new", "line", "needle"),
    [
        ("schema  = 1", "schema  = 2", 2, "schema 2 is not supported"),
        ("schema  = 1", 'schema  = "1"', 2, "must be an integer"),
        ("serial  = 3", "serial  = 0", 4, "positive integer"),
        ("serial  = 3", "serial  = true", 4, "must be an integer"),
        ("issued  = 2025-01-24T00:00:00Z", "issued  = 2025-01-24T00:00:00", 5, "no time zone"),
        ("issued  = 2025-01-24T00:00:00Z", "issued  = 2025-01-24", 5, "without a time and zone"),
        ("issued  = 2025-01-24T00:00:00Z", 'issued  = "2025-01-24"', 5, "date-time with a zone"),
        ("expires = 2025-03-01T00:00:00Z", "expires = 2025-01-01T00:00:00Z", 6, "not after"),
        (
            "issued  = 2025-01-24T00:00:00Z",
            "issued  = 0001-01-01T00:00:00+01:00",
            5,
            "out of range",
        ),
        ('id      = "test-policy"', 'id      = "has space"', 3, "not a valid id"),
        ('title   = "Test policy"', 'title   = ""', 7, "'title' is empty"),
    ],
)
def test_meta_checks(old: str, new: str, line: int, needle: str) -> None:
    issue = only(META.replace(old, new))
    assert issue.line == line, issue
    assert needle in issue.message, issue


def test_missing_zone_fix_says_add_z() -> None:
    issue = only(META.replace("2025-01-24T00:00:00Z", "2025-01-24T00:00:00"))
    assert "add a zone, e.g. Z" in issue.fix


def test_missing_meta_and_required_keys() -> None:
    assert "missing required key 'meta'" in only('[[domain]]\nid = "d"\nnames = ["a.b"]\n').message
    issue = only(META.replace("serial  = 3\n", ""))
    assert issue.line == 1 and "missing required key 'serial'" in issue.message


def test_meta_written_as_array_is_refused() -> None:
    issue = only(META.replace("[meta]", "[[meta]]"))
    assert "must be a table" in issue.message


def test_process_written_as_plain_table_is_refused() -> None:
    issue = only(with_rule('[process]\nid = "p"\nnames = ["x"]\n'))
    assert "array of tables" in issue.message and "[[process]]" in issue.fix


def test_reference_needs_id_and_title() -> None:
    issue = only(META.replace('id        = "opnav-2025-01-24"\n', ""))
    assert issue.line == 9 and "missing required key 'id'" in issue.message
    issue = only(META + '\n[[meta.reference]]\nid = "opnav-2025-01-24"\ntitle = "again"\n')
    assert issue.line == 17 and "duplicate reference id" in issue.message


def test_reference_url_must_be_http() -> None:
    issue = only(META.replace('authority = "US Navy"', 'url = "ftp://x"'))
    assert issue.line == 12 and "not an http(s) address" in issue.message


def test_unknown_directive() -> None:
    issue = only(with_rule('[[domain]]\nid = "d"\nnames = ["a.example"]\ndirectives = ["nasa"]\n'))
    assert issue.line == 19
    assert "'nasa' is not a [[meta.reference]] id" in issue.message
    assert "opnav-2025-01-24" in issue.fix


def test_duplicate_rule_ids_across_kinds() -> None:
    text = with_rule(
        '[[process]]\nid = "x"\nnames = ["a"]\n\n[[domain]]\nid = "x"\nnames = ["a.example"]\n'
    )
    issue = only(text)
    assert issue.line == 21 and "duplicate rule id 'x'" in issue.message


def test_duplicate_exemption_ids() -> None:
    text = with_rule(
        '[[domain]]\nid = "d"\nnames = ["a.example"]\n'
        '[[exemption]]\nid = "e"\nrules = ["d"]\n[[exemption]]\nid = "e"\nrules = ["d"]\n'
    )
    issue = only(text)
    assert issue.line == 23 and "duplicate exemption id" in issue.message


def test_bad_glob_in_names_paths_and_files() -> None:
    text = with_rule(
        '[[process]]\nid = "p"\nnames = ["[abc"]\npaths = ["/opt/[z"]\n\n'
        '[[file]]\nid = "f"\nglobs = ["~/[x"]\n'
    )
    issues = lint(text)
    assert [(i.line, "bad glob" in i.message) for i in issues] == [
        (18, True),
        (19, True),
        (23, True),
    ]


def test_glob_class_with_regex_set_operators_is_literal_and_bad_range_is_an_error() -> None:
    assert lint(with_rule('[[file]]\nid = "f"\nglobs = ["/x/[a&&b]"]\n')) == []
    issue = only(with_rule('[[file]]\nid = "f"\nglobs = ["/x/[a--b]"]\n'))
    assert issue.line == 18 and "bad character range" in issue.message


def test_bad_and_unsafe_regexes() -> None:
    text = with_rule("[[process]]\nid = \"p\"\ncmdline = ['(unclosed', '(a+)+$', 'ok-deepseek']\n")
    issues = lint(text)
    assert [i.line for i in issues] == [18, 18]
    assert "not a valid regular expression" in issues[0].message
    assert "exponential" in issues[1].message


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("a..example", "empty label"),
        ("*.deepseek.com", "wildcards are not used"),
        ("com", "whole top-level domain"),
        ("-bad.example", "must be 1-63"),
        ("=", "empty domain name"),
    ],
)
def test_bad_domain_names(name: str, needle: str) -> None:
    issue = only(with_rule(f'[[domain]]\nid = "d"\nnames = ["ok.example", "{name}"]\n'))
    assert issue.line == 18 and needle in issue.message


def test_notdeepseek_and_exact_entries_are_kept_apart() -> None:
    text = with_rule('[[domain]]\nid = "d"\nnames = ["=Chat.DeepSeek.com", "notdeepseek.com"]\n')
    policy = load_policy(text.encode())
    assert policy.domain[0].names == ("=chat.deepseek.com", "notdeepseek.com")


def test_sha256_must_be_64_hex() -> None:
    issue = only(with_rule('[[process]]\nid = "p"\nsha256 = ["xyz", "' + "a" * 64 + '"]\n'))
    assert issue.line == 18 and "64 hex" in issue.message


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        ('[[process]]\nid = "p"\nsha256 = []\n', 16, "rule has no criteria"),
        ('[[process]]\nid = "p"\nmessage = "x"\n', 16, "rule has no criteria"),
        ('[[domain]]\nid = "d"\nnames = []\n', 18, "rule has no domain names"),
        ('[[domain]]\nid = "d"\n', 16, "missing required key 'names'"),
        ('[[file]]\nid = "f"\nglobs = []\n', 18, "rule has no globs"),
        ('[[file]]\nglobs = ["/x"]\n', 16, "missing required key 'id'"),
    ],
)
def test_rules_without_criteria(body: str, line: int, needle: str) -> None:
    issue = only(with_rule(body))
    assert issue.line == line and needle in issue.message


def test_action_and_severity_values() -> None:
    text = with_rule('[[domain]]\nid = "d"\nnames = ["a.example"]\naction = "kill"\nseverity = 3\n')
    issues = lint(text)
    assert [i.line for i in issues] == [19, 20]
    assert "not one of report, block" in issues[0].message
    assert "must be a string" in issues[1].message


def test_defaults_are_checked() -> None:
    issue = only(with_rule('[defaults]\nseverity = "extreme"\n'))
    assert issue.line == 17 and "not one of low, medium, high, critical" in issue.message


def test_file_rule_cannot_block() -> None:
    issue = only(with_rule('[[file]]\nid = "f"\nglobs = ["/x/*"]\naction = "block"\n'))
    assert issue.line == 19
    assert "file rules report only; blocking files is not built" in issue.message
    # A "block" default does not apply to file rules: they report.
    policy = load_policy(
        with_rule('[defaults]\naction = "block"\n[[file]]\nid = "f"\nglobs = ["/x"]\n').encode()
    )
    assert policy.file[0].action == "report"


def test_kill_children_must_be_bool() -> None:
    issue = only(with_rule('[[process]]\nid = "p"\nnames = ["x"]\nkill_children = "yes"\n'))
    assert issue.line == 19 and "true or false" in issue.message


def test_exemption_checks() -> None:
    text = with_rule(
        '[[domain]]\nid = "deepseek-web"\nnames = ["a.example"]\n\n'
        '[[exemption]]\nid = "e"\nrules = ["deepseek-wbe"]\n'
        "expires = 2025-02-15T00:00:00\nhosts = []\nusers = []\n"
    )
    issues = lint(text)
    assert [i.line for i in issues] == [22, 23, 24, 25]
    assert "unknown rule 'deepseek-wbe'" in issues[0].message
    assert "did you mean 'deepseek-web'" in issues[0].fix
    assert "no time zone" in issues[1].message and "add a zone, e.g. Z" in issues[1].fix
    assert "'hosts' is an empty list" in issues[2].message
    assert "'users' is an empty list" in issues[3].message


def test_exemption_needs_rules() -> None:
    issue = only(with_rule('[[exemption]]\nid = "e"\nrules = []\n'))
    assert issue.line == 18 and "empty list" in issue.message
    issue = only(with_rule('[[exemption]]\nid = "e"\n'))
    assert issue.line == 16 and "missing required key 'rules'" in issue.message


def test_wrong_types_in_lists() -> None:
    issue = only(with_rule('[[domain]]\nid = "d"\nnames = "a.example"\n'))
    assert issue.line == 18 and "list of strings" in issue.message
    issue = only(with_rule('[[domain]]\nid = "d"\nnames = ["a.example", 3]\n'))
    assert "list of strings" in issue.message


def test_toml_syntax_error_has_its_line() -> None:
    issue = only(META + "oops = = 1\n")
    assert issue.line == 15 and issue.message.startswith("not valid TOML")
    issue = only(META + '[meta]\nid = "dup"\n')
    assert issue.line == 15 and "not valid TOML" in issue.message


def test_duplicate_key_is_refused() -> None:
    issue = only(META.replace("serial  = 3", "serial  = 3\nserial = 4"))
    assert issue.line == 5 and "not valid TOML" in issue.message


def test_bom_nul_utf8_and_size() -> None:
    data = VALID.encode()
    [bom] = lint_policy(b"\xef\xbb\xbf" + data, "p.toml")
    assert "byte order mark" in bom.message and bom.line == 1
    [nul] = lint_policy(data.replace(b"Test policy", b"Test\x00policy"), "p.toml")
    assert "NUL" in nul.message and nul.line == 7
    [bad] = lint_policy(data.replace(b"Test policy", b"Test \xff policy"), "p.toml")
    assert "not valid UTF-8" in bad.message and bad.line == 7
    padded = data + b"#" * (MAX_POLICY_BYTES + 1 - len(data))
    [big] = lint_policy(padded, "p.toml")
    assert "larger than 1048576 bytes" in big.message
    assert lint_policy(data + b"#" * (MAX_POLICY_BYTES - len(data)), "p.toml") == []


def test_crlf_file_loads() -> None:
    policy = load_policy(VALID.replace("\n", "\r\n").encode())
    assert policy.process[0].line == 20


def test_all_issues_are_reported_in_line_order() -> None:
    text = META.replace("schema  = 1", "schema  = 9").replace("serial  = 3", "serial  = -1")
    text += '\n[[domain]]\nid = "d"\nnames = ["com"]\nbogus = 1\n'
    issues = lint(text)
    assert [i.line for i in issues] == [2, 4, 18, 19]


def test_load_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_bytes(VALID.encode())
    assert load_policy_file(path).source == str(path)
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy_file(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_bytes(b"[meta\n")
    with pytest.raises(PolicyError, match=r"bad\.toml:1: not valid TOML"):
        load_policy_file(tmp_path / "bad.toml")


def test_a_full_size_policy_loads_in_linear_time() -> None:
    # ~1 MiB of domain names: a quadratic duplicate check took ~50 s here.
    names = "".join(f'"host{i}.zone{i % 97}.example",\n' for i in range(36_000))
    text = with_rule(f'[[domain]]\nid = "big"\nnames = [\n{names}]\n')
    data = text.encode()
    assert len(data) < MAX_POLICY_BYTES
    start = time.thread_time()  # the loader's CPU cost is the point: ~50 s if quadratic
    policy = load_policy(data)
    assert time.thread_time() - start < 5.0
    assert len(policy.domain[0].names) == 36_000


def test_command_line_regexes_are_capped_per_policy() -> None:
    body = "".join(f'[[process]]\nid = "p{i}"\ncmdline = ["tool{i}"]\n' for i in range(1001))
    issue = only(with_rule(body))
    assert "more than 1000 command-line regexes" in issue.message
    assert issue.line == 16 + 3 * 1000 + 2


@pytest.mark.parametrize("data", [b"a = " + b"[" * 5000 + b"]" * 5000, b"a = " + b"{b=" * 3000])
def test_deep_nesting_is_an_issue_not_a_crash(data: bytes) -> None:
    [issue] = lint_policy(data, "deep.toml")
    assert issue.message.startswith("not valid TOML")
