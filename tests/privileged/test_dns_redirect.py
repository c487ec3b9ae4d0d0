"""``[sensors] dns = "auto"``: the real agent, its nftables redirect, real dig and dnsmasq.

Two network namespaces the test creates, joined by a veth pair: the host (the agent, dig,
getent; resolv.conf names 10.77.X.2) and the network (dnsmasq on 10.77.X.2, the configured
resolver, and a second dnsmasq on 10.77.X.3, "another resolver" a user may ask instead). Both
resolvers answer every test name, so an answer that is not NXDOMAIN came from them. The
nftables table lives in the host namespace only and goes with it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proscribe.agent.status_file import read_status
from tests.support.agent_harness import PROSCRIBE, REPO, Procs, Signer, policy_text, spool_events
from tests.support.waits import wait_for

pytestmark = [pytest.mark.root, pytest.mark.linux, pytest.mark.netns]

DENIED = "chat.deepseek.com"
ALLOWED = "allowed.example"
LOOKALIKE = "notdeepseek.com"  # must resolve: the rule is deepseek.com and its subdomains


@dataclass
class Net:
    host: str
    peer: str
    resolver: str
    other: str

    def inside(self) -> list[str]:
        return ["ip", "netns", "exec", self.host]


@pytest.fixture
def procs() -> Iterator[Procs]:
    started = Procs()
    yield started
    started.cleanup()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def net(procs: Procs) -> Iterator[Net]:
    for tool in ("dnsmasq", "dig", "nft", "getent"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    tag = f"{os.getpid() % 100000}"
    subnet = 10 + os.getpid() % 200
    host, peer = f"prd-h{tag}", f"prd-p{tag}"
    etc = Path("/etc/netns") / host
    resolver, other = f"10.77.{subnet}.2", f"10.77.{subnet}.3"
    _ip("netns", "add", host)
    _ip("netns", "add", peer)
    try:
        _ip("-n", host, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", peer)
        _ip("-n", host, "addr", "add", f"10.77.{subnet}.1/24", "dev", "v0")
        _ip("-n", peer, "addr", "add", f"{resolver}/24", "dev", "v1")
        _ip("-n", peer, "addr", "add", f"{other}/24", "dev", "v1")
        for ns, dev in ((host, "v0"), (peer, "v1")):
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", host, "route", "add", "default", "via", resolver)
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(f"nameserver {resolver}\noptions timeout:2 attempts:1\n")
        for address in (resolver, other):
            procs.start(
                [
                    "ip", "netns", "exec", peer, "dnsmasq", "--no-daemon", "--no-resolv",
                    "--no-hosts", f"--listen-address={address}", "--bind-interfaces",
                    "--pid-file=", "--log-facility=/dev/null", "--user=root",
                    f"--address=/{ALLOWED}/198.51.100.1", "--address=/deepseek.com/203.0.113.7",
                    f"--address=/{LOOKALIKE}/198.51.100.2",
                ]
            )  # fmt: skip
        net = Net(host, peer, resolver, other)
        ok = wait_for(lambda: all(_dig(net, a, ALLOWED) for a in (resolver, other)), 10, 0.1)
        assert ok, "dnsmasq did not come up"
        yield net
    finally:
        _ip("netns", "del", host)
        _ip("netns", "del", peer)
        shutil.rmtree(etc, ignore_errors=True)


def _dig(net: Net, server: str, name: str, *flags: str) -> str:
    """``dig +short``-like: the answer's addresses, or the status word when there are none."""
    out = subprocess.run(
        [*net.inside(), "dig", f"@{server}", name, "A", "+time=2", "+tries=1", *flags],
        capture_output=True,
        text=True,
    ).stdout
    status = next((line for line in out.splitlines() if "status:" in line), "")
    if "NOERROR" not in status:
        return status.split("status:")[1].split(",")[0].strip() if status else "TIMEOUT"
    return " ".join(
        line.split()[-1] for line in out.splitlines() if line and not line.startswith(";")
    )


def _agent_config(tmp: Path, signer: Signer, ttl: int = 3, dns_extra: str = "") -> Path:
    policy = policy_text(
        "redir",
        extra='[[domain]]\nid = "deepseek-web"\nnames = ["deepseek.com"]\naction = "block"\n',
    )
    signer.write(tmp / "policy.toml", policy)
    config = tmp / "agent.toml"
    config.write_text(
        f"""
[agent]
mode = "enforce"
state_dir = "{tmp / "state"}"
hostname = "redirect-test"
status_interval = 0.5

[policy]
file = "{tmp / "policy.toml"}"
trusted_keys = ["{signer.public}"]
threshold = 1

[sensors]
process = "poll"
poll_interval = 1

[dns]
redirect_ttl = {ttl}
{dns_extra}

[enforce]
notify = false
"""
    )  # dns is not set: "auto" is the default
    return config


def _start_agent(net: Net, config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*net.inside(), *PROSCRIBE, "agent", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    status = config.parent / "state" / "status.json"

    def ready() -> bool:
        if proc.poll() is not None:
            return True
        written = read_status(status) or {}
        state = str(((written.get("sensors") or {}).get("dns") or {}).get("state"))
        return written.get("pid") == proc.pid and "redirect active" in state

    assert wait_for(ready, 20, 0.1) and proc.poll() is None, log.read_text()
    return proc


def _tables(net: Net) -> str:
    return subprocess.run(
        [*net.inside(), "nft", "list", "tables"], capture_output=True, text=True
    ).stdout


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        proc.wait(15)


def test_auto_answers_every_resolver_with_the_policy(net: Net, tmp_path: Path) -> None:
    signer = Signer()
    config = _agent_config(tmp_path, signer)
    agent = _start_agent(net, config, tmp_path / "agent.log")
    try:
        assert "inet proscribe_dns" in _tables(net)
        # the configured resolver, another one, over UDP and TCP: the policy answers
        assert _dig(net, net.resolver, DENIED) == "NXDOMAIN"
        assert _dig(net, net.other, DENIED) == "NXDOMAIN"
        assert _dig(net, net.other, DENIED, "+tcp") == "NXDOMAIN"
        assert _dig(net, "192.0.2.53", "x.deepseek.com") == "NXDOMAIN"  # no such server at all
        # what is allowed (and a look-alike name) is answered by the resolver asked
        assert _dig(net, net.other, ALLOWED) == "198.51.100.1"
        assert _dig(net, net.resolver, LOOKALIKE) == "198.51.100.2"
        assert _dig(net, net.other, ALLOWED, "+tcp") == "198.51.100.1"
        # an application through glibc and resolv.conf
        getent = subprocess.run([*net.inside(), "getent", "hosts", DENIED], capture_output=True)
        assert getent.returncode == 2
        # a bypass attempt is recorded as blocked with its process (dig)
        dig = subprocess.Popen(
            [*net.inside(), "dig", f"@{net.other}", "bypass.deepseek.com", "+time=2"],
            stdout=subprocess.DEVNULL,
        )
        dig.wait(10)

        def bypass_event() -> list[dict[str, object]]:
            return [
                e
                for e in spool_events(tmp_path / "state")
                if (e.get("dns") or {}).get("qname") == "bypass.deepseek.com"
            ]

        assert wait_for(bypass_event, 10, 0.1), spool_events(tmp_path / "state")
        event = bypass_event()[0]
        assert event["action"] == "sinkholed"
        assert event["rule"] == "deepseek-web"
        assert (event.get("process") or {}).get("name") == "dig"
        assert (event.get("process") or {}).get("pid") == dig.pid
    finally:
        _stop(agent)
    # a clean stop removes the table: the resolvers answer again at once
    assert "proscribe_dns" not in _tables(net)
    assert _dig(net, net.other, "after.deepseek.com") == "203.0.113.7"


def test_a_crashed_agent_never_breaks_resolution(net: Net, tmp_path: Path) -> None:
    signer = Signer()
    config = _agent_config(tmp_path, signer, ttl=3)
    agent = _start_agent(net, config, tmp_path / "agent.log")
    assert _dig(net, net.other, DENIED) == "NXDOMAIN"
    # renewals keep it alive well past the ttl
    time.sleep(4)
    assert _dig(net, net.other, "still.deepseek.com") == "NXDOMAIN"
    _stop(agent, signal.SIGKILL)  # no cleanup runs: the table stays, its liveness lapses
    assert "inet proscribe_dns" in _tables(net)
    started = time.monotonic()
    resumed = wait_for(lambda: _dig(net, net.other, ALLOWED) == "198.51.100.1", 10, 0.2)
    assert resumed, "DNS did not resume after the agent died"
    assert time.monotonic() - started < 4.5  # ttl 3 s (+ the conntrack of the last query)
    assert _dig(net, net.other, "after.deepseek.com") == "203.0.113.7"
    # the next start replaces the stale table and enforces again
    agent = _start_agent(net, config, tmp_path / "agent2.log")
    try:
        assert _dig(net, net.other, DENIED) == "NXDOMAIN"
        assert _tables(net).count("proscribe_dns") == 1
    finally:
        _stop(agent)


def test_a_deleted_table_is_put_back(net: Net, tmp_path: Path) -> None:
    signer = Signer()
    config = _agent_config(tmp_path, signer, ttl=3)
    agent = _start_agent(net, config, tmp_path / "agent.log")
    try:
        subprocess.run(
            [*net.inside(), "nft", "delete", "table", "inet", "proscribe_dns"], check=True
        )
        assert wait_for(lambda: "proscribe_dns" in _tables(net), 5, 0.1)
        assert wait_for(lambda: _dig(net, net.other, DENIED) == "NXDOMAIN", 5, 0.2)
    finally:
        _stop(agent)


LISTENER = """
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:  # each connection held until the client closes it (no FIN racing a reset)
        c, _ = s.accept(); c.settimeout(5)
        threading.Thread(target=hold, args=(c,), daemon=True).start()
def hold(c):
    try:
        while data := c.recv(4096):
            if data.startswith(b"ping"):  # the small-segment client's probe: answered
                c.sendall(data)
    except OSError:
        pass
    c.close()
for port in (443, 853):
    threading.Thread(target=serve, args=(port,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

CLIENT = """
import json, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
started = time.monotonic()
try:
    socket.create_connection((host, port), timeout=3).close()
    result = "connected"
except ConnectionRefusedError:
    result = "refused"
except OSError as err:
    result = type(err).__name__
print(json.dumps({"result": result, "seconds": time.monotonic() - started}))
"""


TLS_CLIENT = """
import json, socket, ssl, sys, time
host, port, alpn = sys.argv[1], int(sys.argv[2]), sys.argv[3]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
if alpn != "-":
    context.set_alpn_protocols(alpn.split(","))
started = time.monotonic()
try:
    with socket.create_connection((host, port), timeout=3) as raw:
        with context.wrap_socket(raw, server_hostname="dns.example"):
            result = "handshake"
except ConnectionResetError:
    result = "reset"
except ConnectionRefusedError:
    result = "refused"
except ssl.SSLError as err:
    result = "tls error: " + str(err)
except OSError as err:
    result = type(err).__name__
print(json.dumps({"result": result, "seconds": time.monotonic() - started}))
"""


SMALL_SEGMENTS_CLIENT = """
import json, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
started = time.monotonic()
try:
    with socket.create_connection((host, port), timeout=3) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for part in (b"ping", b"-" * 10, b"-" * 10, b"-" * 10):  # each its own tiny segment
            s.sendall(part)
            time.sleep(0.05)
        result = "answered" if s.recv(64) else "closed"
except ConnectionResetError:
    result = "reset"
except OSError as err:
    result = type(err).__name__
print(json.dumps({"result": result, "seconds": time.monotonic() - started}))
"""


def _tls(net: Net, host: str, port: int, alpn: str) -> tuple[str, float, int]:
    """A real TLS client (Python's ssl) offering ``alpn`` (comma-separated, ``-``: none)."""
    proc = subprocess.Popen(
        [*net.inside(), sys.executable, "-c", TLS_CLIENT, host, str(port), alpn],
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=10)
    found = json.loads(out)
    return found["result"], found["seconds"], proc.pid


def _connect(net: Net, host: str, port: int) -> tuple[str, float, int]:
    proc = subprocess.Popen(
        [*net.inside(), sys.executable, "-c", CLIENT, host, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=10)
    found = json.loads(out)
    return found["result"], found["seconds"], proc.pid


@pytest.fixture
def listeners(net: Net, procs: Procs) -> None:
    """TCP 443 and 853 answered on both peer addresses (an unblocked connect succeeds)."""
    proc = procs.start(
        ["ip", "netns", "exec", net.peer, sys.executable, "-c", LISTENER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"


def test_encrypted_dns_is_rejected_at_once_and_reported_with_its_process(
    net: Net, listeners: None, tmp_path: Path
) -> None:
    signer = Signer()
    config = _agent_config(tmp_path, signer, dns_extra=f'doh_resolvers = ["{net.other}"]')
    agent = _start_agent(net, config, tmp_path / "agent.log")
    try:
        # TLS to 853: the handshake passes, the ClientHello is reset: the client falls back now
        dot, dot_seconds, dot_pid = _tls(net, net.resolver, 853, "-")
        assert dot == "reset" and dot_seconds < 0.5, (dot, dot_seconds)
        doh, doh_seconds, doh_pid = _connect(net, net.other, 443)
        assert doh == "refused" and doh_seconds < 0.5
        # HTTPS to an address that is no DoH resolver is left alone
        assert _connect(net, net.resolver, 443)[0] == "connected"

        def denied() -> dict[str, dict[str, Any]]:
            return {
                e["dns"]["qtype"]: e
                for e in spool_events(tmp_path / "state")
                if e.get("rule") == "encrypted-dns"
            }

        assert wait_for(lambda: {"DoT", "DoH"} <= set(denied()), 10), denied()
        events = denied()
        assert events["DoT"]["dns"]["resolver"] == f"{net.resolver}:853"
        assert events["DoH"]["dns"]["resolver"] == f"{net.other}:443"
        assert {e["action"] for e in events.values()} == {"denied"}
        status = read_status(tmp_path / "state" / "status.json") or {}
        mode = status["sensors"]["dns"]["encrypted_dns_blocked"]["mode"]
        if mode == "queue":  # the kernel has nftables' queue: read while still connecting
            assert events["DoT"]["process"]["pid"] == dot_pid
            assert events["DoH"]["process"]["pid"] == doh_pid
        else:  # NFLOG copies (no CONFIG_NFT_QUEUE): the sender's uid, the socket often gone
            for event in events.values():
                assert event.get("process") or "belonged to uid 0" in event["detail"]
    finally:
        _stop(agent)
    # once the agent is stopped, nothing is rejected
    assert _connect(net, net.resolver, 853)[0] == "connected"


def test_encrypted_dns_blocking_can_be_turned_off(
    net: Net, listeners: None, tmp_path: Path
) -> None:
    signer = Signer()
    config = _agent_config(tmp_path, signer, dns_extra="block_encrypted = false")
    agent = _start_agent(net, config, tmp_path / "agent.log")
    try:
        assert _connect(net, net.resolver, 853)[0] == "connected"
        assert _dig(net, net.other, DENIED) == "NXDOMAIN"  # the redirect itself still holds
    finally:
        _stop(agent)


def test_a_local_stub_resolver_upstream_does_not_loop(
    net: Net, procs: Procs, tmp_path: Path
) -> None:
    """systemd-resolved's set-up: resolv.conf names a local stub, so the agent's resolver
    forwards to the stub, and the stub's own upstream query must leave as asked (its account
    is exempt) instead of coming back to the agent for ever."""
    import pwd

    try:
        pwd.getpwnam("dnsmasq")
    except KeyError:
        pytest.skip("needs the dnsmasq account (apt-get install dnsmasq)")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    procs.start(
        [
            # as its own account from the start, like systemd-resolved (a stub started as
            # root opens its upstream sockets as root: docs/limitations.md)
            *net.inside(), "setpriv", "--reuid=dnsmasq", "--regid=65534", "--clear-groups",
            "--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service",
            "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts",
            "--listen-address=127.0.0.2", "--bind-interfaces", "--pid-file=",
            "--log-facility=/dev/null", "--user=dnsmasq", f"--server={net.resolver}",
        ]
    )  # fmt: skip
    signer = Signer()
    config = _agent_config(tmp_path, signer, dns_extra='upstreams = ["127.0.0.2"]')
    agent = _start_agent(net, config, tmp_path / "agent.log")
    try:
        assert wait_for(lambda: _dig(net, "127.0.0.2", ALLOWED) == "198.51.100.1", 10, 0.2)
        assert _dig(net, net.other, ALLOWED) == "198.51.100.1"  # via agent → stub → resolver
        assert _dig(net, "127.0.0.2", DENIED) == "NXDOMAIN"
        assert _dig(net, net.other, DENIED) == "NXDOMAIN"
    finally:
        _stop(agent)


def test_dig_at_50_per_second_is_attributed(net: Net, tmp_path: Path) -> None:
    """Measured in the issue: in proxy mode 6 of 20 dig queries at 20/s were attributed (pids
    had wrapped). Through the redirect at 50/s, ≥ 99% must name their dig."""
    signer = Signer()
    config = _agent_config(tmp_path, signer)
    agent = _start_agent(net, config, tmp_path / "agent.log")
    digs: dict[int, str] = {}
    try:
        started = time.monotonic()
        running = []
        for i in range(100):
            name = f"a{i}.deepseek.com"
            proc = subprocess.Popen(
                # +time=5: on a loaded VM a 2 s timeout measures the load, not attribution
                [*net.inside(), "dig", f"@{net.other}", name, "+time=5", "+tries=1"],
                stdout=subprocess.DEVNULL,
            )
            digs[proc.pid] = name
            running.append(proc)
            time.sleep(max(0.0, started + (i + 1) / 50 - time.monotonic()))
        for proc in running:
            proc.wait(10)

        def by_pid() -> dict[int, str]:
            return {
                int((e.get("process") or {}).get("pid") or 0): e["dns"]["qname"]
                for e in spool_events(tmp_path / "state")
                if e.get("rule") == "deepseek-web"
            }

        # a loaded machine can take seconds to commit the last events: wait, then judge them
        wait_for(lambda: len(by_pid()) >= 100, 30, 0.2)
        found = by_pid()
        attributed = sum(1 for pid, name in digs.items() if found.get(pid) == name)
        status = tmp_path / "state" / "status.json"

        def dns_status() -> dict[str, Any]:
            sensors = (read_status(status) or {}).get("sensors") or {}
            return dict(sensors.get("dns") or {})

        wait_for(lambda: dns_status().get("attributed_by_kernel", 0) >= 99, 3, 0.2)
        dns = dns_status()
        if dns.get("attribution") == "ebpf":
            # the kernel's sender map (written before the query leaves): the target
            by_name = {name: pid for pid, name in found.items()}
            wrong = {n: (p, by_name.get(n)) for p, n in digs.items() if found.get(p) != n}
            assert attributed >= 99, (attributed, wrong, dns)
        else:
            # /proc only (no eBPF here: the reason is in status): measured 100 of 100 in 5 of
            # 6 runs on the loaded 2-core VM; once 98 (docs/limitations.md)
            assert attributed >= 98, (attributed, found.get(0), dns)
    finally:
        _stop(agent)


def test_a_taken_resolver_address_leaves_capture_running_and_nothing_redirected(
    net: Net, tmp_path: Path, procs: Procs
) -> None:
    """Another resolver already on 127.0.0.1:53: the agent must not redirect DNS to a
    resolver it does not run; capture still reports, and status says why."""
    squatter = procs.start(
        [*net.inside(), sys.executable, "-c",
         "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
         "s.bind(('127.0.0.1', 53)); print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert squatter.stdout is not None and squatter.stdout.readline().strip() == b"ready"
    signer = Signer()
    config = _agent_config(tmp_path, signer)
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [*net.inside(), *PROSCRIBE, "agent", "run", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    try:
        status = tmp_path / "state" / "status.json"

        def dns_state() -> str:
            written = read_status(status) or {}
            if written.get("pid") != agent.pid:
                return ""
            return str(((written.get("sensors") or {}).get("dns") or {}).get("state"))

        assert wait_for(lambda: "capture only" in dns_state(), 20, 0.1), log.read_text()
        assert "proscribe_dns" not in _tables(net)
        assert _dig(net, net.other, DENIED) == "203.0.113.7"  # answered as asked, reported
        assert wait_for(
            lambda: any(
                e.get("rule") == "deepseek-web" and e["action"] == "reported"
                for e in spool_events(tmp_path / "state")
            ),
            10,
        )
    finally:
        _stop(agent)


def test_ipv6_queries_to_another_resolver_are_answered_by_the_policy(
    net: Net, tmp_path: Path, procs: Procs
) -> None:
    _ip("-n", net.host, "addr", "add", "fd77::1/64", "dev", "v0", "nodad")
    _ip("-n", net.peer, "addr", "add", "fd77::3/64", "dev", "v1", "nodad")
    procs.start(
        [
            "ip", "netns", "exec", net.peer, "dnsmasq", "--no-daemon", "--no-resolv",
            "--no-hosts", "--listen-address=fd77::3", "--bind-interfaces", "--pid-file=",
            "--log-facility=/dev/null", "--user=root", f"--address=/{ALLOWED}/198.51.100.1",
            "--address=/deepseek.com/203.0.113.7",
        ]
    )  # fmt: skip
    assert wait_for(lambda: _dig(net, "fd77::3", ALLOWED) == "198.51.100.1", 10, 0.2)
    assert _dig(net, "fd77::3", DENIED) == "203.0.113.7"  # before the agent: answered
    signer = Signer()
    config = _agent_config(tmp_path, signer)
    agent = _start_agent(net, config, tmp_path / "agent.log")
    try:
        status = read_status(tmp_path / "state" / "status.json") or {}
        assert "redirect active" in status["sensors"]["dns"]["state"]
        assert _dig(net, "fd77::3", DENIED) == "NXDOMAIN"
        assert _dig(net, "fd77::3", DENIED, "+tcp") == "NXDOMAIN"
        assert _dig(net, "fd77::3", ALLOWED) == "198.51.100.1"
    finally:
        _stop(agent)


def test_data_to_853_in_segments_too_small_for_a_client_hello_is_reset(
    net: Net, listeners: None, tmp_path: Path
) -> None:
    """The handshake to 853 passes so that the ClientHello can be read: a client that sends
    its data in tiny segments (TCP_NODELAY, a small MSS) must still be reset at its first
    byte of data, never get an answer through."""
    agent = _start_agent(net, _agent_config(tmp_path, Signer()), tmp_path / "agent.log")
    try:
        proc = subprocess.Popen(
            [*net.inside(), sys.executable, "-c", SMALL_SEGMENTS_CLIENT, net.resolver, "853"],
            stdout=subprocess.PIPE,
            text=True,
        )
        found = json.loads(proc.communicate(timeout=10)[0])
        assert found["result"] == "reset", found
    finally:
        _stop(agent)
    # the same client reaches the listener without the agent (the probe can succeed)
    proc = subprocess.Popen(
        [*net.inside(), sys.executable, "-c", SMALL_SEGMENTS_CLIENT, net.resolver, "853"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert json.loads(proc.communicate(timeout=10)[0])["result"] == "answered"


def test_tls_on_853_is_labelled_dot_or_doh_by_its_alpn(
    net: Net, listeners: None, tmp_path: Path
) -> None:
    """DoH served on port 853 is DoH, DoT is DoT: real TLS clients offering ALPN ``dot`` and
    ``h2,http/1.1``, each reset at its ClientHello; a connection that sends no ClientHello is
    reported as DoT by its port once its hold runs out."""
    third = net.other.rsplit(".", 1)[0] + ".4"
    _ip("-n", net.peer, "addr", "add", f"{third}/24", "dev", "v1")
    signer = Signer()
    config = _agent_config(tmp_path, signer)
    agent = _start_agent(net, config, tmp_path / "agent.log")
    try:
        dot = _tls(net, net.resolver, 853, "dot")
        doh = _tls(net, net.other, 853, "h2,http/1.1")
        for result, seconds, _pid in (dot, doh):
            assert result == "reset" and seconds < 0.5, (result, seconds)
        assert _connect(net, third, 853)[0] == "connected"  # the handshake alone passes

        def denied() -> dict[str, dict[str, Any]]:
            return {
                e["dns"]["resolver"]: e
                for e in spool_events(tmp_path / "state")
                if e.get("rule") == "encrypted-dns"
            }

        wanted = {f"{net.resolver}:853", f"{net.other}:853", f"{third}:853"}
        assert wait_for(lambda: wanted <= set(denied()), 10), denied()
        events = denied()
        first, second = events[f"{net.resolver}:853"], events[f"{net.other}:853"]
        plain = events[f"{third}:853"]
        assert first["dns"]["qtype"] == "DoT" and "(TLS ALPN dot)" in first["detail"]
        assert second["dns"]["qtype"] == "DoH", second
        assert "DNS over HTTPS" in second["detail"]
        assert "(TLS ALPN h2, http/1.1)" in second["detail"]
        assert plain["dns"]["qtype"] == "DoT"
        assert "no TLS ClientHello read" in plain["detail"]
        assert {e["action"] for e in events.values()} == {"denied"}
    finally:
        _stop(agent)
    assert "proscribe_dns" not in _tables(net)  # stopped: the rules are gone
