"""The system resolver path end to end, in a network namespace the test creates.

Inside a fresh netns (own loopback, own /etc/netns/NAME/resolv.conf that ``ip netns exec``
bind-mounts over /etc/resolv.conf): dnsmasq as the upstream on 127.0.0.1:5300 and the proxy on
127.0.0.1:53 (a child process printing its observations as JSON lines). ``getent hosts`` goes
through glibc, nsswitch and resolv.conf like any application (``getent ahosts`` would not ask
at all: getaddrinfo's AI_ADDRCONFIG sees no non-loopback address in the namespace).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.waits import wait_for

pytestmark = [pytest.mark.root, pytest.mark.linux, pytest.mark.netns]

PROXY = """
import json, sys
from proscribe.core.policy.matchers.domain import DomainMatcher
from proscribe.agent.sensors.dns import DnsProxy, ProcessAttributor, NameVerdict
matcher = DomainMatcher.from_names(["deepseek.com"], "deepseek-web")
def decide(name, process):
    match = matcher.match(name)
    return NameVerdict(True, match.rule_id) if match else None
def emit(o):
    process = o.process or {}
    print(json.dumps({"qname": o.qname, "qtype": o.qtype, "action": o.action,
                      "pid": process.get("pid"), "name": process.get("name")}), flush=True)
attributor = ProcessAttributor()
proxy = DnsProxy(("127.0.0.1", 53), [("127.0.0.1", 5300)], decide, emit, attributor=attributor)
proxy.start()
print("ready", flush=True)
sys.stdin.read()
proxy.stop()
attributor.close()
"""


@pytest.fixture
def netns() -> Iterator[str]:
    if shutil.which("dnsmasq") is None or shutil.which("getent") is None:
        pytest.skip("needs dnsmasq and getent")
    name = f"proscribe-dns-{os.getpid()}"
    etc = Path("/etc/netns") / name
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(etc, ignore_errors=True)


def resolved(inside: list[str], name: str) -> str | None:
    """``getent hosts NAME`` inside the namespace: its output, or None if it failed."""
    result = subprocess.run([*inside, "getent", "hosts", name], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def test_getent_through_the_proxy_is_blocked_and_attributed(netns: str) -> None:
    inside = ["ip", "netns", "exec", netns]
    upstream = subprocess.Popen(
        [
            *inside, "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--port=5300",
            "--listen-address=127.0.0.1", "--bind-interfaces", "--pid-file=",
            "--log-facility=/dev/null", "--address=/allowed.example/198.51.100.1",
            "--address=/deepseek.com/203.0.113.7",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    proxy = subprocess.Popen(
        [*inside, sys.executable, "-c", PROXY],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
        # the first answer also says that dnsmasq (started at the same time) is up
        allowed = wait_for(lambda: resolved(inside, "allowed.example"), 10, step=0.1)
        assert allowed is not None and "198.51.100.1" in allowed
        denied = subprocess.Popen(
            [*inside, "getent", "hosts", "chat.DeepSeek.com"], stdout=subprocess.PIPE, text=True
        )
        out, _ = denied.communicate(timeout=10)
        assert denied.returncode == 2 and "203.0.113.7" not in out  # NXDOMAIN: not found
        assert proxy.stdin is not None
        proxy.stdin.close()
        lines = [json.loads(line) for line in proxy.stdout.read().splitlines() if line]
        proxy.stdout.close()
        blocked = [o for o in lines if o["qname"] == "chat.deepseek.com"]
        assert blocked and all(o["action"] == "sinkholed" for o in blocked), lines
        # `ip netns exec` execs getent in place: same pid as the Popen child
        assert {o["name"] for o in blocked} == {"getent"}
        assert {o["pid"] for o in blocked} == {denied.pid}
    finally:
        for proc in (proxy, upstream):
            proc.kill()
            proc.wait()
        if proxy.stdout is not None:
            proxy.stdout.close()
