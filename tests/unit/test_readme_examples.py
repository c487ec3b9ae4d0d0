"""The README's policy example passes our own lint (docs that users copy must stay true)."""

from __future__ import annotations

import re
from pathlib import Path

from proscribe.agent.policy.loader import lint_policy

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
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README should show a policy example"
    text = META + "\n".join(blocks)
    assert lint_policy(text.encode(), "README.md") == []
