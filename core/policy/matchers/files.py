"""File matching: path globs expanded per user.

A file rule's globs may start with ``~`` (the user's home) and contain ``$VAR`` or ``${VAR}``
(the user's environment, e.g. ``$HF_HOME/hub/models--deepseek-ai--*``). Home and environment are
always passed in — a scanner reads them for each user it scans; the matcher never consults the
real environment. A glob whose variable is unset (or empty) for a user is skipped for that user,
never expanded to a root-relative path like ``/hub/...``; :meth:`FileMatcher.expansions` says
which globs were skipped and why.

Substituted values are escaped (``*``, ``?``, ``[`` become ``[*]``, ``[?]``, ``[[]``) so a home
directory containing glob characters is matched literally; the same escaping is understood by
Python's :mod:`glob`, so the expanded patterns can be handed to a scanner as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from proscribe.core.policy.globs import compile_glob
from proscribe.core.policy.model import FileRule

_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_GLOB_CHARS = re.compile(r"([*?\[])")
_CACHE_USERS = 64  # distinct (home, environment) combinations kept compiled


@dataclass(frozen=True, slots=True)
class GlobExpansion:
    """One rule glob for one user: the concrete pattern, or why it was skipped."""

    rule_index: int
    rule_id: str
    glob: str  # as written in the policy
    pattern: str | None  # expanded, or None when skipped
    skipped: str = ""  # reason when skipped


@dataclass(frozen=True, slots=True)
class FileMatch:
    rule_index: int
    rule_id: str
    glob: str
    pattern: str  # the expanded glob that matched
    path: str

    @property
    def explanation(self) -> str:
        if self.glob == self.pattern:
            return f"file glob {self.glob!r} matched {self.path!r}"
        return f"file glob {self.glob!r} (here {self.pattern!r}) matched {self.path!r}"


def escape_glob(text: str) -> str:
    return _GLOB_CHARS.sub(r"[\1]", text)


def referenced_variables(glob: str) -> tuple[str, ...]:
    return tuple(a or b for a, b in _VAR.findall(glob))


def expand_glob(glob: str, home: str | None, env: Mapping[str, str]) -> tuple[str | None, str]:
    """``(pattern, "")`` or ``(None, reason)`` for one glob and one user."""
    text = glob
    if text == "~" or text.startswith("~/"):
        if not home:
            return None, "no home directory is known for this user"
        text = escape_glob(home.rstrip("/")) + text[1:]
    elif text.startswith("~"):
        return None, "'~user' is not supported (write the path or use ~/ for the user's own home)"

    missing: list[str] = []

    def substitute(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        value = env.get(name, "")
        if not value and name == "HOME" and home:
            value = home
        if not value:
            missing.append(name)
            return ""
        return escape_glob(value)

    text = _VAR.sub(substitute, text)
    if missing:
        return None, f"${missing[0]} is not set for this user"
    if not text.startswith("/"):
        return None, f"expands to the relative path {text!r}"
    return re.sub("/{2,}", "/", text), ""


@dataclass(frozen=True, slots=True)
class _Compiled:
    expansions: tuple[GlobExpansion, ...]
    regexes: tuple[tuple[GlobExpansion, re.Pattern[str]], ...]


class FileMatcher:
    """All file rules of a policy; expansion is cached per (home, relevant variables)."""

    __slots__ = ("_cache", "_rules", "_variables")

    def __init__(self, rules: Iterable[FileRule]) -> None:
        self._rules = tuple(rules)
        names: dict[str, None] = {"HOME": None}
        for rule in self._rules:
            for glob in rule.globs:
                names.update(dict.fromkeys(referenced_variables(glob)))
        self._variables = tuple(names)
        self._cache: dict[tuple[str | None, tuple[str, ...]], _Compiled] = {}

    @classmethod
    def from_rules(cls, rules: Iterable[FileRule]) -> FileMatcher:
        return cls(rules)

    def __len__(self) -> int:
        return len(self._rules)

    def _compiled(self, home: str | None, env: Mapping[str, str]) -> _Compiled:
        key = (home, tuple(env.get(v, "") for v in self._variables))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        expansions: list[GlobExpansion] = []
        regexes: list[tuple[GlobExpansion, re.Pattern[str]]] = []
        for index, rule in enumerate(self._rules):
            for glob in rule.globs:
                pattern, reason = expand_glob(glob, home, env)
                exp = GlobExpansion(index, rule.id, glob, pattern, reason)
                expansions.append(exp)
                if pattern is not None:
                    try:
                        regexes.append((exp, compile_glob(pattern, path=True, ignore_case=False)))
                    except ValueError as err:  # a value made the glob invalid: skip, say why
                        expansions[-1] = GlobExpansion(index, rule.id, glob, None, str(err))
        compiled = _Compiled(tuple(expansions), tuple(regexes))
        if len(self._cache) >= _CACHE_USERS:
            try:  # oldest first; another thread may be evicting at the same time
                self._cache.pop(next(iter(self._cache)), None)
            except (StopIteration, RuntimeError):
                pass
        self._cache[key] = compiled
        return compiled

    def expansions(self, home: str | None, env: Mapping[str, str]) -> list[GlobExpansion]:
        """Every glob of every rule for this user, expanded or with the reason it was skipped."""
        return list(self._compiled(home, env).expansions)

    def expand(self, home: str | None, env: Mapping[str, str]) -> list[str]:
        """Concrete glob patterns for this user, without duplicates, in policy order."""
        seen: dict[str, None] = {}
        for exp in self._compiled(home, env).expansions:
            if exp.pattern is not None:
                seen[exp.pattern] = None
        return list(seen)

    def match_all(self, path: str, home: str | None, env: Mapping[str, str]) -> list[FileMatch]:
        """One match per rule whose globs (as expanded for this user) match ``path``."""
        found: list[FileMatch] = []
        done: set[int] = set()
        for exp, regex in self._compiled(home, env).regexes:
            if exp.rule_index in done or exp.pattern is None:
                continue
            if regex.match(path):
                done.add(exp.rule_index)
                found.append(FileMatch(exp.rule_index, exp.rule_id, exp.glob, exp.pattern, path))
        return found

    def match(self, path: str, home: str | None, env: Mapping[str, str]) -> FileMatch | None:
        found = self.match_all(path, home, env)
        return found[0] if found else None
