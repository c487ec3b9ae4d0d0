"""The README's policy example passes our own lint (docs that users copy must stay true)."""

from __future__ import annotations

import re
from pathlib import Path

from proscribe.core.policy.loader import lint_policy

README = Path(__file__).resolve().parents[2] / "README.md"

META = """
[meta]
schema = 1
id = "readme-example"
serial = 1
issued = 2025-01-24T00:00:00Z
expires = 2026-01-24T00:00:00Z
title = "README example"

[[meta.reference]]
id = "us-navy-2025-01-24"
title = "US Navy: DeepSeek in any capacity"
"""


def test_the_readme_policy_snippet_lints_clean() -> None:
    blocks = [
        b
        for b in re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
        if "[agent]" not in b  # the agent.toml example is checked below
    ]
    assert blocks, "the README should show a policy example"
    text = META + "\n".join(blocks)
    assert lint_policy(text.encode(), "README.md") == []


def test_the_readme_agent_config_loads(tmp_path: Path) -> None:
    from proscribe.agent.config import load_agent_config

    (block,) = [
        b
        for b in re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
        if "[agent]" in b
    ]
    config = tmp_path / "agent.toml"
    config.write_text(block.replace("BASE64…", "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="))
    loaded = load_agent_config(config)
    assert loaded.agent.mode == "enforce" and loaded.sensors.dns == "auto"
