"""How long a command-line regex search can take on hostile input.

For every ``cmdline`` pattern in the shipped packs, plus realistic ones, searches crafted
command lines of full window length (``MAX_CMDLINE_MATCH_CHARS``) and prints the median and p99
of the per-input worst time. Peers measured in the same run: the same patterns on 4x longer
text (what the window avoids), and shapes ``regex_safety`` refuses, searched with plain ``re``
(what the shape check avoids).

Run: ``.venv/bin/python -m bench.cmdline_regex``
"""

from __future__ import annotations

import re
import statistics
import time
import tomllib
from pathlib import Path

from proscribe.core.policy.regex_safety import (
    MAX_CMDLINE_MATCH_CHARS,
    cmdline_window,
    compile_cmdline_regex,
)

ROOT = Path(__file__).resolve().parents[1]
REALISTIC = [
    r"(?i)ollama\s+(run|pull|serve)\s+deepseek",
    r"(?i)python3?\s+-m\s+vllm\b.*deepseek",
    r"(?i)--model[= ]\S*deepseek",
    r"(?i)\w+\b-",
]
REFUSED = {  # pattern -> (text length, why that length)
    r"a.*b.*c": 256,
    r".*\s+x": 256,
    r"(a|aa)+$": 24,  # exponential: 25 characters already take seconds
    r"(\w+\s?)*$": 20,
}


def pack_patterns() -> list[str]:
    found: list[str] = []
    for path in sorted((ROOT / "policies").glob("*.toml")):
        for rule in tomllib.loads(path.read_text("utf-8")).get("process", []):
            found.extend(p for p in rule.get("cmdline", []) if p not in found)
    return found


def hostile(pattern: str, length: int) -> list[str]:
    words = re.findall(r"[A-Za-z0-9]{2,}", pattern) or ["a"]
    texts = [c * length for c in [*sorted(set("".join(words))), " ", "a", "-"]]
    for word in words:
        texts.append(((word + " ") * length)[:length])
        texts.append(((word[:-1] + " ") * length)[:length])
        texts.append(word + " " * (length - len(word)))
    texts.append(("ab" * length)[:length])
    return texts


def worst_ms(compiled: re.Pattern[str], texts: list[str], repeat: int = 3) -> float:
    """The slowest input; each input timed ``repeat`` times, keeping the fastest run, so
    that scheduler noise on a busy machine is not mistaken for the regex's cost."""
    worst = 0.0
    for text in texts:
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            compiled.search(text)
            best = min(best, time.perf_counter() - start)
        worst = max(worst, best)
    return worst * 1000


def summary(label: str, values: list[float]) -> None:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    print(
        f"{label:<52} median {statistics.median(ordered):8.2f} ms   p99 {p99:8.2f} ms"
        f"   max {ordered[-1]:8.2f} ms"
    )


def main() -> None:
    n = MAX_CMDLINE_MATCH_CHARS
    patterns = pack_patterns() + REALISTIC
    print(f"{len(patterns)} accepted patterns, window {n} characters")
    windowed: list[float] = []
    unwindowed: list[float] = []
    for pattern in patterns:
        compiled = compile_cmdline_regex(pattern)
        texts = [cmdline_window([t]) for t in hostile(pattern, n)]
        windowed.append(worst_ms(compiled, texts))
        unwindowed.append(worst_ms(compiled, hostile(pattern, 4 * n)))
        print(f"  {pattern:<50} worst {windowed[-1]:7.2f} ms (4x text: {unwindowed[-1]:8.2f} ms)")
    summary(f"accepted, hostile input of {n} chars", windowed)
    summary(f"peer: accepted, hostile input of {4 * n} chars", unwindowed)
    ratio = statistics.median(unwindowed) / max(statistics.median(windowed), 1e-9)
    print(f"ratio 4x text / window (median): {ratio:.1f}x")

    refused: list[float] = []
    for pattern, length in REFUSED.items():
        try:
            compile_cmdline_regex(pattern)
        except ValueError:
            pass
        else:  # pragma: no cover - would be a regression of the shape check
            raise SystemExit(f"{pattern!r} should be refused")
        # Plain re on short text: the full window would take minutes (or ages) for these.
        texts = [t[:length] for t in hostile(pattern, n)] + ["a" * (length - 1) + "!"]
        refused.append(worst_ms(re.compile(pattern), texts, repeat=1))
        print(f"  refused {pattern:<42} plain re on {length:>3} chars: {refused[-1]:9.2f} ms")
    summary("peer: refused shapes in plain re, 20-256 chars", refused)


if __name__ == "__main__":
    main()
