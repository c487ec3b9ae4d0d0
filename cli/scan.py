"""``proscribe scan [--policy FILE] [--json] [--config FILE]``: a one-shot audit of this host.

Checks every running process and, for every local user with a home directory, the files the
policy's ``[[file]]`` globs name. Exit 1 when something violates (an exempted match does not
count), 0 when nothing does, 2 on bad input. Nothing is killed or reported to a collector.

Which policy:

* without ``--policy``: the agent's configured policy file, **verified** against the config's
  trusted keys (``policy.file`` + ``.sig``) — the same check the daemon makes;
* with ``--policy FILE``: that file is parsed and linted but its signature is **not** checked —
  for an administrator auditing with a draft policy. Don't rely on it to prove compliance.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import socket
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proscribe.agent.config import DEFAULT_CONFIG_PATH, load_agent_config
from proscribe.core.errors import ConfigError
from proscribe.core.policy.matchers.compiled import CompiledPolicy, Decision
from proscribe.core.policy.model import Policy

__all__ = ["register"]

MAX_FILES_PER_GLOB = 10_000


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "scan",
        help="one-shot audit of running processes and files; exit 1 on a violation",
    )
    parser.add_argument(
        "--policy",
        type=Path,
        help="policy file to use as is, WITHOUT signature check (default: the agent's "
        "configured, verified policy)",
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG_PATH, help="agent config (for its policy)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # "process" | "file"
    subject: dict[str, Any]
    decision: Decision

    def to_dict(self) -> dict[str, Any]:
        d = self.decision
        return {
            "kind": self.kind,
            **self.subject,
            "rule": d.rule_id,
            "action": d.action,
            "severity": d.severity,
            "exempted_by": d.exempted_by,
            "explanation": d.explanation,
        }


def _load(args: argparse.Namespace) -> tuple[Policy, str, str]:
    """The policy, where it came from, and the hostname to judge by."""
    if args.policy is not None:
        from proscribe.core.policy.loader import load_policy_file

        return load_policy_file(args.policy), f"{args.policy} (unverified)", socket.gethostname()
    from proscribe.agent.daemon import load_trust
    from proscribe.core.policy.bundle import read_capped, verify_policy_bytes

    config = load_agent_config(args.config)
    trust = load_trust(config)
    path = config.policy.file
    for needed in (path, config.policy.sig_file):
        if not needed.exists():
            raise ConfigError(
                f"{needed}: the configured policy (policy.file in {config.source}) is missing "
                "(fix: install the signed policy and its .sig, or pass --policy FILE)"
            )
    data = read_capped(path)
    sig = read_capped(config.policy.sig_file)
    policy = verify_policy_bytes(data, sig, trust, str(path))
    return policy, f"{path} (verified)", config.agent.hostname or socket.gethostname()


def _processes(compiled: CompiledPolicy, host: str, now: datetime) -> tuple[list[Finding], int]:
    from proscribe.agent.sensors._poll import psutil_facts
    from proscribe.agent.sensors.enrich import Enricher

    linux = sys.platform.startswith("linux")
    enricher = Enricher() if linux else None
    if linux:
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    else:
        import psutil

        pids = psutil.pids()
    own = os.getpid()
    findings: list[Finding] = []
    scanned = 0
    for pid in pids:
        if pid == own:
            continue
        want = compiled.needs_sha256
        facts = enricher.facts(pid, with_sha256=want) if enricher else psutil_facts(pid)
        if facts is None:
            continue
        scanned += 1
        for decision in compiled.check_process(facts, host, now):
            subject = {
                "pid": facts.pid,
                "name": facts.name,
                "exe": facts.exe,
                "user": facts.user,
                "cmdline": list(facts.cmdline),
            }
            findings.append(Finding("process", subject, decision))
    return findings, scanned


def _files(compiled: CompiledPolicy, host: str, now: datetime) -> tuple[list[Finding], int]:
    if not compiled.policy.file:
        return [], 0
    findings: list[Finding] = []
    scanned = 0
    homes: set[str] = set()
    seen: set[str] = set()
    for entry in pwd.getpwall():
        home = entry.pw_dir
        if not home or home in homes or not os.path.isdir(home):
            continue
        homes.add(home)
        env = {"HOME": home, "USER": entry.pw_name}
        for pattern in compiled.expand_file_globs(home, env):
            for n, path in enumerate(glob.iglob(pattern, recursive=True)):
                if n >= MAX_FILES_PER_GLOB:
                    break
                if path in seen:  # an absolute glob expands the same for every user
                    continue
                seen.add(path)
                scanned += 1
                decision = compiled.check_file(path, host, entry.pw_name, now, home=home, env=env)
                if decision is not None:
                    findings.append(
                        Finding("file", {"path": path, "user": entry.pw_name}, decision)
                    )
    return findings, scanned


def run(args: argparse.Namespace) -> int:
    policy, origin, host = _load(args)
    compiled = CompiledPolicy.compile(policy)
    now = datetime.now(UTC)
    process_findings, n_processes = _processes(compiled, host, now)
    file_findings, n_files = _files(compiled, host, now)
    findings = process_findings + file_findings
    violations = [f for f in findings if f.decision.exempted_by is None]
    if args.json:
        json.dump(
            {
                "policy": {
                    "id": policy.meta.id,
                    "serial": policy.meta.serial,
                    "sha256": policy.sha256,
                    "source": origin,
                    "stale": compiled.stale(now),
                },
                "host": host,
                "scanned": {"processes": n_processes, "files": n_files},
                "violations": [f.to_dict() for f in violations],
                "exempted": [f.to_dict() for f in findings if f.decision.exempted_by],
            },
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
    else:
        print(f"policy {policy.meta.id} serial {policy.meta.serial} from {origin}")
        print(f"scanned {n_processes} processes and {n_files} files on {host}")
        for f in findings:
            what = (
                f"pid {f.subject['pid']} {_safe(f.subject['name'] or f.subject['exe'])} "
                f"({f.subject['user']})"
                if f.kind == "process"
                else _safe(f.subject["path"])
            )
            label = f"EXEMPT ({f.decision.exempted_by})" if f.decision.exempted_by else "VIOLATION"
            print(f"{label:<10} {f.kind:<7} {what}: {_safe(f.decision.explanation)}")
        print(f"{len(violations)} violation(s)")
    return 1 if violations else 0


def _safe(text: str) -> str:
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
