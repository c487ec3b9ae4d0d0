"""``proscribe policy lint`` / ``policy show``, run in-process: exit codes and one-line messages."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from proscribe.cli import main
from proscribe.core.policy.model import MAX_POLICY_BYTES

ROOT = Path(__file__).resolve().parents[2]
NAVY = ROOT / "policies" / "us-navy-deepseek-2025.toml"

VALID = """\
[meta]
schema  = 1
id      = "cli-test"
serial  = 2
issued  = 2025-01-24T00:00:00Z
expires = 2025-03-01T00:00:00Z
title   = "CLI \\u001b[2J test \\u202e"

[[domain]]
id    = "deepseek-web"
names = ["deepseek.com", "=exact.example.org"]

[[exemption]]
id      = "lab"
rules   = ["*"]
hosts   = ["ai-lab-*"]
expires = 2025-02-15T00:00:00Z
reason  = "evaluation"
"""


def write(tmp_path: Path, text: str | bytes, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_lint_clean_pack(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "lint", str(NAVY)]) == 0
    out, err = capsys.readouterr()
    assert out == f"ok: {NAVY}: 7 rules, 0 exemptions\n"
    assert err == ""


def test_lint_reports_every_issue_with_line_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = VALID.replace("serial  = 2", "serial  = 0").replace("names = [", "nmaes = [")
    path = write(tmp_path, bad)
    assert main(["policy", "lint", str(path)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == f"{path}:4: [meta]: serial must be a positive integer (fix: use 1 or higher)"
    assert lines[1].startswith(f"{path}:9: [[domain]] 'deepseek-web': missing required key")
    assert lines[2] == (
        f"{path}:11: [[domain]] 'deepseek-web': unknown key 'nmaes' (fix: did you mean 'names'?)"
    )
    assert len(lines) == 3
    assert err == f"{path}: 3 problems\n"


def test_lint_several_files_exit_1_if_any_is_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path, VALID, "good.toml")
    bad = write(tmp_path, "[meta\n", "bad.toml")
    assert main(["policy", "lint", str(good), str(bad)]) == 1
    out, _err = capsys.readouterr()
    assert f"ok: {good}: 1 rule, 1 exemption" in out
    assert f"{bad}:1: not valid TOML" in out


def test_lint_missing_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["policy", "lint", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert str(missing) in err and "No such file or directory" in err
    assert "Traceback" not in err


def test_lint_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "lint", str(tmp_path)]) == 2
    _out, err = capsys.readouterr()
    assert str(tmp_path) in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"\xef\xbb\xbf" + VALID.encode(), "byte order mark"),
        (VALID.encode().replace(b"cli-test", b"cli\x00test"), "NUL byte"),
        (b"\x89PNG\r\n\x1a\n\xff\xfe", "not valid UTF-8"),
        (VALID.encode() + b"#" * MAX_POLICY_BYTES, "larger than 1048576 bytes"),
        (b"", "missing required key 'meta'"),
    ],
)
def test_lint_bad_bytes_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes, needle: str
) -> None:
    path = write(tmp_path, data)
    assert main(["policy", "lint", str(path)]) == 1
    out, _err = capsys.readouterr()
    assert out.count("\n") == 1 and needle in out and out.startswith(str(path))


def test_show_human_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, VALID)
    assert main(["policy", "show", str(path)]) == 0
    out, _err = capsys.readouterr()
    assert "policy   cli-test (serial 2)" in out
    assert "EXPIRED" in out and "bans still enforced, exemptions dropped" in out
    assert "[domain] deepseek-web: report, severity high" in out
    assert "deepseek.com (+ subdomains), exact.example.org (exact)" in out
    assert "lab: every rule; hosts ai-lab-*; users any user; expires 2025-02-15T00:00:00Z" in out
    # Terminal control characters from the policy are shown escaped, never emitted.
    assert "\x1b" not in out and "\u202e" not in out
    assert "\\x1b[2J" in out and "\\u202e" in out


def test_show_pack_lists_directives(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "show", str(NAVY)]) == 0
    out, _err = capsys.readouterr()
    assert "us-navy-2025-01-24: Navy guidance" in out
    assert "[process] deepseek-desktop: BLOCK" in out
    assert "also kills its child processes" in out
    assert "cites: us-navy-2025-01-24" in out


def test_show_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, VALID)
    assert main(["policy", "show", "--json", str(path)]) == 0
    out, _err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["meta"]["id"] == "cli-test" and doc["meta"]["serial"] == 2
    assert doc["meta"]["expires"] == "2025-03-01T00:00:00Z"
    assert doc["domain"][0]["names"] == ["deepseek.com", "=exact.example.org"]
    assert doc["exemptions"][0]["rules"] == ["*"]
    assert doc["expired"] is True and doc["rule_count"] == 1
    assert len(doc["sha256"]) == 64


def test_show_invalid_policy_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # show has nothing to show: a usage error (2), not lint's "problems found" (1)
    path = write(tmp_path, VALID.replace("schema  = 1", "schema  = 3"))
    assert main(["policy", "show", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{path}:2: [meta]: schema 3 is not supported" in err
    assert "proscribe policy lint" in err


def test_show_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "show", str(tmp_path / "gone.toml")]) == 2
    _out, err = capsys.readouterr()
    assert "gone.toml" in err and err.count("\n") == 1


def test_lint_without_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["policy", "lint"])
    assert info.value.code == 2
    assert "FILE" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("expires", "warned"),
    [
        (timedelta(days=-3), "is past"),
        (timedelta(days=10), "in 9 days"),
        (timedelta(days=400), None),
        (None, None),
    ],
)
def test_lint_warns_on_expired_or_soon_expiring_policies(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    expires: timedelta | None,
    warned: str | None,
) -> None:
    """A warning, not a problem: the exit stays 0 (issue 13)."""
    text = NAVY.read_text()
    text = re.sub(r"(?m)^expires\s*=.*\n", "", text)
    if expires is not None:
        moment = (datetime.now(UTC) + expires).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = text.replace("[meta]\n", f"[meta]\nexpires = {moment}\n", 1)
    path = tmp_path / "p.toml"
    path.write_text(text)
    assert main(["policy", "lint", str(path)]) == 0
    out, _err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[-1].startswith("ok: ")
    expiry = [line for line in lines if "[meta] expires" in line]
    if warned is None:
        assert expiry == []
    else:
        assert len(expiry) == 1 and warned in expiry[0] and "fix:" in expiry[0]
        assert expiry[0].startswith(f"warning: {path}: ")
