"""``proscribe policy export`` loaded by the real resolvers: Unbound with the RPZ and with its
local-zone include, dnsmasq with its address file. Each resolver must answer NXDOMAIN for a
denied name (and its subdomains where the rule says so), resolve an allowed one and a
look-alike, and keep an "=exact" entry exact where the format can."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.agent_harness import PROSCRIBE, REPO, Procs
from tests.support.dns_peers import answers
from tests.support.ports import free_udp_port
from tests.support.waits import wait_for

POLICY = """
[meta]
schema  = 1
id      = "export-test"
serial  = 7
issued  = 2025-01-24T00:00:00Z
expires = 2099-01-01T00:00:00Z
title   = "Export test"

[[domain]]
id      = "deepseek-web"
names   = ["deepseek.com", "=exact.example"]
action  = "block"

[[domain]]
id      = "report-only"
names   = ["reported.example"]
action  = "report"
"""


@pytest.fixture
def procs() -> Iterator[Procs]:
    started = Procs()
    yield started
    started.cleanup()


def export(tmp_path: Path, fmt: str) -> str:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    out = subprocess.run(
        [*PROSCRIBE, "policy", "export", str(policy), "--format", fmt],
        capture_output=True, text=True, cwd=REPO, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def rcode_and_addresses(port: int, name: str) -> tuple[str, list[str]]:
    reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", 3, port)
    addresses = [r.to_text() for rrset in reply.answer for r in rrset if rrset.rdtype == 1]
    return dns.rcode.to_text(reply.rcode()), addresses


def upstream(procs: Procs) -> int:
    """dnsmasq answering every test name with an address (so NXDOMAIN is the export's)."""
    port = free_udp_port()
    procs.start(
        [
            "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
            "--listen-address=127.0.0.1", f"--port={port}", "--pid-file=",
            "--log-facility=/dev/null", "--address=/deepseek.com/203.0.113.7",
            "--address=/exact.example/203.0.113.8", "--address=/allowed.example/198.51.100.1",
            "--address=/notdeepseek.com/198.51.100.2", "--address=/reported.example/198.51.100.3",
        ]
    )  # fmt: skip
    assert wait_for(lambda: answers("127.0.0.1", port), 5), "dnsmasq did not start"
    return port


def test_formats_say_what_they_cover(tmp_path: Path) -> None:
    rpz = export(tmp_path, "rpz")
    assert "deepseek.com CNAME ." in rpz and "*.deepseek.com CNAME ." in rpz
    assert "exact.example CNAME ." in rpz and "*.exact.example" not in rpz
    assert "reported.example" not in rpz  # report-only rules are not exported
    assert "serial 7" in rpz
    adblock = export(tmp_path, "adblock")
    assert "||deepseek.com^" in adblock and "|exact.example^" in adblock
    assert "||exact.example^" not in adblock
    hosts = export(tmp_path, "hosts")
    assert "0.0.0.0 deepseek.com" in hosts and "subdomains are not covered" in hosts
    assert "=name entries cover subdomains" in export(tmp_path, "unbound")


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[meta]\nschema = 1\n")
    out = subprocess.run(
        [*PROSCRIBE, "policy", "export", str(bad), "--format", "rpz"],
        capture_output=True, text=True, cwd=REPO, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "not a valid policy" in out.stderr
    out = subprocess.run(
        [*PROSCRIBE, "policy", "export", str(bad), "--format", "bind"],
        capture_output=True, text=True, cwd=REPO, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2 and "invalid choice" in out.stderr


def _unbound(procs: Procs, tmp_path: Path, up: int, extra: str) -> int:
    port = free_udp_port()
    conf = tmp_path / "unbound.conf"
    conf.write_text(
        f"""
server:
  interface: 127.0.0.1
  port: {port}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{tmp_path}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  do-not-query-localhost: no
  access-control: 127.0.0.0/8 allow
  module-config: "respip iterator"
  num-threads: 1
{extra}
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@{up}
"""
    )
    check = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = procs.start(["unbound", "-d", "-c", str(conf)])
    assert wait_for(lambda: proc.poll() is not None or answers("127.0.0.1", port), 10)
    assert proc.poll() is None, "unbound exited"
    return port


needs_unbound = pytest.mark.skipif(
    shutil.which("unbound") is None or shutil.which("dnsmasq") is None,
    reason="needs unbound and dnsmasq (apt-get install unbound dnsmasq)",
)


@needs_unbound
def test_unbound_loads_the_rpz(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "proscribe.rpz").write_text(export(tmp_path, "rpz"))
    up = upstream(procs)
    port = _unbound(
        procs, tmp_path, up, f'rpz:\n  name: rpz.proscribe.\n  zonefile: "{tmp_path}/proscribe.rpz"'
    )
    assert rcode_and_addresses(port, "chat.deepseek.com")[0] == "NXDOMAIN"
    assert rcode_and_addresses(port, "deepseek.com")[0] == "NXDOMAIN"
    assert rcode_and_addresses(port, "exact.example")[0] == "NXDOMAIN"
    assert rcode_and_addresses(port, "sub.exact.example") == ("NOERROR", ["203.0.113.8"])
    assert rcode_and_addresses(port, "allowed.example") == ("NOERROR", ["198.51.100.1"])
    assert rcode_and_addresses(port, "notdeepseek.com") == ("NOERROR", ["198.51.100.2"])
    assert rcode_and_addresses(port, "reported.example") == ("NOERROR", ["198.51.100.3"])


@needs_unbound
def test_unbound_loads_its_local_zones(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "proscribe.conf").write_text(export(tmp_path, "unbound"))
    up = upstream(procs)
    port = _unbound(procs, tmp_path, up, f'include: "{tmp_path}/proscribe.conf"')
    assert rcode_and_addresses(port, "chat.deepseek.com")[0] == "NXDOMAIN"
    assert rcode_and_addresses(port, "allowed.example") == ("NOERROR", ["198.51.100.1"])
    assert rcode_and_addresses(port, "notdeepseek.com") == ("NOERROR", ["198.51.100.2"])


@pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="needs dnsmasq")
def test_dnsmasq_loads_its_file(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "proscribe.dnsmasq").write_text(export(tmp_path, "dnsmasq"))
    up = upstream(procs)
    port = free_udp_port()
    procs.start(
        [
            "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
            "--listen-address=127.0.0.1", f"--port={port}", "--pid-file=",
            "--log-facility=/dev/null", f"--server=127.0.0.1#{up}",
            f"--conf-file={tmp_path / 'proscribe.dnsmasq'}",
        ]
    )  # fmt: skip
    assert wait_for(lambda: answers("127.0.0.1", port), 5)
    assert rcode_and_addresses(port, "chat.deepseek.com")[0] == "NXDOMAIN"
    assert rcode_and_addresses(port, "deepseek.com")[0] == "NXDOMAIN"
    assert rcode_and_addresses(port, "allowed.example") == ("NOERROR", ["198.51.100.1"])
    assert rcode_and_addresses(port, "notdeepseek.com") == ("NOERROR", ["198.51.100.2"])
