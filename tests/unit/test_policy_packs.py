"""The shipped policy packs: they lint clean, cite their directives, and deny what they say."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from proscribe.core.policy.loader import lint_policy, load_policy_file
from proscribe.core.policy.matchers.compiled import CompiledPolicy
from proscribe.core.policy.matchers.process import ProcessFacts
from proscribe.core.policy.model import Policy
from tests.support.domain_lists import AI_LISTS, read_domain_list

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
NAVY = POLICIES / "us-navy-deepseek-2025.toml"
GOV = POLICIES / "government-restricted-ai-2025.toml"
PACKS = [NAVY, GOV]
NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)  # inside the packs' validity


def compiled(path: Path) -> CompiledPolicy:
    return CompiledPolicy.compile(load_policy_file(path))


@pytest.mark.parametrize("path", PACKS, ids=lambda p: p.name)
def test_pack_lints_clean(path: Path) -> None:
    assert lint_policy(path.read_bytes(), str(path)) == []


@pytest.mark.parametrize("path", PACKS, ids=lambda p: p.name)
def test_pack_metadata(path: Path) -> None:
    policy = load_policy_file(path)
    assert policy.meta.id == path.stem
    assert policy.meta.serial == 1
    assert policy.meta.expires is not None
    span = policy.meta.expires - policy.meta.issued
    assert timedelta(days=90) <= span <= timedelta(days=2 * 366)
    assert policy.exemptions == ()  # exemptions are each organization's own
    assert not (path.parent / (path.name + ".sig")).exists()  # packs ship unsigned


@pytest.mark.parametrize("path", PACKS, ids=lambda p: p.name)
def test_every_rule_cites_a_directive_and_every_directive_is_cited(path: Path) -> None:
    policy: Policy = load_policy_file(path)
    cited = set()
    for rule in policy.rules():
        assert rule.directives, f"rule {rule.id} cites no directive"
        assert rule.message, f"rule {rule.id} has no message for the user"
        cited.update(rule.directives)
    assert cited == {r.id for r in policy.meta.references}
    for ref in policy.meta.references:
        assert ref.authority and ref.issued and ref.title


def test_file_rules_report_only() -> None:
    for path in PACKS:
        assert all(r.action == "report" for r in load_policy_file(path).file)


@pytest.mark.parametrize(
    "name",
    [
        "deepseek.com",
        "chat.deepseek.com",
        "api.deepseek.com",
        "platform.deepseek.com",
        "download.deepseek.com",
        "CDN.DeepSeek.com.",
    ],
)
def test_navy_pack_blocks_deepseek_names(name: str) -> None:
    decision = compiled(NAVY).check_domain(name, "host1", "alice", NOW)
    assert decision is not None
    assert (decision.rule_id, decision.action) == ("deepseek-web", "block")
    assert decision.directives == ("us-navy-2025-01-24",)


@pytest.mark.parametrize(
    "name", ["notdeepseek.com", "deepseek.com.evil.example", "deepseek.co", "example.com"]
)
def test_navy_pack_leaves_other_names_alone(name: str) -> None:
    assert compiled(NAVY).check_domain(name, "host1", None, NOW) is None


def test_third_party_endpoints_are_reported_exactly() -> None:
    policy = compiled(NAVY)
    hit = policy.check_domain("ark.cn-beijing.volces.com", "h", None, NOW)
    assert hit is not None and hit.action == "report"
    assert policy.check_domain("other.cn-beijing.volces.com", "h", None, NOW) is None
    assert policy.check_domain("x.ark.cn-beijing.volces.com", "h", None, NOW) is None


@pytest.mark.parametrize(
    ("facts", "rule"),
    [
        (
            ProcessFacts(pid=10, name="DeepSeek Harnes", exe="/opt/x/DeepSeek Harness"),
            "deepseek-desktop",
        ),
        # the CLI dsh by its path (its name is also Debian's distributed shell: not banned)
        (ProcessFacts(pid=11, name="dsh", exe="/opt/deepseek/bin/dsh"), "deepseek-desktop"),
        (
            ProcessFacts(pid=12, name="ollama", cmdline=("ollama", "run", "deepseek-r1:7b")),
            "deepseek-local-runtime",
        ),
        (
            ProcessFacts(
                pid=13,
                name="llama-server",
                cmdline=("llama-server", "-m", "/m/DeepSeek-R1-Q4.gguf"),
            ),
            "deepseek-local-runtime",
        ),
    ],
)
def test_navy_pack_blocks_deepseek_processes(facts: ProcessFacts, rule: str) -> None:
    decisions = compiled(NAVY).check_process(facts, "host1", NOW)
    assert rule in {d.rule_id for d in decisions}
    assert all(d.action == "block" for d in decisions if d.rule_id == rule)


def test_navy_pack_leaves_debians_dsh_alone() -> None:
    facts = ProcessFacts(pid=15, name="dsh", exe="/usr/bin/dsh", cmdline=("dsh", "-a", "w"))
    assert compiled(NAVY).check_process(facts, "host1", NOW) == []


def test_navy_pack_ignores_other_models() -> None:
    facts = ProcessFacts(pid=14, name="ollama", cmdline=("ollama", "run", "llama3.1:8b"))
    assert compiled(NAVY).check_process(facts, "host1", NOW) == []


def test_navy_pack_judges_model_files_by_content_and_keeps_one_scan_only_file_rule() -> None:
    # Model files by content: tests/unit/test_match_models.py. No model store glob is left.
    policy = compiled(NAVY)
    assert [r.id for r in policy.policy.model] == ["deepseek-models"]
    assert [r.id for r in policy.policy.file] == ["deepseek-desktop-install"]
    home = "/home/alice"
    decision = policy.check_file(f"{home}/Downloads/dsh-latest-x64", "h", "alice", NOW, home=home)
    assert decision is not None and decision.action == "report"
    manifest = f"{home}/.ollama/models/manifests/registry.ollama.ai/library/deepseek-r1/7b"
    assert policy.check_file(manifest, "host1", "alice", NOW, home=home) is None


@pytest.mark.parametrize(
    "name",
    [
        "kimi.com",
        "www.kimi.com",
        "kimi.moonshot.cn",
        "api.moonshot.ai",
        "qwen.ai",
        "chat.qwen.ai",
        "dashscope.aliyuncs.com",
        "doubao.com",
        "www.doubao.com",
        "manus.im",
        "api.manus.ai",
        "chat.deepseek.com",
    ],
)
def test_government_pack_blocks_restricted_services(name: str) -> None:
    decision = compiled(GOV).check_domain(name, "host1", None, NOW)
    assert decision is not None and decision.action == "block"
    assert decision.directives


@pytest.mark.parametrize(
    "name", ["aliyuncs.com", "oss-cn-hangzhou.aliyuncs.com", "moonshot.ai", "manus.ai", "qwen.com"]
)
def test_government_pack_does_not_overreach(name: str) -> None:
    assert compiled(GOV).check_domain(name, "host1", None, NOW) is None


FAMILIES = ("deepseek", "kimi", "moonshot", "qwen", "doubao", "manus")


@pytest.mark.parametrize("path", AI_LISTS, ids=lambda p: p.name)
def test_government_pack_covers_the_vendored_ai_lists(path: Path) -> None:
    policy = compiled(GOV)
    names = read_domain_list(path)
    relevant = [n for n in names if any(f in n for f in FAMILIES)]
    assert relevant, "the vendored lists should mention the restricted services"
    missing = [n for n in relevant if policy.check_domain(n, "h", None, NOW) is None]
    assert missing == []
