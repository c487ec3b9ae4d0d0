"""Pointing the resolver at the proxy and back, on files in a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proscribe.agent.enforce.sinkhole import (
    MARKER,
    install_resolv_conf,
    install_resolved_dropin,
    nameservers,
    remove_resolved_dropin,
    restore_resolv_conf,
)
from proscribe.core.errors import ConfigError

ORIGINAL = (
    "# from DHCP\nsearch corp.example\nnameserver 10.0.0.2\nnameserver 10.0.0.3\noptions edns0\n"
)


def test_proxy_first_original_as_fallback_then_restored(tmp_path: Path) -> None:
    conf, backup = tmp_path / "resolv.conf", tmp_path / "resolv.conf.proscribe-orig"
    conf.write_text(ORIGINAL)
    text = install_resolv_conf(conf, ("127.0.0.1", 53), backup)
    assert text.startswith(MARKER)
    assert nameservers(conf.read_text()) == ["127.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert "search corp.example" in text and "timeout:1" in text
    # installing twice keeps the true original
    install_resolv_conf(conf, ("127.0.0.1", 53), backup)
    assert nameservers(conf.read_text()) == ["127.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert restore_resolv_conf(conf, backup)
    assert conf.read_text() == ORIGINAL
    assert not restore_resolv_conf(conf, backup)


def test_port_other_than_53_and_symlinks_are_refused(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(ORIGINAL)
    with pytest.raises(ConfigError, match="cannot name a port"):
        install_resolv_conf(conf, ("127.0.0.1", 5353), tmp_path / "b")
    link = tmp_path / "link.conf"
    os.symlink(conf, link)
    with pytest.raises(ConfigError, match="symlink"):
        install_resolv_conf(link, ("127.0.0.1", 53), tmp_path / "b")


def test_resolved_dropin(tmp_path: Path) -> None:
    path = tmp_path / "resolved.conf.d" / "proscribe.conf"
    install_resolved_dropin(("127.0.0.1", 5353), path)
    assert "DNS=127.0.0.1:5353\nDomains=~.\n" in path.read_text()
    assert remove_resolved_dropin(path) and not path.exists()
    assert not remove_resolved_dropin(path)
