"""``proscribe policy lint`` and ``proscribe policy show``.

``lint FILE…`` prints every problem as ``file:line: message (fix: …)`` and exits 1 when there is
any, 0 with ``ok: FILE: N rules, M exemptions`` when the file is clean (after ``warning:`` lines
for process names that match a program installed in this host's system paths — /usr/bin, /bin,
/usr/sbin, /sbin, /usr/local/bin — which a block rule would kill), and 2 when a file cannot
be read at all. ``show FILE [--json]`` summarizes a valid policy for people (rules, what they
match, what they do, the directives they cite, exemptions and expiry) or as JSON for tools; an
invalid file is a usage error there (its problems on stderr, exit 2), since there is nothing to
show.
Text taken from the policy is printed with control characters escaped, so a hostile policy
cannot rewrite the terminal.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proscribe.core.errors import LintIssue
from proscribe.core.policy.globs import compile_glob
from proscribe.core.policy.loader import lint_policy, load_policy, read_policy_bytes
from proscribe.core.policy.model import (
    DomainRule,
    Exemption,
    FileRule,
    ModelRule,
    Policy,
    ProcessRule,
)


def register(verbs: Any) -> None:
    lint = verbs.add_parser(
        "lint",
        help="check policy files: schema and semantic checks, line-numbered",
        description="Print every problem as file:line: message (fix: …). Exit 0 when clean, "
        "1 when problems were found, 2 when a file cannot be read.",
    )
    lint.add_argument("files", type=Path, nargs="+", metavar="FILE")
    lint.set_defaults(func=run_lint)

    show = verbs.add_parser(
        "show",
        help="summarize a policy: rules, exemptions, expiry",
        description="Print what a valid policy denies and exempts, and when it expires. "
        "Exit 2 when the file is not a valid policy (its problems are printed).",
    )
    show.add_argument("file", type=Path, metavar="FILE")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=run_show)


def run_lint(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        data = read_policy_bytes(path)  # PolicyError (exit 2) when missing or unreadable
        issues = lint_policy(data, str(path))
        if issues:
            print("\n".join(_safe(str(issue)) for issue in issues))
            count = len(issues)
            print(f"{path}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
            status = 1
            continue
        policy = load_policy(data, str(path))
        for warning in system_program_clashes(policy, str(path)):
            print(_safe(warning))
        expiry = expiry_warning(policy, datetime.now(UTC))
        if expiry:
            print(_safe(f"warning: {path}: {expiry}"))
        rules, exemptions = len(policy.rules()), len(policy.exemptions)
        print(
            f"ok: {path}: {rules} rule{'s' if rules != 1 else ''}, {exemptions} exemption"
            f"{'s' if exemptions != 1 else ''}"
        )
    return status


EXPIRY_WARNING_DAYS = 30


def expiry_warning(policy: Policy, now: datetime) -> str | None:
    """A warning when the policy has expired or expires within :data:`EXPIRY_WARNING_DAYS`
    (agents refuse an expired policy that is new to them, and drop its exemptions)."""
    expires = policy.meta.expires
    if expires is None:
        return None
    if expires <= now:
        return (
            f"[meta] expires {_time(expires)} is past: agents refuse it as a new policy "
            "(fix: set a later expires, bump the serial and sign again)"
        )
    days = (expires - now).days
    if days < EXPIRY_WARNING_DAYS:
        return (
            f"[meta] expires {_time(expires)}, in {days} day{'s' if days != 1 else ''} "
            "(fix: issue a new serial with a later expires before then)"
        )
    return None


SYSTEM_DIRS = ("/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin")


def system_program_clashes(
    policy: Policy, source: str, dirs: tuple[str, ...] = SYSTEM_DIRS
) -> list[str]:
    """Warnings for process name globs that match a program installed in this host's standard
    system paths: a ``block`` rule would kill it (and with ``kill_children`` what it started)."""
    installed: dict[str, str] = {}
    for directory in dirs:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            installed.setdefault(name.lower(), f"{directory}/{name}")
    warnings = []
    for rule in policy.process:
        for glob in rule.names:
            regex = compile_glob(glob, path=False, ignore_case=True)
            hits = sorted(path for low, path in installed.items() if regex.match(low))
            if not hits:
                continue
            where = f"{source}:{rule.line}" if rule.line else source
            shown = ", ".join(hits[:3]) + (f" and {len(hits) - 3} more" if len(hits) > 3 else "")
            warnings.append(
                f"warning: {where}: rule {rule.id}: name {glob!r} matches {shown}, installed "
                "on this host (fix: drop the name, or qualify it with paths or sha256)"
            )
    return warnings


def run_show(args: argparse.Namespace) -> int:
    data = read_policy_bytes(args.file)
    issues = lint_policy(data, str(args.file))
    if issues:
        # Not lint: show was asked to describe a policy and there is none to describe.
        _print_issues(issues, args.file)
        return 2
    policy = load_policy(data, str(args.file))
    now = datetime.now(UTC)
    if args.json:
        text = json.dumps(policy_to_json(policy, now), indent=2)
    else:
        text = "\n".join(_safe(line) for line in describe(policy, now))
    print(text)
    return 0


def _print_issues(issues: list[LintIssue], path: Path) -> None:
    for issue in issues:
        print(_safe(str(issue)), file=sys.stderr)
    print(f"{path}: not a valid policy (run 'proscribe policy lint {path}')", file=sys.stderr)


# -- human summary ------------------------------------------------------------------------------


def describe(policy: Policy, now: datetime) -> list[str]:
    meta = policy.meta
    lines = [
        f"policy   {meta.id} (serial {meta.serial})",
        f"title    {meta.title}",
        f"issued   {_time(meta.issued)}",
        f"expires  {_expiry(meta.expires, now)}",
        f"sha256   {policy.sha256}",
    ]
    if meta.description:
        lines.append(f"about    {' '.join(meta.description.split())}")
    if meta.references:
        lines.append("directives:")
        for ref in meta.references:
            who = ", ".join(x for x in (ref.authority, ref.issued) if x)
            lines.append(f"  {ref.id}: {ref.title}" + (f" ({who})" if who else ""))
            if ref.url:
                lines.append(f"      {ref.url}")
    lines.append(f"defaults: action {policy.defaults.action}, severity {policy.defaults.severity}")
    rules = policy.rules()
    lines.append(f"rules ({len(rules)}):")
    for rule in rules:
        lines.extend(_describe_rule(rule))
    lines.append(f"exemptions ({len(policy.exemptions)}):")
    for exemption in policy.exemptions:
        lines.extend(_describe_exemption(exemption, now))
    if not policy.exemptions:
        lines.append("  none")
    return lines


def _describe_rule(rule: ProcessRule | DomainRule | FileRule | ModelRule) -> list[str]:
    kind = {ProcessRule: "process", DomainRule: "domain", FileRule: "file", ModelRule: "model"}[
        type(rule)
    ]
    effect = {"block": "BLOCK", "report": "report", "quarantine": "QUARANTINE"}[rule.action]
    lines = [f"  [{kind}] {rule.id}: {effect}, severity {rule.severity}"]
    if isinstance(rule, ProcessRule):
        _criteria(lines, "names (comm/argv0/exe, any case)", rule.names)
        _criteria(lines, "paths", rule.paths)
        _criteria(lines, "cmdline regex", rule.cmdline)
        _criteria(lines, "cmdline only for programs", rule.programs)
        _criteria(lines, "sha256", rule.sha256)
        if rule.kill_children and rule.action == "block":
            lines.append("      also kills its child processes")
    elif isinstance(rule, DomainRule):
        shown = [
            n[1:] + " (exact)" if n.startswith("=") else n + " (+ subdomains)" for n in rule.names
        ]
        _criteria(lines, "domains", tuple(shown))
    elif isinstance(rule, ModelRule):
        _criteria(lines, "families (in name fields, any case)", rule.families)
        _criteria(lines, "architectures", rule.architectures)
        _criteria(lines, "names (model's own name fields)", rule.names)
        _criteria(lines, "blob digests", rule.digests)
        if rule.action == "block":
            lines.append("      stops programs that load it")
        elif rule.action == "quarantine":
            lines.append("      stops programs that load it and moves the file to quarantine")
    else:
        _criteria(lines, "files", rule.globs)
    if rule.directives:
        lines.append(f"      cites: {', '.join(rule.directives)}")
    if rule.message:
        lines.append(f"      message: {rule.message}")
    return lines


def _criteria(lines: list[str], label: str, values: tuple[str, ...]) -> None:
    if values:
        lines.append(f"      {label}: {', '.join(values)}")


def _describe_exemption(exemption: Exemption, now: datetime) -> list[str]:
    rules = "every rule" if "*" in exemption.rules else ", ".join(exemption.rules)
    hosts = ", ".join(exemption.hosts) or "any host"
    users = ", ".join(exemption.users) or "any user"
    until = _expiry(exemption.expires, now) if exemption.expires else "until the policy expires"
    lines = [f"  {exemption.id}: {rules}; hosts {hosts}; users {users}; expires {until}"]
    if exemption.reason:
        lines.append(f"      reason: {exemption.reason}")
    return lines


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _expiry(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never (no expires set)"
    days = (moment - now).days
    if moment <= now:
        return (
            f"{_time(moment)} (EXPIRED {-days} days ago: bans still enforced, exemptions dropped)"
        )
    return f"{_time(moment)} (in {days} days)"


def _safe(text: str) -> str:
    """Escape control characters (ESC, CR, bidi overrides) so policy text prints literally."""
    out = []
    for char in text:
        code = ord(char)
        if (
            code < 0x20
            or code == 0x7F
            or 0x80 <= code < 0xA0
            or 0x202A <= code <= 0x202E
            or (0x2066 <= code <= 0x2069)
        ):
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


# -- JSON ---------------------------------------------------------------------------------------


def policy_to_json(policy: Policy, now: datetime) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return _time(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return table(value)
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    def table(obj: Any) -> dict[str, Any]:
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}

    expires = policy.meta.expires
    return {
        "meta": table(policy.meta),
        "defaults": table(policy.defaults),
        "process": [table(r) for r in policy.process],
        "domain": [table(r) for r in policy.domain],
        "file": [table(r) for r in policy.file],
        "model": [table(r) for r in policy.model],
        "exemptions": [table(e) for e in policy.exemptions],
        "sha256": policy.sha256,
        "source": policy.source,
        "expired": expires is not None and expires <= now,
        "rule_count": len(policy.rules()),
    }
