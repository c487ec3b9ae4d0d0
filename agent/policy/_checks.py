"""Typed reads of one TOML table, and the rule/exemption checks built on them.

:class:`Table` wraps a parsed table with its position; each read checks the type, records a
:class:`LintIssue` on the key's line when it is wrong and returns ``None``, so a builder can go
on and report every problem in one pass.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, cast

from proscribe.agent.errors import LintIssue
from proscribe.agent.policy import names
from proscribe.agent.policy.globs import compile_glob
from proscribe.agent.policy.model import (
    ACTIONS,
    SEVERITIES,
    Action,
    Defaults,
    DomainRule,
    Exemption,
    FileRule,
    ProcessRule,
    Severity,
)
from proscribe.agent.policy.regex_safety import compile_cmdline_regex

if TYPE_CHECKING:
    from proscribe.agent.policy._lines import LineIndex, TableRef
    from proscribe.agent.policy.loader import _PolicyBuilder

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_MAX_TEXT = 4096
MAX_CMDLINE_REGEXES = 1000
_RULE_COMMON = ("id", "action", "severity", "message", "directives", "description")


class Table:
    def __init__(
        self,
        raw: dict[str, Any],
        ref: TableRef,
        kind: str,
        lines: LineIndex,
        source: str,
        issues: list[LintIssue],
    ) -> None:
        self.raw = raw
        self.ref = ref
        self.kind = kind
        self.lines = lines
        self.source = source
        self.issues = issues
        self._arrays: dict[str, list[Table]] = {}

    @property
    def line(self) -> int | None:
        return self.lines.table(self.ref)

    def issue(self, key: str | None, message: str, fix: str = "") -> None:
        line = self.lines.key(self.ref, key) if key else self.line
        self.issues.append(LintIssue(self.source, line, f"{self.kind}: {message}", fix))

    def unknown_keys(self, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        for key in self.raw:
            if key in allowed:
                continue
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            fix = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
            self.issue(key, f"unknown key {key!r}", fix)

    def _get(self, key: str, required: bool) -> Any:
        if key not in self.raw:
            if required:
                self.issue(None, f"missing required key {key!r}", f"add {key} = …")
            return None
        return self.raw[key]

    def subtable(self, key: str, *, required: bool) -> Table | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.issue(key, f"{key!r} must be a table", f"write it as [{key}]")
            return None
        return Table(value, (key, 0), f"[{key}]", self.lines, self.source, self.issues)

    def array(self, key: str) -> list[Table]:
        if key in self._arrays:
            return self._arrays[key]
        found: list[Table] = []
        value = self.raw.get(key)
        qualified = f"{self.ref[0]}.{key}" if self.ref[0] else key
        if value is not None:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                self.issue(key, f"{key!r} must be an array of tables", f"write [[{qualified}]]")
            else:
                for index, item in enumerate(value):
                    label = f"[[{qualified}]] #{index + 1}"
                    ident = item.get("id")
                    if isinstance(ident, str) and ident:
                        label = f"[[{qualified}]] {ident!r}"
                    found.append(
                        Table(item, (qualified, index), label, self.lines, self.source, self.issues)
                    )
        self._arrays[key] = found
        return found

    def integer(self, key: str, *, required: bool = False) -> int | None:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.issue(key, f"{key!r} must be an integer, not {_toml_type(value)}", "e.g. 1")
            return None
        return value

    def boolean(self, key: str) -> bool | None:
        value = self._get(key, False)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.issue(key, f"{key!r} must be true or false, not {_toml_type(value)}")
            return None
        return value

    def text(self, key: str, *, required: bool = False) -> str | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, str):
            self.issue(key, f"{key!r} must be a string, not {_toml_type(value)}", 'use "…"')
            return None
        if len(value) > _MAX_TEXT:
            self.issue(key, f"{key!r} is longer than {_MAX_TEXT} characters", "shorten it")
            return None
        if required and not value.strip():
            self.issue(key, f"{key!r} is empty", "give it a value")
            return None
        return value

    def identifier(self, key: str, *, required: bool = False) -> str | None:
        value = self.text(key, required=required)
        if value is not None and not _ID.match(value):
            self.issue(
                key,
                f"{key} {value!r} is not a valid id",
                "use letters, digits, '.', '_', ':' or '-', starting with a letter or digit",
            )
            return None
        return value

    def date_text(self, key: str) -> str:
        value = self._get(key, False)
        if value is None:
            return ""
        if isinstance(value, date | str) and not isinstance(value, datetime):
            return str(value)
        if isinstance(value, datetime):
            return value.isoformat()
        self.issue(key, f"{key!r} must be a date such as 2025-01-24, not {_toml_type(value)}")
        return ""

    def instant(self, key: str, *, required: bool = False) -> datetime | None:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                self.issue(
                    key,
                    f"{key} {value.isoformat()} has no time zone",
                    f"add a zone, e.g. Z: {key} = {value.isoformat()}Z",
                )
                return None
            try:
                return value.astimezone(UTC)
            except OverflowError:
                self.issue(key, f"{key} {value.isoformat()} is out of range", "use a real date")
                return None
        if isinstance(value, date):
            self.issue(
                key,
                f"{key} {value.isoformat()} is a date without a time and zone",
                f"add a zone, e.g. Z: {key} = {value.isoformat()}T00:00:00Z",
            )
            return None
        self.issue(
            key,
            f"{key!r} must be a date-time with a zone, not {_toml_type(value)}",
            f"e.g. {key} = 2025-01-24T00:00:00Z (no quotes)",
        )
        return None

    def choice(self, key: str, allowed: tuple[str, ...]) -> str | None:
        value = self.text(key)
        if value is not None and value not in allowed:
            self.issue(
                key, f"{key} {value!r} is not one of {', '.join(allowed)}", f"use {allowed[0]!r}"
            )
            return None
        return value

    def action(self, key: str) -> Action | None:
        return cast("Action | None", self.choice(key, ACTIONS))

    def severity(self, key: str) -> Severity | None:
        return cast("Severity | None", self.choice(key, SEVERITIES))

    def strings(self, key: str, *, required: bool = False, empty_ok: bool = True) -> list[str]:
        value = self._get(key, required)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.issue(key, f"{key!r} must be a list of strings", f'{key} = ["…"]')
            return []
        if not value and not empty_ok:
            self.issue(key, f"{key!r} is an empty list", f"list at least one value or drop {key}")
        out: dict[str, None] = {}  # ordered set: duplicates dropped, order kept
        for item in value:
            if not item.strip():
                self.issue(key, f"{key!r} contains an empty string", "remove it")
            else:
                out[item] = None
        return list(out)


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, datetime | date):
        return "a date"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


class RuleBuilder:
    """Builds rules and exemptions; checks ids, directives and criteria across the policy."""

    def __init__(self, owner: _PolicyBuilder, defaults: Defaults, references: set[str]) -> None:
        self.owner = owner
        self.defaults = defaults
        self.references = references
        self.rule_ids: set[str] = set()
        self.exemption_ids: set[str] = set()
        self.regex_count = 0

    def _common(self, t: Table) -> tuple[str | None, Action, Severity, str, tuple[str, ...], str]:
        rule_id = t.identifier("id", required=True)
        if rule_id is not None:
            if rule_id in self.rule_ids:
                t.issue("id", f"duplicate rule id {rule_id!r}", "rule ids must be unique")
            self.rule_ids.add(rule_id)
        action = t.action("action") or self.defaults.action
        severity = t.severity("severity") or self.defaults.severity
        message = t.text("message") or ""
        description = t.text("description") or ""
        directives = t.strings("directives")
        for directive in directives:
            if directive not in self.references:
                known = ", ".join(sorted(self.references)) or "none defined"
                t.issue(
                    "directives",
                    f"directive {directive!r} is not a [[meta.reference]] id",
                    f"add a [[meta.reference]] with id = {directive!r} (known: {known})",
                )
        return rule_id, action, severity, message, tuple(directives), description

    def process(self, t: Table) -> ProcessRule | None:
        t.unknown_keys((*_RULE_COMMON, "names", "paths", "cmdline", "sha256", "kill_children"))
        rule_id, action, severity, message, directives, description = self._common(t)
        globs_names = _globs(t, "names", path=False, ignore_case=True)
        globs_paths = _globs(t, "paths", path=True, ignore_case=False)
        cmdline = t.strings("cmdline")
        self.regex_count += len(cmdline)
        if self.regex_count > MAX_CMDLINE_REGEXES:
            # Every process start is searched with every pattern: keep that cost bounded.
            if self.regex_count - len(cmdline) <= MAX_CMDLINE_REGEXES:
                t.issue(
                    "cmdline",
                    f"more than {MAX_CMDLINE_REGEXES} command-line regexes in the policy",
                    "merge patterns or use names, paths and sha256 instead",
                )
            cmdline = []
        for pattern in cmdline:
            try:
                compile_cmdline_regex(pattern)
            except ValueError as err:
                t.issue("cmdline", f"regex {pattern!r}: {err}", "see policies/README.md, regexes")
        digests = []
        for digest in t.strings("sha256"):
            if not _SHA256.match(digest):
                t.issue("sha256", f"{digest!r} is not 64 hex characters", "use sha256sum output")
            else:
                digests.append(digest.lower())
        kill_children = t.boolean("kill_children") or False
        if not (globs_names or globs_paths or cmdline or digests or _has_any(t, "process")):
            t.issue(None, "rule has no criteria", "give names, paths, cmdline or sha256")
        if rule_id is None:
            return None
        return ProcessRule(
            rule_id,
            tuple(globs_names),
            tuple(globs_paths),
            tuple(cmdline),
            tuple(dict.fromkeys(digests)),
            action,
            severity,
            message,
            directives,
            description,
            kill_children,
            t.line,
        )

    def domain(self, t: Table) -> DomainRule | None:
        t.unknown_keys((*_RULE_COMMON, "names"))
        rule_id, action, severity, message, directives, description = self._common(t)
        normalized: dict[str, None] = {}  # ordered set
        for name in t.strings("names", required=True):
            exact = name.startswith("=")
            try:
                value = names.normalize_domain(name[1:] if exact else name)
            except ValueError as err:
                t.issue("names", f"domain {err}", "write a name such as deepseek.com")
                continue
            if "." not in value:
                t.issue(
                    "names",
                    f"domain {name!r} has one label and would cover a whole top-level domain",
                    "list the organization's own name, e.g. deepseek.com",
                )
                continue
            entry = f"={value}" if exact else value
            normalized[entry] = None
        if not normalized and "names" in t.raw and not _has_any(t, "domain"):
            t.issue("names", "rule has no domain names", "list at least one name")
        if rule_id is None:
            return None
        return DomainRule(
            rule_id, tuple(normalized), action, severity, message, directives, description, t.line
        )

    def file(self, t: Table) -> FileRule | None:
        t.unknown_keys((*_RULE_COMMON, "globs"))
        explicit_action = t.raw.get("action")
        rule_id, _action, severity, message, directives, description = self._common(t)
        globs = _globs(t, "globs", path=True, ignore_case=False, required=True)
        if not globs and "globs" in t.raw and not _has_any(t, "file"):
            t.issue("globs", "rule has no globs", "list at least one path glob")
        if explicit_action == "block":
            # A "block" default does not make file rules invalid: they simply report.
            t.issue(
                "action",
                "file rules report only; blocking files is not built",
                'set action = "report" on this file rule',
            )
        if rule_id is None:
            return None
        return FileRule(
            rule_id, tuple(globs), "report", severity, message, directives, description, t.line
        )

    def exemption(self, t: Table) -> Exemption | None:
        t.unknown_keys(("id", "rules", "hosts", "users", "expires", "reason"))
        ex_id = t.identifier("id", required=True)
        if ex_id is not None:
            if ex_id in self.exemption_ids:
                t.issue("id", f"duplicate exemption id {ex_id!r}", "exemption ids must be unique")
            self.exemption_ids.add(ex_id)
        rules = t.strings("rules", required=True, empty_ok=False)
        for rule in rules:
            if rule != "*" and rule not in self.rule_ids:
                close = difflib.get_close_matches(rule, sorted(self.rule_ids), n=1)
                fix = f"did you mean {close[0]!r}?" if close else 'name a rule id, or "*"'
                t.issue("rules", f"exemption names unknown rule {rule!r}", fix)
        hosts = _globs(t, "hosts", path=False, ignore_case=True, empty_ok=False)
        users = t.strings("users", empty_ok=False)
        expires = t.instant("expires")
        reason = t.text("reason") or ""
        if ex_id is None or not rules:
            return None
        return Exemption(
            ex_id,
            tuple(rules),
            tuple(hosts),
            tuple(users),
            expires,
            reason,
            t.line,
        )


def _globs(
    t: Table,
    key: str,
    *,
    path: bool,
    ignore_case: bool,
    required: bool = False,
    empty_ok: bool = True,
) -> list[str]:
    good = []
    for pattern in t.strings(key, required=required, empty_ok=empty_ok):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                compile_glob(pattern, path=path, ignore_case=ignore_case)
        except ValueError as err:
            t.issue(key, f"bad glob: {err}", "see policies/README.md, globs")
            continue
        if caught:
            # Python's `re` reserves "&&", "||", "~~" and "--" inside [...] for set operations.
            t.issue(
                key,
                f"bad glob: {pattern!r}: a doubled '&', '|', '~' or '-' in [...] is ambiguous",
                "write the character once",
            )
            continue
        good.append(pattern)
    return good


_CRITERIA = {
    "process": ("names", "paths", "cmdline", "sha256"),
    "domain": ("names",),
    "file": ("globs",),
}


def _has_any(t: Table, kind: str) -> bool:
    """True when some criterion was given but rejected (its own issue already says so)."""
    return any(key in t.raw and t.raw[key] != [] for key in _CRITERIA[kind])
