"""Glob patterns used by process, file and exemption rules, translated to regexes once.

Syntax (the same everywhere, checked by ``policy lint``):

* ``*``   any run of characters except the path separator (in path mode) or any run at all
          (in name mode, where there is no separator);
* ``**``  any run of characters including separators (path mode);
* ``?``   one character (not a separator in path mode);
* ``[abc]``, ``[a-z]``, ``[!abc]``  a character class; an unclosed ``[`` is an error.

Everything else is literal. Matching is anchored (the whole string must match).
"""

from __future__ import annotations

import re

_SEPARATORS = "/\\\\"  # "/" and "\" (Windows paths), as written inside a regex class


def glob_to_regex(pattern: str, *, path: bool) -> str:
    """Translate a glob into an anchored regex source, or raise ``ValueError``."""
    if not pattern:
        raise ValueError("empty pattern")
    out: list[str] = []
    i, n = 0, len(pattern)
    not_sep = f"[^{_SEPARATORS}]" if path else "."
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
                # "a/**/b" also matches "a/b"
                if path and i < n and pattern[i] == "/" and out[-2:-1] == ["/"]:
                    out[-2:] = ["(?:/.*)?"]
                continue
            out.append(f"{not_sep}*")
        elif c == "?":
            out.append(not_sep)
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end == -1:
                raise ValueError(f"{pattern!r}: '[' at position {i} is never closed with ']'")
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            if not body:
                raise ValueError(f"{pattern!r}: empty character class at position {i}")
            # Escape what is special inside a regex class, including the set operators
            # ("&&", "||", "~~", "--") that Python's re reserves and warns about.
            escaped = "".join("\\" + ch if ch in "\\^[&|~" else ch for ch in body)
            out.append(f"[{'^' if negate else ''}{escaped}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "^" + "".join(out) + "$"


def compile_glob(pattern: str, *, path: bool, ignore_case: bool) -> re.Pattern[str]:
    """Compile a glob; ``ValueError`` names the problem."""
    source = glob_to_regex(pattern, path=path)
    try:
        return re.compile(source, re.IGNORECASE if ignore_case else 0)
    except re.error as err:  # e.g. a reversed range "[z-a]"
        raise ValueError(f"{pattern!r}: {err}") from err


def compile_globs(patterns: tuple[str, ...], *, path: bool, ignore_case: bool) -> re.Pattern[str]:
    """One alternation for a rule's globs, so matching a field costs one regex call."""
    sources = [glob_to_regex(p, path=path) for p in patterns]
    joined = "|".join(f"(?:{s})" for s in sources) or "(?!)"
    try:
        return re.compile(joined, re.IGNORECASE if ignore_case else 0)
    except re.error as err:
        raise ValueError(f"{patterns!r}: {err}") from err
