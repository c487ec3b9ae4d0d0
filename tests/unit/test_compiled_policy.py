"""CompiledPolicy over a real policy loaded from TOML: decisions, explanations, exemptions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from proscribe.core.policy.loader import load_policy, load_policy_file
from proscribe.core.policy.matchers import CompiledPolicy, Decision, ProcessFacts

POLICY = rb"""
[meta]
schema   = 1
id       = "us-navy-deepseek-2025"
serial   = 7
issued   = 2025-01-24T00:00:00Z
expires  = 2025-03-01T00:00:00Z
title    = "DeepSeek prohibited in any capacity"
[[meta.reference]]
id    = "opnav-2025-01-24"
title = "OPNAV email of 2025-01-24 (as reported by CNBC)"

[defaults]
action   = "report"
severity = "high"

[[process]]
id      = "deepseek-desktop"
names   = ["deepseek*", "DeepSeek Harness*", "dsh"]
paths   = ["/opt/deepseek/**"]
cmdline = ['(?i)\b(ollama|llama-server|lms)\b.*\bdeepseek']
action  = "block"
message = "DeepSeek is prohibited on this device (OPNAV 2025-01-24)."
directives = ["opnav-2025-01-24"]

[[process]]
id      = "deepseek-hash"
sha256  = ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]
severity = "critical"

[[domain]]
id     = "deepseek-web"
names  = ["DeepSeek.com.", "=chat.qwen.ai"]
action = "block"

[[domain]]
id    = "deepseek-api"
names = ["api.deepseek.com"]

[[file]]
id    = "deepseek-weights"
globs = [
  "~/.cache/huggingface/hub/models--deepseek-ai--*",
  "$OLLAMA_MODELS/manifests/*/*/deepseek-*/*",
]

[[exemption]]
id      = "lab-eval"
rules   = ["deepseek-web", "deepseek-desktop"]
hosts   = ["ai-lab-*"]
users   = ["alice"]
expires = 2025-02-15T00:00:00Z
reason  = "Red-team evaluation, ticket SEC-1234"

[[exemption]]
id    = "soc-weights"
rules = ["deepseek-weights"]
hosts = ["soc-*"]
"""

NOW = datetime(2025, 2, 1, tzinfo=UTC)
AFTER_EXPIRY = datetime(2025, 3, 2, tzinfo=UTC)


def compiled() -> CompiledPolicy:
    return CompiledPolicy.compile(load_policy(POLICY, "navy.toml"))


def test_process_decision_explains_itself() -> None:
    policy = compiled()
    facts = ProcessFacts(pid=7, name="deepseek", exe="/usr/bin/deepseek", user="bob")
    (d,) = policy.check_process(facts, "desk-1", NOW)
    assert d == Decision(
        rule_id="deepseek-desktop",
        kind="process",
        action="block",
        severity="high",
        message="DeepSeek is prohibited on this device (OPNAV 2025-01-24).",
        directives=("opnav-2025-01-24",),
        exempted_by=None,
        explanation="rule deepseek-desktop: name glob 'deepseek*' matched comm 'deepseek'",
        field="name",
        pattern="deepseek*",
        value="deepseek",
    )


def test_process_cmdline_and_hash_rules_both_reported() -> None:
    policy = compiled()
    assert policy.needs_sha256
    facts = ProcessFacts(
        pid=8,
        name="ollama",
        exe="/usr/local/bin/ollama",
        cmdline=("ollama", "run", "deepseek-r1"),
        user="bob",
        sha256="A" * 64,
    )
    found = policy.check_process(facts, "desk-1", NOW)
    assert [(d.rule_id, d.field, d.severity) for d in found] == [
        ("deepseek-desktop", "cmdline", "high"),
        ("deepseek-hash", "sha256", "critical"),
    ]
    assert found[1].action == "report"  # from [defaults]
    assert found[1].message == "DeepSeek prohibited in any capacity"  # falls back to the title
    assert policy.check_process(ProcessFacts(pid=9, name="bash"), "desk-1", NOW) == []


def test_exempted_process_is_returned_marked() -> None:
    policy = compiled()
    facts = ProcessFacts(pid=7, name="dsh", user="alice")
    (d,) = policy.check_process(facts, "ai-lab-2", NOW)
    assert d.exempted_by == "lab-eval"
    assert d.exempted
    assert d.explanation.endswith("; exempted by lab-eval")
    (d,) = policy.check_process(ProcessFacts(pid=7, name="dsh", user="bob"), "ai-lab-2", NOW)
    assert d.exempted_by is None


def test_domain_decisions() -> None:
    policy = compiled()
    d = policy.check_domain("Chat.DeepSeek.com.", "desk-1", None, NOW)
    assert d is not None
    assert (d.rule_id, d.kind, d.action, d.field, d.pattern, d.value) == (
        "deepseek-web",
        "dns",
        "block",
        "domain",
        "deepseek.com",
        "chat.deepseek.com",
    )
    assert d.explanation == (
        "rule deepseek-web: domain 'deepseek.com' matched query 'chat.deepseek.com' (subdomain)"
    )
    assert policy.check_domain("notdeepseek.com", "desk-1", None, NOW) is None
    assert policy.check_domain("chat.qwen.ai", "desk-1", None, NOW) is not None
    assert policy.check_domain("x.chat.qwen.ai", "desk-1", None, NOW) is None


def test_domain_exemption_does_not_open_a_name_another_rule_denies() -> None:
    policy = compiled()
    web = policy.check_domain("chat.deepseek.com", "ai-lab-1", "alice", NOW)
    assert web is not None
    assert web.exempted_by == "lab-eval"
    api = policy.check_domain("api.deepseek.com", "ai-lab-1", "alice", NOW)
    assert api is not None
    assert (api.rule_id, api.exempted_by) == ("deepseek-api", None)


def test_file_decisions_per_user() -> None:
    policy = compiled()
    path = "/home/bob/.cache/huggingface/hub/models--deepseek-ai--DeepSeek-V3"
    d = policy.check_file(path, "desk-1", "bob", NOW, home="/home/bob")
    assert d is not None
    assert (d.rule_id, d.kind, d.field, d.value) == ("deepseek-weights", "file", "path", path)
    assert policy.check_file(path, "desk-1", "bob", NOW) is None  # no home given: ~ skipped
    manifest = "/m/manifests/registry.ollama.ai/library/deepseek-r1/7b"
    assert policy.check_file(manifest, "desk-1", "bob", NOW, env={"OLLAMA_MODELS": "/m"})
    exempted = policy.check_file(path, "soc-1", "bob", NOW, home="/home/bob")
    assert exempted is not None
    assert exempted.exempted_by == "soc-weights"
    assert policy.expand_file_globs("/home/c", {}) == [
        "/home/c/.cache/huggingface/hub/models--deepseek-ai--*"
    ]


def test_expired_policy_keeps_bans_and_drops_exemptions() -> None:
    policy = compiled()
    assert not policy.stale(NOW)
    assert policy.stale(AFTER_EXPIRY)
    assert policy.stale(datetime(2025, 3, 1, tzinfo=UTC))
    before = datetime(2025, 2, 28, tzinfo=UTC)
    path = "/home/bob/.cache/huggingface/hub/models--deepseek-ai--X"
    kept = policy.check_file(path, "soc-1", "bob", before, home="/home/bob")
    assert kept is not None
    assert kept.exempted_by == "soc-weights"
    dropped = policy.check_file(path, "soc-1", "bob", AFTER_EXPIRY, home="/home/bob")
    assert dropped is not None
    assert dropped.exempted_by is None
    d = policy.check_domain("deepseek.com", "ai-lab-1", "alice", AFTER_EXPIRY)
    assert d is not None
    assert d.exempted_by is None


def test_exemption_expiry_is_its_own() -> None:
    policy = compiled()
    late = datetime(2025, 2, 15, tzinfo=UTC) + timedelta(seconds=1)
    d = policy.check_domain("deepseek.com", "ai-lab-1", "alice", late)
    assert d is not None
    assert d.exempted_by is None
    assert not policy.stale(late)


def test_policy_attribute_and_empty_policy() -> None:
    loaded = load_policy(POLICY, "navy.toml")
    policy = CompiledPolicy.compile(loaded)
    assert policy.policy is loaded
    minimal = load_policy(
        b'[meta]\nschema = 1\nid = "empty"\nserial = 1\n'
        b'issued = 2025-01-01T00:00:00Z\ntitle = "nothing"\n',
        "empty.toml",
    )
    empty = CompiledPolicy.compile(minimal)
    assert not empty.needs_sha256
    assert not empty.stale(datetime(2999, 1, 1, tzinfo=UTC))
    assert empty.check_domain("deepseek.com", "h", None, NOW) is None
    assert empty.check_process(ProcessFacts(pid=1, name="deepseek"), "h", NOW) == []


def test_public_api_is_the_curated_list() -> None:
    from proscribe.core.policy import matchers

    assert sorted(matchers.__all__) == [
        "CompiledPolicy",
        "Decision",
        "DomainMatch",
        "DomainMatcher",
        "ExemptionSet",
        "FileMatch",
        "FileMatcher",
        "GlobExpansion",
        "ModelMatch",
        "ModelMatcher",
        "ProcessFacts",
        "ProcessMatch",
        "ProcessMatcher",
    ]
    public = {n for n in vars(matchers) if not n.startswith("_") and n != "annotations"}
    public -= {"compiled", "domain", "exemptions", "files", "models", "process"}  # submodules
    assert public == set(matchers.__all__)


PACKS = Path(__file__).resolve().parents[2] / "policies"


@pytest.mark.parametrize("pack", sorted(PACKS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_packs_compile_and_deny_deepseek(pack: Path) -> None:
    policy = CompiledPolicy.compile(load_policy_file(pack))
    web = policy.check_domain("chat.deepseek.com", "desk-1", "bob", NOW)
    assert web is not None
    assert web.exempted_by is None
    assert policy.check_domain("example.org", "desk-1", "bob", NOW) is None
    found = policy.check_process(
        ProcessFacts(pid=5, name="deepseek", exe="/usr/local/bin/deepseek"), "desk-1", NOW
    )
    assert found
    assert all(d.explanation.startswith(f"rule {d.rule_id}: ") for d in found)
    assert policy.check_process(ProcessFacts(pid=6, name="bash", exe="/bin/bash"), "h", NOW) == []
