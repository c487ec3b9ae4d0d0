"""``proscribe agent run|check|status|events|requeue|quarantine``: the daemon and its evidence.

``run`` takes the state directory's lock (``proscribe.agent.state_lock``) before it builds
anything, so a second agent on the same directory exits 2 naming the first one's pid.
``check`` makes ``run``'s checks and starts nothing (``cli/agent_check.py``; installers use it).
``status`` and ``events`` read the config only to find the state directory; they work whether
or not the daemon runs (status comes from ``status.json`` when the daemon is alive, else from
the spool and the policy state on disk). ``requeue`` puts dead letters back into delivery
(the spool is shared with a running daemon through SQLite's WAL, as ``events`` reads it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proscribe.agent.config import DEFAULT_CONFIG_PATH, AgentConfig, load_agent_config
from proscribe.agent.status_file import daemon_alive, read_status
from proscribe.core.errors import ConfigError, ProscribeError, UsageError

__all__ = ["register"]

STATE_LOCK_WAIT = 3.0  # seconds agent run waits for the state directory's lock


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "agent", help="run the endpoint agent, show its status and events"
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=type(parser))

    run = verbs.add_parser("run", help="run the daemon in the foreground")
    _config_arg(run)
    run.set_defaults(func=cmd_run)

    from .agent_check import register_check

    register_check(verbs, _config_arg)

    status = verbs.add_parser("status", help="sensors, policy, spool depth, drops, last upload")
    _config_arg(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    events = verbs.add_parser("events", help="this host's spooled events (pending and sent)")
    _config_arg(events)
    events.add_argument("--json", action="store_true", help="one JSON array")
    events.add_argument("--limit", type=int, default=50, help="newest N events (default 50)")
    events.set_defaults(func=cmd_events)

    requeue = verbs.add_parser(
        "requeue", help="send dead-lettered events again (once the collector takes them)"
    )
    _config_arg(requeue)
    requeue.add_argument("ids", nargs="*", metavar="ID", help="event ids ('agent events' shows)")
    requeue.add_argument("--all", action="store_true", help="every dead letter in the spool")
    requeue.set_defaults(func=cmd_requeue)

    from .agent_quarantine import register_quarantine

    register_quarantine(verbs, _config_arg)

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        help=f"agent config file (default {DEFAULT_CONFIG_PATH})",
    )


def cmd_run(args: argparse.Namespace) -> int:
    config = load_agent_config(args.config)  # bad config: one line from here, exit 2
    from proscribe.agent.state_lock import StateLock

    # A second agent here: one line naming the first, exit 2. The wait covers `agent status`,
    # which holds the lock for a moment while it reads the directory.
    lock = StateLock(config.state_dir).acquire(wait=STATE_LOCK_WAIT)
    try:
        from proscribe.agent.daemon import build

        if not getattr(args, "verbose", 0):
            logging.getLogger().setLevel(logging.INFO)
        build(config).run()
    finally:
        lock.release()
    return 0


def _status_from_disk(config: AgentConfig) -> dict[str, Any]:
    """Read the state directory while holding its lock, so that an agent starting meanwhile
    waits for us rather than racing with a reader (opening the policy store tidies its
    directory). If an agent holds the lock it is starting: say so and touch nothing."""
    from proscribe.agent.state_lock import StateDirBusy, StateLock

    lock = StateLock(config.state_dir)
    if not config.state_dir.is_dir():  # never ran here (or starting this instant): create nothing
        return _never_ran_status(config)
    try:
        lock.acquire(write_pid=False)
    except StateDirBusy:
        return {
            "running": True,
            "pid": lock.holder(),
            "mode": config.agent.mode,
            "config": str(config.source),
            "starting": True,
            "sensors": {"process": {"state": "starting"}, "dns": {"state": "starting"}},
            "policy": {
                "stale_reason": "the agent holding the state directory wrote no recent status "
                "yet: starting, or not responding"
            },
        }
    except ConfigError:  # cannot even create the lock file here (permissions): read anyway
        return _offline_status(config)
    try:
        return _offline_status(config)
    finally:
        lock.release()


def _never_ran_status(config: AgentConfig) -> dict[str, Any]:
    reason = f"no state directory {config.state_dir} yet: the agent has not run here"
    status: dict[str, Any] = {
        "running": False,
        "mode": config.agent.mode,
        "config": str(config.source),
        "sensors": {"process": {"state": "not running"}, "dns": {"state": "not running"}},
        "spool": {"depth": 0, "bytes": 0, "dropped": {}, "note": "no spool yet"},
        "policy": {"id": None, "stale": True, "stale_reason": reason},
    }
    try:
        from proscribe.agent.daemon import load_trust

        trust = load_trust(config)
    except ProscribeError as err:
        status["policy"] = {"error": str(err)}
        return status
    status["policy"]["last_rejection"] = _file_rejection(config, trust, None, datetime.now(UTC))
    return status


def _offline_status(config: AgentConfig) -> dict[str, Any]:
    """Figures read from disk when the daemon is not running."""
    result: dict[str, Any] = {
        "running": False,
        "mode": config.agent.mode,
        "config": str(config.source),
        "sensors": {"process": {"state": "not running"}, "dns": {"state": "not running"}},
    }
    if config.spool_path.exists():
        from proscribe.agent.spool import Spool

        try:
            spool = Spool(config.spool_path, recover=False)  # never move it from under a daemon
        except ProscribeError as err:
            result["spool"] = {"error": str(err)}
        else:
            try:
                result["spool"] = spool.stats().to_dict()
            finally:
                spool.close()
    else:
        result["spool"] = {"depth": 0, "bytes": 0, "dropped": {}, "note": "no spool yet"}
    try:
        from proscribe.agent.daemon import load_trust
        from proscribe.core.policy.bundle import PolicyStore

        store = PolicyStore(config.state_dir, load_trust(config))
        now = datetime.now(UTC)
        result["policy"] = store.status(now)
        if result["policy"].get("id") is None:
            result["policy"]["last_rejection"] = _file_rejection(
                config, store.trust, store.state(), now
            )
    except (ProscribeError, OSError) as err:
        result["policy"] = {"error": str(err)}
    return result


def _file_rejection(
    config: AgentConfig, trust: Any, state: Any, now: datetime
) -> dict[str, Any] | None:
    """Why the agent would refuse its policy file, judged as the daemon does, changing nothing
    (``agent status`` while the daemon is down: the first question is why nothing is in force)."""
    from proscribe.core.policy.bundle import read_capped, verify_policy_bytes
    from proscribe.core.policy.state import judge_offer

    path = config.policy.file
    try:
        data, sig = read_capped(path), read_capped(config.policy.sig_file)
        policy = verify_policy_bytes(data, sig, trust, str(path))
    except ProscribeError as err:
        return {"kind": type(err).__name__, "reason": str(err), "origin": "file"}
    verdict = judge_offer(
        state,
        policy_id=policy.meta.id,
        serial=policy.meta.serial,
        sha256=policy.sha256,
        expires=policy.meta.expires,
        now=now,
    )
    if verdict.outcome != "reject":
        return None
    return {"kind": verdict.kind, "reason": f"{path}: {verdict.reason}", "origin": "file"}


def trusted_keys(config: AgentConfig, learnt: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The config's trusted keys by key id, each named: by the collector's signer registry
    when the reporter has heard it (``learnt``), else by the comment of its ``.pub`` line
    (keygen writes the key's name there), else unnamed."""
    from proscribe.core.errors import ProscribeError
    from proscribe.core.policy.keys import key_id, parse_public_key

    out: list[dict[str, Any]] = []
    for entry in config.policy.trusted_keys:
        try:
            keyid = key_id(parse_public_key(entry))
        except ProscribeError as err:
            out.append({"keyid": None, "name": None, "error": str(err).splitlines()[0]})
            continue
        comment = _pub_comment(entry)
        registry = (learnt or {}).get(keyid)
        out.append(
            {
                "keyid": keyid,
                "name": registry or comment,
                "named_by": "collector signer registry"
                if registry
                else (".pub comment" if comment else None),
            }
        )
    return out


def _pub_comment(entry: str) -> str | None:
    text = entry.strip()
    if not text.startswith("ed25519:"):
        try:
            lines = Path(text).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return None
        text = next((ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")), "")
    parts = text.split(None, 1)
    return parts[1].strip()[:200] if len(parts) == 2 and parts[1].strip() else None


def cmd_status(args: argparse.Namespace) -> int:
    config = load_agent_config(args.config)
    saved = read_status(config.status_path)
    if saved is not None and daemon_alive(saved):
        status = dict(saved, running=True)
    else:
        status = _status_from_disk(config)
        if saved is not None:
            status["last_status_at"] = saved.get("written_at")
    reporter = status.get("reporter") if isinstance(status.get("reporter"), dict) else None
    learnt = (reporter or {}).get("signer_names")
    status["trusted_keys"] = trusted_keys(config, learnt if isinstance(learnt, dict) else None)
    if args.json:
        json.dump(status, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
        return 0
    _print_status(status)
    return 0


def _when(value: Any) -> str:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value) if value else "never"


def _print_status(status: dict[str, Any]) -> None:
    out = sys.stdout
    running = status.get("running")
    pid = f" (pid {status.get('pid')})" if running else ""
    out.write(f"agent:     {'running' if running else 'not running'}{pid}, ")
    out.write(f"mode {status.get('mode')}\n")
    if not running and status.get("last_status_at"):
        out.write(f"           last status written {_when(status['last_status_at'])}\n")
    sensors = status.get("sensors", {})
    for name in ("process", "dns"):
        info = sensors.get(name) or {}
        state = info.get("state", "?")
        backend = info.get("backend")
        extra = f" ({backend})" if backend and backend != state else ""
        detail = f" — {info['detail']}" if info.get("detail") else ""
        out.write(f"sensor:    {name}: {state}{extra}{detail}\n")
    models = sensors.get("models")
    if isinstance(models, dict) and models.get("state"):
        counts = ""
        if models.get("state") == "running":
            counts = (
                f" ({models.get('stores_watched', 0)} stores watched, "
                f"{models.get('swept', 0)} files swept, "
                f"{models.get('denied_files', 0)} denied files)"
            )
        out.write(f"sensor:    models: {models['state']}{counts}\n")
    guard = status.get("guard") or {}
    if guard.get("active"):
        kernel = guard.get("kernel") or {}
        why = (
            f" (eBPF guard {kernel.get('state')}: {kernel['detail']})"
            if kernel.get("detail")
            else ""
        )
        if kernel.get("mmap_hook") == "sys_enter":  # the fallback: every system call pays
            fallback = kernel.get("mmap_hook_detail") or "forced"
            why += f" (loader check on sys_enter, every system call pays: {fallback})"
        out.write(f"guard:     {guard['active']}{why}\n")
    dns_lost = (status.get("drops") or {}).get("dns")
    if isinstance(dns_lost, int) and dns_lost:
        out.write(f"dns loss:  {dns_lost} message(s) dropped before the agent saw them\n")
    keys = status.get("trusted_keys") or []
    for i, key in enumerate(keys):
        label = "trust:" if i == 0 else ""
        if key.get("keyid") is None:
            out.write(f"{label:11}{_safe(str(key.get('error')))}\n")
            continue
        name = _safe(str(key["name"])) if key.get("name") else "(unnamed)"
        out.write(f"{label:11}{name} — key {key['keyid'][:16]}…\n")
    policy = status.get("policy", {})
    if policy.get("error"):
        out.write(f"policy:    {policy['error']}\n")
    elif policy.get("id"):
        stale = f"STALE ({policy.get('stale_reason')})" if policy.get("stale") else "current"
        out.write(
            f"policy:    {policy['id']} serial {policy.get('serial')} "
            f"sha256 {str(policy.get('sha256'))[:16]}… expires {policy.get('expires') or 'never'}"
            f" — {stale}\n"
        )
    else:
        out.write(f"policy:    none in force ({policy.get('stale_reason', 'no policy')})\n")
    rejection = policy.get("last_rejection")
    if isinstance(rejection, dict):
        # Why the last offer was refused: the first thing an admin needs when none is in force.
        source = f" from {rejection['origin']}" if rejection.get("origin") else ""
        out.write(
            f"           last rejected{source}: {rejection.get('kind')}: "
            f"{_safe(str(rejection.get('reason')))}\n"
        )
    spool = status.get("spool", {})
    if spool.get("error"):
        out.write(f"spool:     {spool['error']}\n")
    else:
        dropped = spool.get("dropped") or {}
        out.write(
            f"spool:     {spool.get('depth', 0)} pending ({spool.get('bytes', 0)} bytes), "
            f"dropped {sum(dropped.values())}{f' {dropped}' if dropped else ''}, "
            f"dead-lettered {spool.get('dead_lettered', 0)}"
            f"{f' (requeued {requeued})' if (requeued := spool.get('requeued')) else ''}\n"
        )
    drops = (status.get("drops") or {}).get("process_sensor") or {}
    if drops:
        out.write(f"drops:     process sensor {drops}\n")
    enforcement = status.get("enforcement")
    if enforcement:
        out.write(f"actions:   {enforcement}\n")
    out.write(f"upload:    last {_when(status.get('last_upload'))}\n")
    reporter = status.get("reporter") or {}
    if reporter.get("last_error"):
        out.write(f"           last error: {_safe(str(reporter['last_error']))}\n")
    isolating = reporter.get("isolating")
    if isolating:
        out.write(f"           {isolating}\n")


def cmd_events(args: argparse.Namespace) -> int:
    config = load_agent_config(args.config)
    if args.limit < 1:
        raise UsageError("--limit must be at least 1 (fix: pass e.g. --limit 50)")
    if not config.spool_path.exists():
        rows: list[Any] = []
    else:
        from proscribe.agent.spool import Spool

        spool = Spool(config.spool_path, recover=False)
        try:
            rows = spool.recent(args.limit, include_sent=True)
        finally:
            spool.close()
    if args.json:
        payload = [dict(r.event, _state=r.state, _error=r.error, count=r.count) for r in rows]
        json.dump(payload, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    if not rows:
        print("no events")
        return 0
    for r in rows:
        e = r.event
        proc = e.get("process") or {}
        what = (
            proc.get("name")
            or proc.get("exe")
            or (e.get("dns") or {}).get("qname")
            or (e.get("file") or {}).get("path")
            or ""
        )
        pid = f" pid {proc['pid']}" if proc.get("pid") is not None else ""
        count = f" x{r.count}" if r.count > 1 else ""
        why = f"  ({_safe(r.error)})" if r.state == "dead" and r.error else ""
        print(
            f"{e.get('time')}  {r.state:<7} {e.get('kind'):<7} {e.get('action'):<11} "
            f"{e.get('rule') or '-'}  {_safe(what)}{pid}{count}{why}"
        )
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    """Dead letters back into delivery: the running agent (or the next start) sends them in
    their original order; the collector stores an event id once, so nothing is doubled."""
    if bool(args.ids) == bool(args.all):
        raise UsageError(
            "name the dead-lettered events to send again, or --all "
            "(fix: 'proscribe agent events' shows them, state 'dead')"
        )
    config = load_agent_config(args.config)
    if not config.spool_path.exists():
        print(
            f"proscribe: error: {config.spool_path}: no spool yet, so no dead letters",
            file=sys.stderr,
        )
        return 1
    from proscribe.agent.spool import Spool

    spool = Spool(config.spool_path, recover=False)  # never move it from under a daemon
    try:
        requeued = spool.requeue(None if args.all else args.ids)
    finally:
        spool.close()
    print(f"requeued {len(requeued)} dead-lettered event(s); the agent sends them again")
    done = set(requeued)
    missing = [i for i in dict.fromkeys(args.ids) if i not in done]
    if missing:
        print(
            f"proscribe: error: not dead letters in {config.spool_path}: {', '.join(missing)} "
            "(fix: 'proscribe agent events' lists the spool; state 'dead' can be requeued)",
            file=sys.stderr,
        )
        return 1
    return 0


def _safe(text: str) -> str:
    """Show control characters literally instead of letting them drive the terminal."""
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
