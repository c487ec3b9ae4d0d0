"""Rules and exemptions of a policy, built from checked tables.

:class:`RuleBuilder` turns ``[[process]]``, ``[[domain]]``, ``[[file]]`` and ``[[exemption]]``
tables into model objects and checks what spans tables: unique ids, cited directives, exemptions
naming known rules, the total number of command-line regexes.
"""

from __future__ import annotations

import difflib
import re
import warnings
from typing import TYPE_CHECKING, cast

from proscribe.core.models.identity import normalize
from proscribe.core.policy import names
from proscribe.core.policy._checks import Table
from proscribe.core.policy.globs import compile_glob
from proscribe.core.policy.model import (
    MODEL_ACTIONS,
    Action,
    Defaults,
    DomainRule,
    Exemption,
    FileRule,
    ModelAction,
    ModelRule,
    ProcessRule,
    Severity,
)
from proscribe.core.policy.regex_safety import compile_cmdline_regex

if TYPE_CHECKING:
    from proscribe.core.policy.loader import _PolicyBuilder

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_CMDLINE_REGEXES = 1000
_RULE_COMMON = ("id", "action", "severity", "message", "directives", "description")


class RuleBuilder:
    """Builds rules and exemptions; checks ids, directives and criteria across the policy."""

    def __init__(self, owner: _PolicyBuilder, defaults: Defaults, references: set[str]) -> None:
        self.owner = owner
        self.defaults = defaults
        self.references = references
        self.rule_ids: set[str] = set()
        self.exemption_ids: set[str] = set()
        self.regex_count = 0

    def _common(
        self, t: Table, actions: tuple[str, ...] = ()
    ) -> tuple[str | None, Action, Severity, str, tuple[str, ...], str]:
        rule_id = t.identifier("id", required=True)
        if rule_id is not None:
            if rule_id in self.rule_ids:
                t.issue("id", f"duplicate rule id {rule_id!r}", "rule ids must be unique")
            self.rule_ids.add(rule_id)
        # a model rule reads its own action (one more choice); others read it here
        action = self.defaults.action if actions else (t.action("action") or self.defaults.action)
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
        t.unknown_keys(
            (*_RULE_COMMON, "names", "paths", "cmdline", "sha256", "kill_children", "programs")
        )
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
        programs = _globs(t, "programs", path=False, ignore_case=True)
        if programs and not cmdline:
            t.issue(
                "programs",
                "programs only says which programs the cmdline regexes apply to",
                "add cmdline regexes, or ban the programs themselves with names",
            )
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
            tuple(programs),
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

    def model(self, t: Table) -> ModelRule | None:
        t.unknown_keys((*_RULE_COMMON, "families", "architectures", "names", "digests"))
        rule_id, default, severity, message, directives, description = self._common(
            t, actions=MODEL_ACTIONS
        )
        action = cast("ModelAction", t.choice("action", MODEL_ACTIONS) or default)
        families = []
        for family in t.strings("families"):
            word = normalize(family)
            if len(word) < 3:
                t.issue(
                    "families",
                    f"family {family!r} has fewer than 3 letters or digits",
                    "name the family, e.g. deepseek, qwen, glm (matched inside name fields)",
                )
            else:
                families.append(word)
        architectures = [a.lower() for a in t.strings("architectures")]
        names = _globs(t, "names", path=False, ignore_case=True)
        digests = []
        for digest in t.strings("digests"):
            hexpart = digest.lower().removeprefix("sha256:")
            if not _SHA256.match(hexpart):
                t.issue("digests", f"{digest!r} is not sha256:<64 hex>", "copy it from the store")
            else:
                digests.append(f"sha256:{hexpart}")
        if not (families or architectures or names or digests or _has_any(t, "model")):
            t.issue(None, "rule has no criteria", "give families, architectures, names or digests")
        if rule_id is None:
            return None
        return ModelRule(
            rule_id,
            tuple(dict.fromkeys(families)),
            tuple(dict.fromkeys(architectures)),
            tuple(names),
            tuple(dict.fromkeys(digests)),
            action,
            severity,
            message,
            directives,
            description,
            t.line,
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
            # globs.py escapes "&", "|" and "~"; a doubled "-" is still a range and `re` warns.
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
    "model": ("families", "architectures", "names", "digests"),
}


def _has_any(t: Table, kind: str) -> bool:
    """True when some criterion was given but rejected (its own issue already says so)."""
    return any(key in t.raw and t.raw[key] != [] for key in _CRITERIA[kind])
