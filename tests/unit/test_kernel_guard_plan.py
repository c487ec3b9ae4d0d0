"""What goes into the kernel exec guard's maps for a policy (pure: no kernel needed)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from proscribe.agent.enforce.bpf.plan import file_id, kernel_dev, plan_for
from proscribe.core.policy.loader import load_policy
from proscribe.core.policy.model import Policy

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _policy(body: str, expires: str = "2099-01-01T00:00:00Z") -> Policy:
    text = f"""
[meta]
schema = 1
id = "p"
serial = 1
issued = 2025-01-01T00:00:00Z
expires = {expires}
title = "t"
{body}
"""
    return load_policy(text.encode(), "policy.toml")


def test_exact_names_and_prefixes_other_globs_stay_with_the_sensor() -> None:
    policy = _policy(
        """
[[process]]
id = "a"
names = ["Ollama", "deepseek*", "*seek*", "deep?eek", "llama-[ab]", "na\u00efve"]
action = "block"
"""
    )
    plan = plan_for(policy, "host", NOW)
    assert plan.exact == {"ollama": 0}
    assert plan.prefixes == {"deepseek": 0}
    assert len(plan.left_to_sensor) == 4
    assert plan.rules == ["a"]
    assert plan.covers_name("OLLAMA") == 0 and plan.covers_name("ollama2") is None
    assert plan.covers_name("DeepSeek-desktop") == 0 and plan.covers_name("xdeepseek") is None


def test_only_block_rules_no_exemption_can_reach_here() -> None:
    policy = _policy(
        """
[[process]]
id = "reported"
names = ["rep"]
action = "report"

[[process]]
id = "user-exempt"
names = ["uex"]
action = "block"

[[process]]
id = "other-host-exempt"
names = ["ohx"]
action = "block"

[[process]]
id = "expired-exempt"
names = ["eex"]
action = "block"

[[exemption]]
id = "e1"
rules = ["user-exempt"]
users = ["alice"]

[[exemption]]
id = "e2"
rules = ["other-host-exempt"]
hosts = ["lab-*"]

[[exemption]]
id = "e3"
rules = ["expired-exempt"]
expires = 2026-01-01T00:00:00Z
"""
    )
    plan = plan_for(policy, "office-7", NOW)
    assert set(plan.exact) == {"ohx", "eex"}
    on_lab = plan_for(policy, "lab-1", NOW)
    assert set(on_lab.exact) == {"eex"}


def test_an_expired_policy_drops_its_exemptions_and_keeps_its_bans() -> None:
    policy = _policy(
        """
[[process]]
id = "r"
names = ["uex"]
action = "block"

[[exemption]]
id = "e1"
rules = ["*"]
users = ["alice"]
""",
        expires="2026-01-01T00:00:00Z",
    )
    assert set(plan_for(policy, "h", NOW).exact) == {"uex"}


def test_paths_resolve_to_device_and_inode_globs_included(tmp_path: Path) -> None:
    (tmp_path / "opt").mkdir()
    one = tmp_path / "opt" / "one"
    two = tmp_path / "opt" / "two"
    for f in (one, two):
        f.write_bytes(b"x")
    (tmp_path / "opt" / "dir").mkdir()
    policy = _policy(
        f"""
[[process]]
id = "p"
paths = ["{tmp_path}/opt/*", "{tmp_path}/missing"]
action = "block"
"""
    )
    plan = plan_for(policy, "h", NOW)
    assert set(plan.files) == {file_id(os.stat(one)), file_id(os.stat(two))}
    st = os.stat(one)
    assert kernel_dev(st.st_dev) == (os.major(st.st_dev) << 20) | os.minor(st.st_dev)
