"""``proscribe demo``: the whole job, end to end, on this machine — touching nothing else.

It runs the real commands a fleet uses, as subprocesses, in a throwaway directory:

1. a throwaway signing key (``proscribe keygen``) signs the demo's copy of the US Navy DeepSeek
   pack, **scoped to the work directory** (``cli/demo_policy.py``): its process rules match only
   programs under that directory, so a ``deepseek`` running elsewhere on the machine is never
   touched;
2. a collector (``proscribe collector serve``) on 127.0.0.1 with SQLite, an enroll secret, a
   compliance officer's account (viewer) and an IT admin's (admin), the signed policy uploaded;
3. an agent (``proscribe agent run``) in enforce mode that enrolls itself. Its DNS sensor is
   its own resolver (the proxy) on a private loopback port that nothing but the demo asks, and
   the encrypted-DNS watch is off: passive capture and that watch see every program on the
   machine, and the demo must neither report nor answer for them;
4. a simulated violation: a copy of ``sleep`` named ``deepseek`` is started in the work
   directory (the agent kills it) and the demo asks the proxy for ``chat.deepseek.com``
   (answered NXDOMAIN, Extended DNS Error 15 "Blocked");
5. the violations as the collector stores them, the report, and the dashboard URL (only while
   the demo keeps running: with ``--once`` the collector stops with it).

Ctrl-C stops everything it started (by pid) and removes the directory unless ``--keep``.
As root the process sensor is netlink; otherwise the polling sensor, and it says so.
A step that fails or outlasts ``--timeout`` ends the demo with one line and exit status 1.
"""

from __future__ import annotations

import argparse
import base64
import importlib.resources
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode

from proscribe.core.errors import UsageError

from .demo_policy import scoped_pack
from .demo_runner import (
    PROSCRIBE,
    DemoFailed,
    DemoRun,
    field_value,
    free_port,
    http_json,
    say,
    wait_for,
    workspace,
)

__all__ = ["register"]

PACK = "us-navy-deepseek-2025.toml"
DENIED_NAME = "chat.deepseek.com"


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="run the whole job on this machine: collector, agent, a violation, report",
        description="Everything the demo enforces is scoped to its own work directory and its "
        "own DNS proxy: nothing else on the machine is killed or reported. Exit 0 when it ran, "
        "1 when a step failed or outlasted --timeout, 2 for bad flags.",
    )
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp)")
    parser.add_argument(
        "--port", type=_port, default=0, help="collector port (default: a free one)"
    )
    parser.add_argument(
        "--once", action="store_true", help="stop after showing the results instead of waiting"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    parser.add_argument(
        "--timeout", type=_seconds, default=60.0, help="seconds to wait per step (default 60)"
    )
    parser.add_argument(
        "--unprivileged",
        action="store_true",
        help="behave as when not root (polling process sensor) even as root",
    )
    parser.set_defaults(func=run)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 3600 seconds")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0 = a free one)")
    return int(text)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    if args.dir is not None and args.dir.exists() and not args.dir.is_dir():
        raise UsageError(f"--dir {args.dir}: not a directory (fix: name a new directory)")
    # Ctrl-C, and a plain `kill` too, stop everything the demo started (its children run in
    # their own session, so nothing else would). Installed explicitly: a shell that starts the
    # demo in the background leaves SIGINT ignored, and SIGTERM would end Python at once.
    with workspace(args.dir, args.keep) as work:
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        demo = DemoRun(work=work.resolve(), timeout=args.timeout)
        root = hasattr(os, "geteuid") and os.geteuid() == 0 and not args.unprivileged
        try:
            return _run(demo, args, root)
        except KeyboardInterrupt as stop:
            print()
            say("stopping", f"({stop.args[0] if stop.args else 'Ctrl-C'}): agent and collector")
            return 0
        except OSError as err:  # the demo's own collector or proxy did not answer
            raise DemoFailed(f"demo: {err} (the logs are in {work}; rerun with --keep)") from err
        finally:
            demo.stop_all()
            if args.keep or args.dir is not None:
                print(f"work directory kept: {work}")


def _run(demo: DemoRun, args: argparse.Namespace, root: bool) -> int:
    work = demo.work
    process_note = "root: netlink process sensor" if root else "not root: polling process sensor"
    say("Proscribe demo", f"in {work} ({process_note}, DNS through the agent's own proxy)")

    # 1. The pack, scoped to this directory, signed with a throwaway key.
    demo.cli("keygen", str(work / "demo-throwaway-signer"))
    pub = (work / "demo-throwaway-signer.pub").read_text().split()[0]
    policy = work / "policy.toml"
    pack = importlib.resources.files("proscribe.policies").joinpath(PACK).read_bytes()
    scoped = scoped_pack(pack, work)
    policy.write_text(scoped.text, encoding="utf-8")
    demo.cli("policy", "sign", str(policy), "--key", str(work / "demo-throwaway-signer.key"))
    demo.cli("policy", "verify", str(policy), "--trust", pub)
    say("policy", f"{PACK} signed with a throwaway key ({pub[:20]}…) and verified")
    say(
        "scoped",
        f"enforced as {scoped.policy_id}: process rules match only programs under {work}; "
        f"left out (they would match anywhere): {', '.join(scoped.left_out) or 'none'}",
    )

    # 2. The collector, with an enroll secret and two people.
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    collector_toml = work / "collector.toml"
    collector_toml.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n\n'
        f'[database]\nurl = "sqlite:///{work / "collector.db"}"\n\n'
        f'[policy]\ntrusted_keys = ["{pub}"]\nthreshold = 1\n'
    )
    cfg = ("--config", str(collector_toml))
    demo.cli("collector", "migrate", *cfg)
    secret = demo.cli("collector", "enroll-secret", "create", *cfg, "--label", "demo")
    (work / "enroll.secret").write_text(secret.strip().splitlines()[0] + "\n")
    (work / "enroll.secret").chmod(0o600)
    officer = demo.cli("collector", "user", "add", "officer", "--role", "viewer", *cfg)
    admin = demo.cli("collector", "user", "add", "it-admin", "--role", "admin", *cfg)
    officer_password = field_value(officer, "password")
    officer_token = field_value(officer, "api token")
    admin_token = field_value(admin, "api token")
    collector = demo.spawn("collector", "collector", "serve", *cfg)

    def healthy() -> bool:
        if collector.poll() is not None:
            raise DemoFailed(f"demo: the collector exited:\n{demo.tail('collector')}")
        try:
            return http_json(f"{base}/healthz")[0] == 200
        except OSError:
            return False

    wait_for("the collector to answer /healthz", demo.timeout, healthy)
    status, body = http_json(
        f"{base}/api/v1/policy",
        admin_token,
        "PUT",
        {
            "policy": base64.b64encode(policy.read_bytes()).decode(),
            "signature": base64.b64encode(Path(f"{policy}.sig").read_bytes()).decode(),
        },
    )
    if status != 200:
        raise DemoFailed(f"demo: uploading the policy failed: HTTP {status} {body}")
    say("collector", f"{base} (SQLite), policy uploaded, enroll secret and 2 accounts created")

    # 3. The agent, enforcing, with a DNS proxy only the demo asks.
    dns_port = free_port(socket.SOCK_DGRAM)
    agent_toml = work / "agent.toml"
    agent_toml.write_text(
        f'[agent]\nmode = "enforce"\nstate_dir = "{work / "agent-state"}"\n'
        "status_interval = 0.5\n\n"
        f'[policy]\nfile = "{policy}"\ntrusted_keys = ["{pub}"]\nthreshold = 1\n\n'
        f'[collector]\nurl = "{base}"\nenroll_secret_file = "{work / "enroll.secret"}"\n\n'
        f'[sensors]\nprocess = "{"auto" if root else "poll"}"\npoll_interval = 0.2\n'
        'dns = "proxy"\n\n'
        f'[dns]\nproxy_listen = "127.0.0.1:{dns_port}"\nupstreams = ["127.0.0.1:9"]\n'
        "watch_encrypted = false\n"
    )
    agent = demo.spawn("agent", "agent", "run", "--config", str(agent_toml))
    state = wait_for("the agent to start and enroll", demo.timeout, _agent_ready(demo, agent))
    sensors = ", ".join(
        f"{name}: {info.get('state') if isinstance(info, dict) else info}"
        for name, info in (state.get("sensors") or {}).items()
    )
    say(
        "agent",
        f"enforcing policy serial {state['policy'].get('serial')}, "
        f"agent id {state['reporter']['agent_id']}, sensors ({sensors}), "
        f"DNS proxy on 127.0.0.1:{dns_port}",
    )

    # 4. The violation: a program named like DeepSeek's, and a DNS query for its chat site.
    time.sleep(1.0)  # let the sensors settle before the first exec
    fake = work / "bin" / "deepseek"
    fake.parent.mkdir(exist_ok=True)
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", fake)
    started = time.monotonic()
    victim = subprocess.Popen([str(fake), "300"])
    try:
        victim.wait(timeout=demo.timeout)
        outcome = f"killed by the agent after {(time.monotonic() - started) * 1000:.0f} ms"
    except subprocess.TimeoutExpired:
        victim.kill()
        victim.wait()
        outcome = "NOT killed (see agent.log)"
    say("violation", f"started {fake} 300 -> {outcome}")
    say("violation", f"DNS query for {DENIED_NAME}: {_query(dns_port)}")

    # 5. What the collector holds, the report, the dashboard.
    _show_violations(demo, base, officer_token)
    report = demo.cli("collector", "report", *cfg, "--since", "1h", "--format", "csv")
    (work / "report.csv").write_text(report)
    html = demo.cli("collector", "report", *cfg, "--since", "1h", "--format", "html")
    (work / "report.html").write_text(html)
    say(
        "report",
        f"{work / 'report.csv'} ({len(report.splitlines()) - 1} rows) and the printable "
        f"compliance report {work / 'report.html'}",
    )
    kept = args.keep or args.dir is not None
    if args.once:
        # The collector stops with the demo: a login for it would be dead on arrival.
        later = (
            f"; to browse it later: proscribe collector serve --config {collector_toml}, then "
            f"{base}/ as officer / {officer_password}"
            if kept
            else " (run without --once to browse it)"
        )
        say("dashboard", f"stopped with the demo{later}")
        return 0
    say("dashboard", f"{base}/  (log in as officer / {officer_password})")
    keep = "kept" if kept else "removed (use --keep to keep it)"
    say("running", f"press Ctrl-C to stop the collector and the agent; {work} is then {keep}")
    while all(p.poll() is None for p in demo.procs):
        time.sleep(0.5)
    raise DemoFailed(f"demo: a component exited unexpectedly; see the logs in {work}")


def _agent_ready(demo: DemoRun, agent: subprocess.Popen[bytes]) -> Any:
    agent_toml = demo.work / "agent.toml"

    def ready() -> dict[str, Any] | None:
        if agent.poll() is not None:
            raise DemoFailed(f"demo: the agent exited:\n{demo.tail('agent')}")
        try:
            out = subprocess.run(
                [*PROSCRIBE, "agent", "status", "--json", "--config", str(agent_toml)],
                check=False,
                capture_output=True,
                text=True,
                timeout=demo.timeout,
            )
        except subprocess.TimeoutExpired:
            return None
        if out.returncode != 0:
            return None
        state: dict[str, Any] = json.loads(out.stdout)
        reporter = state.get("reporter") or {}
        ok = state.get("running") and reporter.get("agent_id") and state.get("policy")
        return state if ok else None

    return ready


def _show_violations(demo: DemoRun, base: str, token: str) -> list[dict[str, Any]]:
    def violations() -> list[dict[str, Any]] | None:
        code, body = http_json(f"{base}/api/v1/violations?since=1h", token)
        items: list[dict[str, Any]] = body.get("items") or [] if isinstance(body, dict) else []
        kinds = {item.get("kind") for item in items}
        return items if code == 200 and {"process", "dns"} <= kinds else None

    items: list[dict[str, Any]] = []
    try:
        items = wait_for("both violations at the collector", demo.timeout, violations)
    except DemoFailed:
        say("warning", "not every violation reached the collector in time; see agent.log")
        print(demo.tail("agent", 20))
    say("collector", f"{len(items)} violation(s) stored:")
    for item in items:
        proc = item.get("process") or {}
        qname = (item.get("dns") or {}).get("qname")
        by = f"pid {proc.get('pid')} {proc.get('exe') or proc.get('name') or ''}".strip()
        what = f"{qname} (asked by {by})" if qname else by
        print(
            f"    {item.get('time', '')[:19]}  {item.get('kind', ''):8} {item.get('action', ''):10}"
            f" rule={item.get('rule')}  {what}"
        )
    return items


def _query(port: int) -> str:
    """Ask the agent's proxy for the denied name, the way an application's resolver would."""
    query = dns.message.make_query(DENIED_NAME, "A", use_edns=0)
    try:
        answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=3)
    except (OSError, dns.exception.DNSException) as err:
        return f"no answer from the proxy ({err})"
    ede = [opt for opt in answer.options if getattr(opt, "code", None) == 15]
    note = f", EDE 15 Blocked: {ede[0].text}" if ede else ""
    return f"answered {dns.rcode.to_text(answer.rcode())} by the agent's proxy{note}"
