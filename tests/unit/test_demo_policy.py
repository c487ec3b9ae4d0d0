"""The demo's policy matches only programs under its work directory (cli/demo_policy.py)."""

from __future__ import annotations

import importlib.resources
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proscribe.cli.demo_policy import escape_glob, scoped_pack
from proscribe.core.policy.loader import lint_policy, load_policy
from proscribe.core.policy.matchers.compiled import CompiledPolicy
from proscribe.core.policy.matchers.process import ProcessFacts

NOW = datetime(2027, 1, 1, tzinfo=UTC)


def pack(name: str) -> bytes:
    return importlib.resources.files("proscribe.policies").joinpath(name).read_bytes()


def compiled(work: Path, name: str = "us-navy-deepseek-2025.toml") -> CompiledPolicy:
    scoped = scoped_pack(pack(name), work)
    assert lint_policy(scoped.text.encode(), "demo.toml") == []
    return CompiledPolicy.compile(load_policy(scoped.text.encode(), "demo.toml"))


def rules_for(policy: CompiledPolicy, exe: str, *args: str) -> list[str]:
    name = Path(exe).name
    facts = ProcessFacts(pid=4242, name=name[:15], argv0=exe, exe=exe, cmdline=(exe, *args))
    return [d.rule_id for d in policy.check_process(facts, "ws-01", NOW)]


@pytest.mark.parametrize("work", ["/tmp/proscribe-demo-ab12", "/srv/x [1]/d*m?o"])
def test_only_programs_under_the_work_directory_match(work: str) -> None:
    policy = compiled(Path(work))
    assert rules_for(policy, f"{work}/bin/deepseek") == ["deepseek-desktop"]
    assert rules_for(policy, f"{work}/deep/er/DeepSeek Harness") == ["deepseek-desktop"]
    # The same names anywhere else, including a sibling whose path starts the same way.
    for outside in (
        "/usr/local/bin/deepseek",
        "/home/dev/bin/deepseek-r1",
        "/opt/deepseek/dsh",
        "/Applications/DeepSeek Harness.app/Contents/MacOS/DeepSeek Harness",
        f"{work}-sibling/bin/deepseek",
        f"{work}2/bin/deepseek",
    ):
        assert rules_for(policy, outside) == [], outside


def test_rules_that_would_match_anywhere_are_left_out() -> None:
    scoped = scoped_pack(pack("us-navy-deepseek-2025.toml"), Path("/tmp/d"))
    assert "deepseek-local-runtime" in scoped.left_out  # cmdline regexes
    assert "deepseek-model-argument" in scoped.left_out
    assert "deepseek-desktop" in scoped.kept and "deepseek-web" in scoped.kept
    policy = compiled(Path("/tmp/d"))
    # An ollama run of a DeepSeek model elsewhere is not the demo's business.
    assert rules_for(policy, "/usr/bin/ollama", "run", "deepseek-r1") == []
    assert rules_for(policy, "/usr/bin/python3", "deepseek-ai/DeepSeek-R1") == []
    # Domains stay: the demo's DNS goes only through its own proxy.
    decision = policy.check_domain("chat.deepseek.com", "ws-01", None, NOW)
    assert decision is not None and decision.rule_id == "deepseek-web"


def test_every_pack_can_be_scoped() -> None:
    work = Path("/tmp/d")
    for name in ("us-navy-deepseek-2025.toml", "government-restricted-ai-2025.toml"):
        scoped = scoped_pack(pack(name), work)
        policy = load_policy(scoped.text.encode(), name)
        for rule in policy.process:
            assert rule.names == () and rule.cmdline == () and rule.sha256 == ()
            assert all(p.startswith("/tmp/d/**/") for p in rule.paths), rule.paths


def test_escape_glob_is_literal() -> None:
    assert escape_glob("/a*b?c[d]") == "/a[*]b[?]c[[]d]"
