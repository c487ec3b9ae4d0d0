"""Managed browser policy files under a staging root: what is written for which browser, a
foreign Firefox file left alone, tampering undone, removal of what the agent owns only."""

from __future__ import annotations

import json
from pathlib import Path

from proscribe.agent.enforce.browser_policy import BrowserPolicies, default_targets
from proscribe.core.policy.loader import load_policy

POLICY = b"""
[meta]
schema  = 1
id      = "b"
serial  = 1
issued  = 2025-01-24T00:00:00Z
expires = 2099-01-01T00:00:00Z
title   = "b"

[[domain]]
id     = "deepseek-web"
names  = ["deepseek.com", "=exact.example"]
action = "block"

[[domain]]
id     = "reported"
names  = ["reported.example"]
action = "report"
"""


def test_files_follow_the_installed_browsers_and_the_mode(tmp_path: Path) -> None:
    (tmp_path / "etc/chromium").mkdir(parents=True)
    (tmp_path / "etc/firefox").mkdir(parents=True)
    files = BrowserPolicies(enforce=False, targets=default_targets(tmp_path))
    written = files.apply(load_policy(POLICY, "b.toml"))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "etc/chromium/policies/managed/proscribe.json",
        "etc/firefox/policies/policies.json",
    ]
    chromium = json.loads(written[0].read_text())
    assert chromium == {"URLBlocklist": ["deepseek.com", ".exact.example"]}  # monitor: DoH kept
    firefox = json.loads((tmp_path / "etc/firefox/policies/policies.json").read_text())
    assert firefox["policies"] == {
        "WebsiteFilter": {
            "Block": ["*://deepseek.com/*", "*://*.deepseek.com/*", "*://exact.example/*"]
        }
    }
    assert files.state["chrome"] == "not installed" and files.state["edge"] == "not installed"


def test_enforce_turns_doh_off_and_tampering_is_undone(tmp_path: Path) -> None:
    (tmp_path / "etc/opt/chrome").mkdir(parents=True)
    (tmp_path / "etc/firefox").mkdir(parents=True)
    files = BrowserPolicies(enforce=True, targets=default_targets(tmp_path))
    files.apply(load_policy(POLICY, "b.toml"))
    chrome = tmp_path / "etc/opt/chrome/policies/managed/proscribe.json"
    firefox = tmp_path / "etc/firefox/policies/policies.json"
    assert json.loads(chrome.read_text())["DnsOverHttpsMode"] == "off"
    assert json.loads(firefox.read_text())["policies"]["DNSOverHTTPS"] == {
        "Enabled": False,
        "Locked": True,
    }
    assert files.check() == []
    original = chrome.read_bytes()
    chrome.write_text('{"URLBlocklist": []}')
    firefox.unlink()
    assert sorted(files.check()) == sorted(
        [
            f"managed browser policy {chrome} was changed",
            f"managed browser policy {firefox} was removed",
        ]
    )
    assert chrome.read_bytes() == original and firefox.exists()
    files.remove()
    assert not chrome.exists() and not firefox.exists()


def test_a_foreign_firefox_policies_file_is_left_alone(tmp_path: Path) -> None:
    firefox = tmp_path / "etc/firefox/policies/policies.json"
    firefox.parent.mkdir(parents=True)
    foreign = '{"policies": {"DisableTelemetry": true}}\n'
    firefox.write_text(foreign)
    files = BrowserPolicies(enforce=True, targets=default_targets(tmp_path))
    assert files.apply(load_policy(POLICY, "b.toml")) == []
    assert firefox.read_text() == foreign
    assert "not the agent's: left alone" in files.state["firefox"]
    files.remove()
    assert firefox.read_text() == foreign
