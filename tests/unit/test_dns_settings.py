"""DnsSettings parsing and the sensor factory's errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from proscribe.agent.sensors.dns import (
    DnsSensorUnavailable,
    DnsSettings,
    build_dns_sensor,
    open_sender_map,
    parse_host_port,
    system_upstreams,
)
from proscribe.core.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:53", ("127.0.0.1", 53)),
        ("9.9.9.9", ("9.9.9.9", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("2001:db8::1", ("2001:db8::1", 53)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, "dns.upstreams") == expected


@pytest.mark.parametrize("text", ["", "host:0", "host:99999", "1.2.3.4:x"])
def test_parse_host_port_errors_name_the_key(text: str) -> None:
    with pytest.raises(ConfigError, match=r"dns\.upstreams"):
        parse_host_port(text, "dns.upstreams")


def test_system_upstreams_skip_the_proxy(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n")
    assert system_upstreams(conf, exclude=("127.0.0.1", 53)) == (
        ("10.0.0.2", 53),
        ("fe80::1", 53),
    )
    assert system_upstreams(tmp_path / "missing") == ()


@dataclass
class Section:
    proxy_listen: str = "127.0.0.1:5353"
    upstreams: tuple[str, ...] = ("10.0.0.2",)
    interfaces: tuple[str, ...] = ("eth0",)
    kernel_attribution: bool = False


def test_from_config() -> None:
    settings = DnsSettings.from_config(Section(), enforce=False)
    assert settings.proxy_listen == ("127.0.0.1", 5353)
    assert settings.upstreams == (("10.0.0.2", 53),)
    assert settings.interfaces == ("eth0",) and not settings.enforce
    assert not settings.kernel_attribution


def test_kernel_attribution_off_or_impossible_says_why(tmp_path: Path) -> None:
    """The /proc lookup alone, with the reason status shows; the sender map is not loaded."""
    off = open_sender_map(DnsSettings(kernel_attribution=False))
    assert off == (None, "off in the configuration ([dns] kernel_attribution = false)")
    fake_proc = open_sender_map(DnsSettings(procfs=tmp_path))
    assert fake_proc == (None, "not with a substitute /proc")


def test_proxy_without_any_upstream_is_one_clear_line(tmp_path: Path) -> None:
    settings = DnsSettings(resolv_conf=tmp_path / "none")
    with pytest.raises(DnsSensorUnavailable, match="upstreams"):
        build_dns_sensor("proxy", settings, lambda o: None, lambda n, p: None)


def test_unknown_mode() -> None:
    with pytest.raises(DnsSensorUnavailable, match="capture"):
        build_dns_sensor("sniff", DnsSettings(), lambda o: None, lambda n, p: None)
