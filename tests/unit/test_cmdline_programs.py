"""``programs`` on cmdline rules, with the packs as shipped: the runtimes' arguments are judged,
never argv[0], and the tools that merely mention the words (editors, pagers, grep, rm, tail)
are not runtimes."""

from __future__ import annotations

import importlib.resources
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proscribe.cli.policy_lint import system_program_clashes
from proscribe.core.policy.loader import lint_policy, load_policy
from proscribe.core.policy.matchers.compiled import CompiledPolicy
from proscribe.core.policy.matchers.process import ProcessFacts, ProcessMatcher
from proscribe.core.policy.model import ProcessRule

NOW = datetime(2026, 6, 1, tzinfo=UTC)
PACKS = ("us-navy-deepseek-2025.toml", "government-restricted-ai-2025.toml")


def _pack(name: str) -> CompiledPolicy:
    data = importlib.resources.files("proscribe.policies").joinpath(name).read_bytes()
    return CompiledPolicy.compile(load_policy(data, name))


def _rules(policy: CompiledPolicy, exe: str, *argv: str, comm: str = "") -> set[str]:
    name = comm or Path(exe).name[:15]
    facts = ProcessFacts(pid=7, name=name, argv0=argv[0], exe=exe, cmdline=tuple(argv))
    return {d.rule_id for d in policy.check_process(facts, "ws-1", NOW)}


@pytest.mark.parametrize("pack", PACKS)
def test_runtimes_with_a_deepseek_model_are_caught_however_started(pack: str) -> None:
    policy = _pack(pack)
    ollama = "/usr/local/bin/ollama"
    assert "deepseek-local-runtime" in _rules(policy, ollama, "ollama", "run", "deepseek-r1")
    # exec -a: argv[0] is the caller's choice and is never needed
    assert "deepseek-local-runtime" in _rules(policy, ollama, "foo", "run", "deepseek-r1:7b")
    # a script runtime: the kernel's comm is the script's name, the exe is the interpreter
    assert "deepseek-local-runtime" in _rules(
        policy, "/usr/bin/python3.11", "python3", "/usr/local/bin/vllm", "serve",
        "deepseek-ai/DeepSeek-R1", comm="vllm",
    )  # fmt: skip
    # a newline inside an earlier argument does not hide the model
    assert "deepseek-local-runtime" in _rules(
        policy, "/usr/bin/llama-server", "llama-server", "--alias", "a\nb", "-m", "deepseek.gguf"
    )


@pytest.mark.parametrize("pack", PACKS)
def test_tools_that_mention_the_words_are_not_runtimes(pack: str) -> None:
    policy = _pack(pack)
    for exe, *argv in (
        ("/usr/bin/tail", "tail", "-f", "ollama vs deepseek notes.txt"),
        ("/usr/bin/grep", "grep", "-rn", "ollama run deepseek", "policy.toml"),
        ("/usr/bin/rm", "rm", "-rf", "/home/a/.ollama/models/manifests/deepseek-r1"),
        ("/usr/bin/less", "less", "incident-ollama-deepseek-r1.log"),
        ("/usr/bin/vim", "ollama", "deepseek-r1-notes.md"),  # exec -a ollama vim …
        ("/usr/bin/grep", "grep", "deepseek-ai/", "-r", "."),
    ):
        assert _rules(policy, exe, *argv) == set(), argv


def test_without_programs_a_newline_no_longer_splits_the_match() -> None:
    m = ProcessMatcher([ProcessRule(id="r", cmdline=(r"(?i)\bollama\b.*\bdeepseek",))])
    facts = ProcessFacts(pid=1, cmdline=("ollama", "run", "--note", "x\ny", "deepseek-r1"))
    assert [x.rule_id for x in m.match(facts)] == ["r"]


def test_programs_without_cmdline_is_a_lint_issue() -> None:
    text = b"""
[meta]
schema = 1
id = "p"
serial = 1
issued = 2025-01-01T00:00:00Z
title = "t"

[[process]]
id = "r"
programs = ["ollama"]
"""
    issues = lint_policy(text, "p.toml")
    assert any("programs only says which programs" in i.message for i in issues), issues


@pytest.mark.parametrize("pack", PACKS)
def test_the_packs_name_no_program_installed_on_this_host(pack: str) -> None:
    data = importlib.resources.files("proscribe.policies").joinpath(pack).read_bytes()
    assert system_program_clashes(load_policy(data, pack), pack) == []


def test_lint_warns_about_a_name_installed_here(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(
        '[meta]\nschema = 1\nid = "p"\nserial = 1\nissued = 2025-01-01T00:00:00Z\n'
        'title = "t"\n\n[[process]]\nid = "r"\nnames = ["Sh", "zzqq-unique*"]\n'
        'action = "block"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "proscribe.cli", "policy", "lint", str(policy)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"warning: {policy}:8: rule r: name 'Sh' matches /usr/bin/sh")
    assert len(lines) == 2 and lines[1].startswith("ok: ")
