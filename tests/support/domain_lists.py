"""The third-party domain lists vendored in ``tests/data`` (sources and licences in its README)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
NULLGEN_AI = DATA / "nullgen-ai-domains.txt"
SHADOWWHISPERER_AI = DATA / "shadowwhisperer-ai-domains.txt"
AI_LISTS = (NULLGEN_AI, SHADOWWHISPERER_AI)


def read_domain_list(path: Path) -> list[str]:
    """The names in a list file, in order: one a line; ``#`` comments and blank lines skipped."""
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line)
    return names
