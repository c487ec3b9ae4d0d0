"""``proscribe scan [--policy FILE] [--json] [--report] [--config FILE]``: a one-shot audit.

Checks every running process; for every local user with a home directory, the files the
policy's ``[[file]]`` globs name (``[[file]]`` rules are read only here and by ``policy test``:
the agent does not evaluate them); and the model files in every user's model stores, the system
stores and the agent's ``[models] dirs``, read by content for ``[[model]]`` rules. Each user's
environment is that user's own: ``HOME`` and ``USER`` plus ``HF_HOME``, ``OLLAMA_MODELS`` and the
other store variables read from the environment of that user's running processes. Exit 1 when
something violates (an exempted match does not count), 0 when nothing does, 2 on bad input.
Nothing is killed. With ``--report`` the findings are handed to the agent (its
``state_dir/inbox``), which sends them to the collector as it sends its own events.

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
    parser.add_argument(
        "--report",
        action="store_true",
        help="hand the findings to the agent (--config's state directory), which sends them "
        "to the collector",
    )
    parser.set_defaults(func=run)


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # "process" | "file" | "model"
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


def _environments() -> dict[int, dict[str, str]]:
    """Each user's model-store variables, from that user's own processes (the first set)."""
    from proscribe.agent.sensors.models import user_environments

    uids = {p.pw_uid for p in pwd.getpwall()}
    return {uid: envs[0] for uid, envs in user_environments(Path("/proc"), uids).items() if envs}


def _files(compiled: CompiledPolicy, host: str, now: datetime) -> tuple[list[Finding], int]:
    if not compiled.policy.file:
        return [], 0
    environments = _environments()
    findings: list[Finding] = []
    scanned = 0
    homes: set[str] = set()
    seen: set[str] = set()
    for entry in pwd.getpwall():
        home = entry.pw_dir
        if not home or home in homes or not os.path.isdir(home):
            continue
        homes.add(home)
        env = {**environments.get(entry.pw_uid, {}), "HOME": home, "USER": entry.pw_name}
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


def _models(
    compiled: CompiledPolicy, host: str, now: datetime, dirs: tuple[str, ...]
) -> tuple[list[Finding], int]:
    if not compiled.policy.model:
        return [], 0
    from proscribe.agent.model_guard import file_section
    from proscribe.agent.sensors.models import discover_stores
    from proscribe.core.models.identity import identify
    from proscribe.core.models.walk import walk

    findings: list[Finding] = []
    scanned = 0
    seen: set[tuple[int, int]] = set()
    for store in discover_stores(dirs=dirs):
        for path in walk(store.path):
            try:
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:  # a blob and its snapshot link, a nested store
                continue
            seen.add((st.st_dev, st.st_ino))
            scanned += 1
            identity = identify(path)
            if identity is None:
                continue
            try:
                owner = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                owner = str(st.st_uid)
            decision = compiled.check_model(identity, host, owner, now)
            if decision is not None:
                section = file_section(path, st, owner, identity)
                findings.append(Finding("model", {**section, "user": owner}, decision))
    return findings, scanned


def run(args: argparse.Namespace) -> int:
    policy, origin, host = _load(args)
    compiled = CompiledPolicy.compile(policy)
    now = datetime.now(UTC)
    config = load_agent_config(args.config) if args.report or args.policy is None else None
    process_findings, n_processes = _processes(compiled, host, now)
    file_findings, n_files = _files(compiled, host, now)
    dirs = config.models.dirs if config is not None else ()
    model_findings, n_models = _models(compiled, host, now, dirs)
    findings = process_findings + file_findings + model_findings
    if args.report:
        assert config is not None
        _report(config.state_dir, policy, compiled, host, findings)
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
                "scanned": {"processes": n_processes, "files": n_files, "models": n_models},
                "violations": [f.to_dict() for f in violations],
                "exempted": [f.to_dict() for f in findings if f.decision.exempted_by],
            },
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
    else:
        print(f"policy {policy.meta.id} serial {policy.meta.serial} from {origin}")
        print(
            f"scanned {n_processes} processes, {n_files} files and {n_models} model store files "
            f"on {host}"
        )
        for f in findings:
            what = (
                f"pid {f.subject['pid']} {_safe(f.subject['name'] or f.subject['exe'])} "
                f"({f.subject['user']})"
                if f.kind == "process"
                else _safe(f.subject["path"])
                + (f" ({_safe(f.subject['model']['name'])})" if f.kind == "model" else "")
            )
            label = f"EXEMPT ({f.decision.exempted_by})" if f.decision.exempted_by else "VIOLATION"
            print(f"{label:<10} {f.kind:<7} {what}: {_safe(f.decision.explanation)}")
        print(f"{len(violations)} violation(s)")
    return 1 if violations else 0


def _report(
    state_dir: Path, policy: Policy, compiled: CompiledPolicy, host: str, found: list[Finding]
) -> None:
    """Hand the findings to the agent as events (agent/inbox.py); it sends them."""
    from proscribe.agent.inbox import write_inbox
    from proscribe.core.events import new_event

    events = []
    section = {"id": policy.meta.id, "serial": policy.meta.serial, "sha256": policy.sha256}
    for f in found:
        d = f.decision
        file: dict[str, Any] | None = None
        if f.kind == "file":
            file = {"path": f.subject["path"], "owner": f.subject["user"]}
        elif f.kind == "model":
            file = {k: v for k, v in f.subject.items() if k != "user"}
        events.append(
            new_event(
                f.kind,
                rule=d.rule_id,
                action="exempted" if d.exempted_by else "reported",
                severity=d.severity,
                policy=section,
                process=dict(f.subject) if f.kind == "process" else None,
                file=file,  # the agent adds its host section when it takes them
                detail=f"{d.explanation} (found by proscribe scan)",
            )
        )
    if not state_dir.is_dir():
        raise ConfigError(
            f"{state_dir}: the agent's state directory does not exist (fix: install and start "
            "the agent, or pass the --config it runs with)"
        )
    path = write_inbox(state_dir, events)
    print(f"{len(events)} finding(s) handed to the agent ({path})", file=sys.stderr)


def _safe(text: str) -> str:
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
