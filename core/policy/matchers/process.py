"""Process matching: names, executable paths, command lines and hashes.

Everything is compiled once per policy. Checking a process costs a handful of regex calls no
matter how many rules there are: all rules' name globs form one case-insensitive alternation and
all path globs another, used as a prefilter; only when the prefilter hits are the (few) rules
tried one by one to say exactly which rule and pattern matched. Command-line regexes are searched
one by one because they cannot be merged safely (an inline global flag such as ``(?i)`` is an
error inside an alternation, and a merged pattern would escape ``regex_safety``'s cost bound);
each was compiled and vetted by ``regex_safety.compile_cmdline_regex`` and is searched in
``regex_safety.cmdline_window`` (the joined command line, at most ``MAX_CMDLINE_MATCH_CHARS``).

Linux truncates ``comm`` (the process name) to 15 characters. A name glob such as
``DeepSeek Harness*`` can never match the comm ``DeepSeek Harnes`` as written, so when comm is
exactly 15 characters long *and* neither the argv0 basename nor the executable basename carries
the full name (they do not start with comm — e.g. an interpreted script, or a process that renamed
itself), comm is treated as possibly truncated: it matches a glob if it is a prefix of some name
the glob matches. When the full name is available, only the full name is judged, so a harmless
15-character program is not flagged for being the prefix of a denied longer name.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass

from proscribe.core.policy.globs import compile_glob, compile_globs, glob_to_regex
from proscribe.core.policy.model import ProcessRule
from proscribe.core.policy.regex_safety import cmdline_window, compile_cmdline_regex

COMM_MAX = 15  # TASK_COMM_LEN - 1 on Linux
_DELETED = " (deleted)"  # what readlink(/proc/PID/exe) appends once the file is unlinked
_SHOWN_VALUE = 120  # longest value quoted in an explanation


@dataclass(frozen=True, slots=True)
class ProcessFacts:
    """What a sensor knows about one process; strings may be empty when unreadable."""

    pid: int
    ppid: int | None = None
    name: str = ""  # comm (at most 15 characters on Linux)
    argv0: str = ""
    exe: str = ""  # resolved executable path
    cmdline: tuple[str, ...] = ()
    user: str = ""  # the account of the real uid
    uid: int | None = None  # real uid: who ran it; exemptions by user go by it
    euid: int | None = None  # effective uid (differs for setuid programs); recorded, not judged
    sha256: str | None = None  # lower-case hex of the executable, when the policy needs it
    start_time: float | None = None
    # (device, inode) of the executable as it was when these facts were read (Linux procfs): a
    # digest read later joins these facts only if it is of that same file (no exec since)
    exe_id: tuple[int, int] | None = dataclasses.field(default=None, compare=False, repr=False)


# field name -> how an explanation refers to the value
FIELD_LABELS = {
    "name": "comm",
    "argv0": "argv0 basename",
    "exe_name": "exe basename",
    "path": "exe",
    "cmdline": "command line",
    "sha256": "executable sha256",
}


@dataclass(frozen=True, slots=True)
class ProcessMatch:
    rule_index: int
    rule_id: str
    field: str  # "name" | "argv0" | "exe_name" | "path" | "cmdline" | "sha256"
    pattern: str
    value: str  # the value that matched (for cmdline: the matched text)
    truncated_comm: bool = False

    @property
    def explanation(self) -> str:
        value = _shorten(self.value)
        label = FIELD_LABELS[self.field]
        if self.field in ("name", "argv0", "exe_name"):
            text = f"name glob {self.pattern!r} matched {label} {value!r}"
            if self.truncated_comm:
                text += f" (comm is cut to {COMM_MAX} characters by the kernel)"
            return text
        if self.field == "path":
            return f"path glob {self.pattern!r} matched exe {value!r}"
        if self.field == "cmdline":
            return f"cmdline regex {self.pattern!r} matched {value!r} in the command line"
        return f"sha256 {self.pattern} matched the executable's hash"


def _shorten(value: str) -> str:
    return value if len(value) <= _SHOWN_VALUE else value[: _SHOWN_VALUE - 1] + "…"


def basename(path: str) -> str:
    """Last component of a POSIX or Windows path."""
    return path.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]


def clean_exe(exe: str) -> str:
    return exe[: -len(_DELETED)] if exe.endswith(_DELETED) else exe


def glob_prefix_regex(pattern: str) -> str:
    """Regex source matching every prefix of every name the (name-mode) glob matches.

    Built as nested optional groups, ``^(?:t1(?:t2(?:…)?)?)?$``, one per glob token, so a string
    matches when it is consumed by some leading run of tokens.
    """
    tokens: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            while i < n and pattern[i] == "*":
                i += 1
            tokens.append(".*")
            continue
        if c == "?":
            tokens.append(".")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end == -1:
                raise ValueError(f"{pattern!r}: '[' at position {i} is never closed with ']'")
            tokens.append(glob_to_regex(pattern[i : end + 1], path=False)[1:-1])
            i = end
        else:
            tokens.append(re.escape(c))
        i += 1
    body = ""
    for token in reversed(tokens):
        body = f"(?:{token}{body})?"
    return "^" + body + "$"


@dataclass(frozen=True, slots=True)
class _Rule:
    index: int
    id: str
    names: tuple[tuple[str, re.Pattern[str]], ...]
    names_any: re.Pattern[str] | None
    name_prefixes: tuple[tuple[str, re.Pattern[str]], ...]
    paths: tuple[tuple[str, re.Pattern[str]], ...]
    paths_any: re.Pattern[str] | None
    cmdline: tuple[tuple[str, re.Pattern[str]], ...]
    sha256: frozenset[str]
    programs: re.Pattern[str] | None  # the cmdline applies only to these programs' arguments
    program_prefixes: tuple[re.Pattern[str], ...]  # for a comm cut to 15 characters


def _compile_rule(index: int, rule: ProcessRule) -> _Rule:
    names = tuple((p, compile_glob(p, path=False, ignore_case=True)) for p in rule.names)
    paths = tuple((p, compile_glob(p, path=True, ignore_case=False)) for p in rule.paths)
    prefixes = tuple((p, re.compile(glob_prefix_regex(p), re.IGNORECASE)) for p in rule.names)
    return _Rule(
        index=index,
        id=rule.id,
        names=names,
        names_any=compile_globs(rule.names, path=False, ignore_case=True) if names else None,
        name_prefixes=prefixes,
        paths=paths,
        paths_any=compile_globs(rule.paths, path=True, ignore_case=False) if paths else None,
        cmdline=tuple((p, compile_cmdline_regex(p)) for p in rule.cmdline),
        sha256=frozenset(h.lower() for h in rule.sha256),
        programs=(
            compile_globs(rule.programs, path=False, ignore_case=True) if rule.programs else None
        ),
        program_prefixes=tuple(
            re.compile(glob_prefix_regex(p), re.IGNORECASE) for p in rule.programs
        ),
    )


class ProcessMatcher:
    """All process rules of a policy, compiled; :meth:`match` says which rules a process hits."""

    __slots__ = ("_any_name", "_any_path", "_any_prefix", "_cmdline_rules", "_rules", "_sha256")

    def __init__(self, rules: Iterable[ProcessRule]) -> None:
        rule_list = list(rules)
        self._rules = tuple(_compile_rule(i, r) for i, r in enumerate(rule_list))
        all_names = tuple(p for r in rule_list for p in r.names)
        all_paths = tuple(p for r in rule_list for p in r.paths)
        self._any_name = (
            compile_globs(all_names, path=False, ignore_case=True) if all_names else None
        )
        self._any_prefix = (
            re.compile("|".join(glob_prefix_regex(p) for p in all_names), re.IGNORECASE)
            if all_names
            else None
        )
        self._any_path = (
            compile_globs(all_paths, path=True, ignore_case=False) if all_paths else None
        )
        self._cmdline_rules = tuple(r for r in self._rules if r.cmdline)
        sha: dict[str, list[int]] = {}
        for r in self._rules:
            for digest in r.sha256:
                sha.setdefault(digest, []).append(r.index)
        self._sha256 = {k: tuple(v) for k, v in sha.items()}

    @classmethod
    def from_rules(cls, rules: Iterable[ProcessRule]) -> ProcessMatcher:
        return cls(rules)

    @property
    def needs_sha256(self) -> bool:
        """True when some rule lists executable hashes (hashing is costly; skip it otherwise)."""
        return bool(self._sha256)

    def __len__(self) -> int:
        return len(self._rules)

    def match(self, facts: ProcessFacts) -> list[ProcessMatch]:
        """One match per rule that the process violates, in policy order.

        For each rule the first field that matches explains it, tried in the order name,
        argv0, exe_name, path, sha256, cmdline (cheapest and most specific first).
        """
        exe = clean_exe(facts.exe)
        fields = (
            ("name", facts.name),
            ("argv0", basename(facts.argv0)),
            ("exe_name", basename(exe)),
        )
        names_hit = self._any_name is not None and any(
            v and self._any_name.match(v) for _, v in fields
        )
        comm = facts.name
        maybe_truncated = (
            len(comm) == COMM_MAX
            and not fields[1][1].lower().startswith(comm.lower())
            and not fields[2][1].lower().startswith(comm.lower())
        )
        prefix_hit = (
            maybe_truncated and self._any_prefix is not None and bool(self._any_prefix.match(comm))
        )
        path_hit = bool(exe) and self._any_path is not None and bool(self._any_path.match(exe))
        sha_rules = self._sha256.get(facts.sha256.lower(), ()) if facts.sha256 else ()
        # Most processes hit no prefilter: then only rules with command-line regexes can match.
        rules = (
            self._rules if names_hit or prefix_hit or path_hit or sha_rules else self._cmdline_rules
        )
        if not rules:
            return []

        joined: str | None = None
        arguments: str | None = None
        found: list[ProcessMatch] = []
        for rule in rules:
            hit = None
            if names_hit or prefix_hit:
                hit = _match_names(rule, fields, prefix_hit)
            if hit is None and path_hit and rule.paths_any is not None:
                hit = _match_path(rule, exe)
            if hit is None and rule.index in sha_rules and facts.sha256:
                hit = ProcessMatch(rule.index, rule.id, "sha256", facts.sha256.lower(), exe)
            if hit is None and rule.cmdline and rule.programs is None:
                if joined is None:
                    joined = cmdline_window(facts.cmdline)
                hit = _match_cmdline(rule, joined)
            elif hit is None and rule.programs is not None and _is_program(rule, facts, exe):
                if arguments is None:  # argv[0] is the caller's choice: never judged
                    arguments = cmdline_window(facts.cmdline[1:])
                hit = _match_cmdline(rule, arguments)
            if hit is not None:
                found.append(hit)
        return found


def _match_names(
    rule: _Rule, fields: tuple[tuple[str, str], ...], prefix_hit: bool
) -> ProcessMatch | None:
    if rule.names_any is None:
        return None
    for field, value in fields:
        if value and rule.names_any.match(value):
            for pattern, regex in rule.names:
                if regex.match(value):
                    return ProcessMatch(rule.index, rule.id, field, pattern, value)
    if prefix_hit:
        comm = fields[0][1]
        for pattern, regex in rule.name_prefixes:
            if regex.match(comm):
                return ProcessMatch(rule.index, rule.id, "name", pattern, comm, True)
    return None


def _is_program(rule: _Rule, facts: ProcessFacts, exe: str) -> bool:
    """The process runs one of the rule's programs: its executable's own name, or its comm (the
    name the kernel took from the file exec'd, e.g. a script's; never argv[0]). comm cut to 15
    characters is compared as the start of the program's name."""
    assert rule.programs is not None
    name = basename(exe)
    if name and rule.programs.match(name):
        return True
    comm = facts.name
    if not comm:
        return False
    if rule.programs.match(comm):
        return True
    return len(comm) == COMM_MAX and any(p.match(comm) for p in rule.program_prefixes)


def _match_path(rule: _Rule, exe: str) -> ProcessMatch | None:
    if rule.paths_any is None or not rule.paths_any.match(exe):
        return None
    for pattern, regex in rule.paths:
        if regex.match(exe):
            return ProcessMatch(rule.index, rule.id, "path", pattern, exe)
    return None  # pragma: no cover - the alternation and its parts agree


def _match_cmdline(rule: _Rule, joined: str) -> ProcessMatch | None:
    for pattern, regex in rule.cmdline:
        m = regex.search(joined)
        if m is not None:
            return ProcessMatch(rule.index, rule.id, "cmdline", pattern, m.group(0))
    return None
