"""``proscribe demo``: the whole job, end to end, on this machine.

It runs the real commands a fleet uses, as subprocesses, in a throwaway directory:

1. a throwaway signing key (``proscribe keygen``) signs a copy of the US Navy DeepSeek pack;
2. a collector (``proscribe collector serve``) on 127.0.0.1 with SQLite, an enroll secret, a
   compliance officer's account (viewer) and an IT admin's (admin), the signed policy uploaded;
3. an agent (``proscribe agent run``) in enforce mode that enrolls itself;
4. a simulated violation: a copy of ``sleep`` named ``deepseek`` is started (the agent kills
   it) and a DNS query for ``chat.deepseek.com`` is made (sinkholed by the proxy, or seen by
   the capture sensor when root);
5. the violations as the collector stores them, the report, and the dashboard URL.

Ctrl-C stops everything it started (by pid) and removes the directory unless ``--keep``.
As root it uses the netlink process sensor and passive DNS capture; otherwise it degrades to
the polling sensor and the DNS proxy on a high port, and says so.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.resources
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode

from proscribe.core.errors import ProscribeError

__all__ = ["register"]

PACK = "us-navy-deepseek-2025.toml"
DENIED_NAME = "chat.deepseek.com"
PROSCRIBE = (sys.executable, "-m", "proscribe.cli")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "demo", help="run the whole job on this machine: collector, agent, a violation, report"
    )
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp)")
    parser.add_argument("--port", type=int, default=0, help="collector port (default: a free one)")
    parser.add_argument(
        "--once", action="store_true", help="stop after showing the results instead of waiting"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait per step")
    parser.add_argument(
        "--unprivileged",
        action="store_true",
        help="behave as when not root (polling sensor, DNS proxy on a high port) even as root",
    )
    parser.set_defaults(func=run)


@dataclass
class _Demo:
    work: Path
    timeout: float
    root: bool = field(default_factory=lambda: hasattr(os, "geteuid") and os.geteuid() == 0)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)

    # -- running the product's own commands -------------------------------------------------
    def cli(self, *args: str) -> str:
        """Run ``proscribe ARGS`` and return its stdout; a failure stops the demo clearly."""
        cmd = [*PROSCRIBE, *args]
        result = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=self.timeout
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise ProscribeError(
                f"demo step 'proscribe {' '.join(args[:3])}' failed: "
                f"{detail[-1] if detail else f'exit {result.returncode}'}"
            )
        return result.stdout

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.work / f"{name}.log").open("wb")
        self.logs.append(log)
        proc = subprocess.Popen(
            [*PROSCRIBE, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for log in self.logs:
            log.close()

    def tail(self, name: str, lines: int = 8) -> str:
        path = self.work / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _say(step: str, text: str = "") -> None:
    print(f"\033[1m==> {step}\033[0m {text}" if sys.stdout.isatty() else f"==> {step} {text}")
    sys.stdout.flush()


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_json(
    url: str, token: str | None = None, method: str = "GET", body: Any = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if not url.startswith("http://127.0.0.1:"):
        raise ProscribeError(f"demo: refusing to call a non-loopback URL {url!r}")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def _wait(what: str, timeout: float, check: Any, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise ProscribeError(f"demo: timed out after {timeout:.0f}s waiting for {what}")


def _field(output: str, label: str) -> str:
    for line in output.splitlines():
        if line.lower().startswith(label):
            return line.split(":", 1)[1].strip()
    raise ProscribeError(f"demo: expected a '{label}' line in: {output.strip()!r}")


@contextlib.contextmanager
def _workspace(path: Path | None, keep: bool) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    work = Path(tempfile.mkdtemp(prefix="proscribe-demo-"))
    try:
        yield work
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    # Ctrl-C, and a plain `kill` too, stop everything the demo started (its children run in
    # their own session, so nothing else would). Installed explicitly: a shell that starts the
    # demo in the background leaves SIGINT ignored, and SIGTERM would end Python at once.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    with _workspace(args.dir, args.keep) as work:
        demo = _Demo(work=work.resolve(), timeout=args.timeout)
        demo.root = demo.root and not args.unprivileged
        try:
            return _run(demo, args)
        except KeyboardInterrupt as stop:
            print()
            _say("stopping", f"({stop.args[0] if stop.args else 'Ctrl-C'}): agent and collector")
            return 0
        finally:
            demo.stop_all()
            if args.keep or args.dir is not None:
                print(f"work directory kept: {work}")


def _run(demo: _Demo, args: argparse.Namespace) -> int:
    work = demo.work
    mode_note = (
        "root: netlink process sensor, passive DNS capture"
        if demo.root
        else "not root: polling process sensor, DNS proxy on a high port"
    )
    _say("Proscribe demo", f"in {work} ({mode_note})")

    # 1. A throwaway signing key signs a copy of the Navy pack.
    demo.cli("keygen", str(work / "demo-throwaway-signer"))
    pub = (work / "demo-throwaway-signer.pub").read_text().split()[0]
    policy = work / "policy.toml"
    policy.write_bytes(importlib.resources.files("proscribe.policies").joinpath(PACK).read_bytes())
    demo.cli("policy", "sign", str(policy), "--key", str(work / "demo-throwaway-signer.key"))
    demo.cli("policy", "verify", str(policy), "--trust", pub)
    _say("policy", f"{PACK} signed with a throwaway key ({pub[:20]}…) and verified")

    # 2. The collector, with an enroll secret and two people.
    port = args.port or _free_port()
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
    officer_password, officer_token = _field(officer, "password"), _field(officer, "api token")
    admin_token = _field(admin, "api token")
    collector = demo.spawn("collector", "collector", "serve", *cfg)

    def healthy() -> bool:
        if collector.poll() is not None:
            raise ProscribeError(f"demo: the collector exited:\n{demo.tail('collector')}")
        try:
            return _http_json(f"{base}/healthz")[0] == 200
        except OSError:
            return False

    _wait("the collector to answer /healthz", demo.timeout, healthy)
    status, body = _http_json(
        f"{base}/api/v1/policy",
        admin_token,
        "PUT",
        {
            "policy": base64.b64encode(policy.read_bytes()).decode(),
            "signature": base64.b64encode(Path(f"{policy}.sig").read_bytes()).decode(),
        },
    )
    if status != 200:
        raise ProscribeError(f"demo: uploading the policy failed: HTTP {status} {body}")
    _say("collector", f"{base} (SQLite), policy uploaded, enroll secret and 2 accounts created")

    # 3. The agent, enforcing.
    dns_port = 53 if demo.root else _free_port(socket.SOCK_DGRAM)
    dns_section = (
        '[sensors]\nprocess = "auto"\ndns = "capture"\n'
        if demo.root
        else '[sensors]\nprocess = "poll"\npoll_interval = 0.2\ndns = "proxy"\n\n'
        f'[dns]\nproxy_listen = "127.0.0.1:{dns_port}"\nupstreams = ["127.0.0.1:9"]\n'
    )
    agent_toml = work / "agent.toml"
    agent_toml.write_text(
        f'[agent]\nmode = "enforce"\nstate_dir = "{work / "agent-state"}"\n'
        "status_interval = 0.5\n\n"
        f'[policy]\nfile = "{policy}"\ntrusted_keys = ["{pub}"]\nthreshold = 1\n\n'
        f'[collector]\nurl = "{base}"\nenroll_secret_file = "{work / "enroll.secret"}"\n\n'
        + dns_section
    )
    agent = demo.spawn("agent", "agent", "run", "--config", str(agent_toml))

    def agent_ready() -> dict[str, Any] | None:
        if agent.poll() is not None:
            raise ProscribeError(f"demo: the agent exited:\n{demo.tail('agent')}")
        out = subprocess.run(
            [*PROSCRIBE, "agent", "status", "--json", "--config", str(agent_toml)],
            check=False,
            capture_output=True,
            text=True,
            timeout=demo.timeout,
        )
        if out.returncode != 0:
            return None
        state: dict[str, Any] = json.loads(out.stdout)
        reporter = state.get("reporter") or {}
        ready = state.get("running") and reporter.get("agent_id") and state.get("policy")
        return state if ready else None

    state = _wait("the agent to start and enroll", demo.timeout, agent_ready)
    sensors = ", ".join(
        f"{name}: {info.get('state') if isinstance(info, dict) else info}"
        for name, info in (state.get("sensors") or {}).items()
    )
    _say(
        "agent",
        f"enforcing policy serial {state['policy'].get('serial')}, "
        f"agent id {state['reporter']['agent_id']}, sensors ({sensors})",
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
    _say("violation", f"started {fake} 300 -> {outcome}")
    _say("violation", f"DNS query for {DENIED_NAME}: {_query(demo.root, dns_port)}")

    # 5. What the collector holds, the report, the dashboard.
    def violations() -> list[dict[str, Any]] | None:
        code, body = _http_json(f"{base}/api/v1/violations?since=1h", officer_token)
        items: list[dict[str, Any]] = body.get("items") or [] if isinstance(body, dict) else []
        kinds = {item.get("kind") for item in items}
        return items if code == 200 and {"process", "dns"} <= kinds else None

    items: list[dict[str, Any]] = []
    try:
        items = _wait("both violations at the collector", demo.timeout, violations)
    except ProscribeError:
        _say("warning", "not every violation reached the collector in time; see agent.log")
        print(demo.tail("agent", 20))
    _say("collector", f"{len(items)} violation(s) stored:")
    for item in items[:10]:
        proc = item.get("process") or {}
        qname = (item.get("dns") or {}).get("qname")
        by = f"pid {proc.get('pid')} {proc.get('exe') or proc.get('name') or ''}".strip()
        what = f"{qname} (asked by {by})" if qname else by
        print(
            f"    {item.get('time', '')[:19]}  {item.get('kind', ''):8} {item.get('action', ''):10}"
            f" rule={item.get('rule')}  {what}"
        )
    if len(items) > 10:
        print(f"    … and {len(items) - 10} more (other DNS traffic on this machine)")
    report = demo.cli("collector", "report", *cfg, "--since", "1h", "--format", "csv")
    (work / "report.csv").write_text(report)
    html = demo.cli("collector", "report", *cfg, "--since", "1h", "--format", "html")
    (work / "report.html").write_text(html)
    _say(
        "report",
        f"{work / 'report.csv'} ({len(report.splitlines()) - 1} rows) and the printable "
        f"compliance report {work / 'report.html'}",
    )
    _say("dashboard", f"{base}/  (log in as officer / {officer_password})")
    if args.once:
        return 0
    keep = "kept" if args.keep or args.dir is not None else "removed (use --keep to keep it)"
    _say("running", f"press Ctrl-C to stop the collector and the agent; {work} is then {keep}")
    while all(p.poll() is None for p in demo.procs):
        time.sleep(0.5)
    raise ProscribeError("demo: a component exited unexpectedly; see the logs in " + str(work))


def _query(root: bool, port: int) -> str:
    """Ask for the denied name the way an application would."""
    query = dns.message.make_query(DENIED_NAME, "A", use_edns=0)
    if not root:
        try:
            answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=3)
        except (OSError, dns.exception.DNSException) as err:
            return f"no answer from the proxy ({err})"
        ede = [opt for opt in answer.options if getattr(opt, "code", None) == 15]
        note = f", EDE 15 Blocked: {ede[0].text}" if ede else ""
        return f"answered {dns.rcode.to_text(answer.rcode())} by the agent's proxy{note}"
    # Capture mode: the packet is seen on the wire. Nothing needs to answer; the socket stays
    # open for a moment so the agent can attribute the query to this process.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.5)
        sock.sendto(query.to_wire(), ("127.0.0.1", port))
        with contextlib.suppress(OSError):
            sock.recv(4096)
        time.sleep(0.5)
    return f"sent to 127.0.0.1:{port}, seen by the agent's passive capture (pid {os.getpid()})"
