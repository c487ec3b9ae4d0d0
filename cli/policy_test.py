"""``proscribe policy test FILE``: what would this policy flag on this host, right now?

A dry run for the person writing a policy: the file is loaded and linted (no signature needed),
this host's processes are listed with psutil, the file globs are expanded for the current
user (their ``$HOME`` and environment) and that user's model stores are read by content
(``[[model]]`` rules), and every match is printed with its explanation. Nothing
is killed, blocked or reported. Exit 1 when something would violate, 0 when nothing does, 2
when the file is bad.

The command skips its own process (its command line names the policy file, which a broad
command-line rule could match). A process that vanishes or cannot be read while being listed is
counted and skipped; run as root to see every process's executable.
"""

from __future__ import annotations

import argparse
import getpass
import glob
import hashlib
import itertools
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from proscribe.core.errors import LintIssue, PolicyError
from proscribe.core.models.identity import identify
from proscribe.core.models.stores import user_stores
from proscribe.core.models.walk import walk
from proscribe.core.policy.loader import load_policy_file
from proscribe.core.policy.matchers import CompiledPolicy, Decision, ProcessFacts

log = logging.getLogger(__name__)

MAX_FILES_PER_GLOB = 10_000  # a runaway "**" must not make a dry run scan the whole disk
MAX_HASHED_BYTES = 1 << 30
_ATTRS = ["pid", "ppid", "name", "exe", "cmdline", "username", "uids", "create_time"]


def register(verbs: Any) -> None:
    parser: argparse.ArgumentParser = verbs.add_parser(
        "test",
        help="evaluate a policy against this host now (dry run: nothing is killed or blocked)",
        description="List what FILE would flag on this host now: running processes and the "
        "current user's files. Exit 1 if anything would violate, 0 if nothing does.",
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="policy file (TOML)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


@dataclass
class Finding:
    kind: str
    subject: str  # "pid 123 'deepseek' (alice)" or a file path
    decision: Decision


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    processes_seen: int = 0
    processes_unreadable: int = 0
    files_checked: int = 0
    skipped_globs: list[dict[str, str]] = field(default_factory=list)


def run(args: argparse.Namespace) -> int:
    policy = load_policy_file(args.file)
    try:
        compiled = CompiledPolicy.compile(policy)
    except ValueError as err:  # the loader's checks should have caught this already
        raise PolicyError(LintIssue(str(args.file), None, str(err), "run 'policy lint'")) from err
    now = datetime.now(UTC)
    host = socket.gethostname()
    user = _current_user()
    home = os.path.expanduser("~")
    report = Report()
    _check_processes(compiled, host, now, report)
    _check_files(compiled, host, user, home, os.environ, now, report)
    _check_models(compiled, host, user, home, os.environ, now, report)
    violations = [f for f in report.findings if f.decision.exempted_by is None]
    if args.json:
        _print_json(compiled, host, now, report)
    else:
        _print_text(compiled, now, report)
    return 1 if violations else 0


def _current_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


# -- processes --------------------------------------------------------------------------------


def host_processes(needs_sha256: bool, skip_pid: int) -> Iterator[ProcessFacts | None]:
    """Facts for every process this user can see; None for one that could not be read."""
    for proc in psutil.process_iter(_ATTRS, ad_value=None):
        try:
            info = proc.info
            if info["pid"] == skip_pid:
                continue
            cmdline = tuple(info["cmdline"] or ())
            exe = info["exe"] or ""
            uids = info["uids"]
            yield ProcessFacts(
                pid=info["pid"],
                ppid=info["ppid"],
                name=info["name"] or "",
                argv0=cmdline[0] if cmdline else "",
                exe=exe,
                cmdline=cmdline,
                user=info["username"] or "",
                uid=uids.real if uids is not None else None,
                sha256=_hash_file(exe) if needs_sha256 and exe else None,
                start_time=info["create_time"],
            )
        except (psutil.Error, OSError) as err:
            log.debug("skipping pid %s: %s", getattr(proc, "pid", "?"), err)
            yield None


def _hash_file(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size > MAX_HASHED_BYTES:
                return None
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


def _check_processes(compiled: CompiledPolicy, host: str, now: datetime, report: Report) -> None:
    for facts in host_processes(compiled.needs_sha256, os.getpid()):
        if facts is None:
            report.processes_unreadable += 1
            continue
        report.processes_seen += 1
        subject = f"pid {facts.pid} {facts.name!r}" + (f" ({facts.user})" if facts.user else "")
        for decision in compiled.check_process(facts, host, now):
            report.findings.append(Finding("process", subject, decision))


# -- files ------------------------------------------------------------------------------------


def _check_files(
    compiled: CompiledPolicy,
    host: str,
    user: str | None,
    home: str,
    env: Mapping[str, str],
    now: datetime,
    report: Report,
) -> None:
    for exp in compiled.files.expansions(home, env):
        if exp.pattern is None:
            report.skipped_globs.append(
                {"rule": exp.rule_id, "glob": exp.glob, "reason": exp.skipped}
            )
    seen: set[str] = set()
    for pattern in compiled.expand_file_globs(home, env):
        found = glob.iglob(pattern, recursive=True, include_hidden=True)
        for path in itertools.islice(found, MAX_FILES_PER_GLOB):
            if path in seen:
                continue
            seen.add(path)
            report.files_checked += 1
            # the glob module only finds candidates; the matcher decides
            decision = compiled.check_file(path, host, user, now, home=home, env=env)
            if decision is not None:
                report.findings.append(Finding("file", path, decision))


def _check_models(
    compiled: CompiledPolicy,
    host: str,
    user: str | None,
    home: str,
    env: Mapping[str, str],
    now: datetime,
    report: Report,
) -> None:
    """The current user's model stores, read by content (``[[model]]`` rules)."""
    if not len(compiled.models):
        return
    for root, _what in user_stores(home, env):
        for path in walk(root, max_files=MAX_FILES_PER_GLOB):
            report.files_checked += 1
            identity = identify(path)
            if identity is None:
                continue
            decision = compiled.check_model(identity, host, user, now)
            if decision is not None:
                report.findings.append(Finding("model", path, decision))


# -- output -----------------------------------------------------------------------------------


def _print_text(compiled: CompiledPolicy, now: datetime, report: Report) -> None:
    meta = compiled.policy.meta
    out = sys.stdout
    print(f"policy {meta.id} serial {meta.serial} ({compiled.policy.source})", file=out)
    if compiled.stale(now):
        print(
            f"note: the policy expired at {meta.expires}; bans still apply, exemptions do not",
            file=out,
        )
    for f in report.findings:
        d = f.decision
        verdict = f"exempted ({d.exempted_by})" if d.exempted_by else f"would {_verb(d)}"
        print(f"{verdict}: {f.kind} {_safe(f.subject)}: {_safe(d.explanation)}", file=out)
    for s in report.skipped_globs:
        print(f"skipped: rule {s['rule']}: file glob {s['glob']!r}: {s['reason']}", file=out)
    violations = sum(1 for f in report.findings if f.decision.exempted_by is None)
    print(
        f"{violations} would violate; {report.processes_seen} processes checked "
        f"({report.processes_unreadable} unreadable), {report.files_checked} files checked",
        file=out,
    )


def _verb(d: Decision) -> str:
    if d.action == "block":
        return {"process": "kill", "dns": "sinkhole", "file": "report", "model": "block"}[d.kind]
    if d.action == "quarantine":
        return "quarantine"
    return "report"


def _safe(text: str) -> str:
    """Control and bidi characters from process names shown as escapes, never interpreted."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _print_json(compiled: CompiledPolicy, host: str, now: datetime, report: Report) -> None:
    meta = compiled.policy.meta
    document = {
        "policy": {
            "id": meta.id,
            "serial": meta.serial,
            "sha256": compiled.policy.sha256,
            "stale": compiled.stale(now),
        },
        "host": host,
        "time": now.isoformat(),
        "findings": [
            {"kind": f.kind, "subject": f.subject, **asdict(f.decision)} for f in report.findings
        ],
        "violations": sum(1 for f in report.findings if f.decision.exempted_by is None),
        "processes_checked": report.processes_seen,
        "processes_unreadable": report.processes_unreadable,
        "files_checked": report.files_checked,
        "skipped_globs": report.skipped_globs,
    }
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")
