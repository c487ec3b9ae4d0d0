"""Managed browser policies from the signed policy's domain rules (``[enforce] browser_policies``).

Browsers resolve over their own DNS over HTTPS and cache; a managed policy makes them refuse the
denied sites themselves ("blocked by your organization", ``ERR_BLOCKED_BY_ADMINISTRATOR``) and
keeps their DNS on the system resolver, which the agent answers:

* Chromium, Google Chrome, Microsoft Edge: ``proscribe.json`` in each one's managed-policy
  folder (``/etc/chromium/policies/managed``, ``/etc/opt/chrome/policies/managed``,
  ``/etc/opt/edge/policies/managed``) with ``URLBlocklist`` (``name`` blocks the name and its
  subdomains, ``.name`` the exact host) and, in enforce mode, ``DnsOverHttpsMode = "off"``;
* Firefox: ``/etc/firefox/policies/policies.json`` with ``WebsiteFilter`` and
  ``DNSOverHTTPS`` disabled and locked (enforce mode). Firefox reads one policies file: one
  the agent did not write is left alone (status says so) rather than overwritten.

A browser's files are written only when the browser's configuration folder exists (it is
installed). They follow the policy in force (rewritten on every change) and are checked at
every status write: a file changed or removed by someone else is put back and reported as
tampering. Only the ``block`` domain rules are written (``core/policy/export.py``). The
uninstaller removes the files (``installer/linux/uninstall.sh``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proscribe.core.fs import atomic_write
from proscribe.core.policy.export import blocked_names
from proscribe.core.policy.model import Policy

__all__ = ["BrowserPolicies", "BrowserTarget", "default_targets"]

log = logging.getLogger(__name__)

FILE_NAME = "proscribe.json"
MARKER = "proscribe"  # Firefox: a top-level key naming the file as the agent's


@dataclass(frozen=True, slots=True)
class BrowserTarget:
    browser: str  # "chromium", "chrome", "edge", "firefox"
    installed_if: Path  # the browser's configuration folder
    path: Path  # the file the agent owns


def default_targets(root: Path = Path("/")) -> tuple[BrowserTarget, ...]:
    etc = root / "etc"
    return (
        BrowserTarget("chromium", etc / "chromium", etc / "chromium/policies/managed" / FILE_NAME),
        BrowserTarget(
            "chrome", etc / "opt/chrome", etc / "opt/chrome/policies/managed" / FILE_NAME
        ),
        BrowserTarget("edge", etc / "opt/edge", etc / "opt/edge/policies/managed" / FILE_NAME),
        BrowserTarget("firefox", etc / "firefox", etc / "firefox/policies/policies.json"),
    )


def chromium_policy(policy: Policy, enforce: bool) -> dict[str, Any]:
    names, _skipped = blocked_names(policy)
    document: dict[str, Any] = {
        "URLBlocklist": [("." if n.exact else "") + n.name for n in names],
    }
    if enforce:
        document["DnsOverHttpsMode"] = "off"
    return document


def firefox_policy(policy: Policy, enforce: bool) -> dict[str, Any]:
    names, _skipped = blocked_names(policy)
    patterns: list[str] = []
    for n in names:
        patterns.append(f"*://{n.name}/*")
        if not n.exact:
            patterns.append(f"*://*.{n.name}/*")
    policies: dict[str, Any] = {"WebsiteFilter": {"Block": patterns}}
    if enforce:
        policies["DNSOverHTTPS"] = {"Enabled": False, "Locked": True}
    return {
        MARKER: "written by the Proscribe agent from its policy; edits are undone",
        "policies": policies,
    }


class BrowserPolicies:
    def __init__(self, *, enforce: bool, targets: tuple[BrowserTarget, ...] | None = None) -> None:
        self.enforce = enforce
        self.targets = targets if targets is not None else default_targets()
        self._expected: dict[Path, bytes] = {}
        self.state: dict[str, str] = {}

    def _render(self, target: BrowserTarget, policy: Policy) -> bytes:
        if target.browser == "firefox":
            document = firefox_policy(policy, self.enforce)
        else:
            document = chromium_policy(policy, self.enforce)
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()

    def apply(self, policy: Policy) -> list[Path]:
        """Write every installed browser's file for ``policy``; the paths written."""
        written: list[Path] = []
        expected: dict[Path, bytes] = {}
        for target in self.targets:
            if not target.installed_if.is_dir():
                self.state[target.browser] = "not installed"
                continue
            if target.browser == "firefox" and not self._ours_or_absent(target.path):
                self.state[target.browser] = (
                    f"{target.path} exists and is not the agent's: left alone (add "
                    "WebsiteFilter and DNSOverHTTPS to it by hand)"
                )
                continue
            data = self._render(target, policy)
            try:
                target.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(target.path, data, 0o644)
            except OSError as err:
                self.state[target.browser] = f"not written: {err.strerror}"
                log.error("browser policy %s not written: %s", target.path, err)
                continue
            expected[target.path] = data
            written.append(target.path)
            self.state[target.browser] = f"managed ({target.path})"
        self._expected = expected
        return written

    def check(self) -> list[str]:
        """Files changed or removed since written: put back; one line each, for a tamper
        event."""
        tampered: list[str] = []
        for path, data in self._expected.items():
            try:
                current: bytes | None = path.read_bytes()
            except OSError:
                current = None
            if current == data:
                continue
            tampered.append(
                f"managed browser policy {path} was {'removed' if current is None else 'changed'}"
            )
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, data, 0o644)
            except OSError as err:
                log.error("browser policy %s could not be restored: %s", path, err)
        return tampered

    def remove(self) -> None:
        """Delete the files the agent owns (uninstall)."""
        for target in self.targets:
            if target.path.exists() and self._ours_or_absent(target.path):
                target.path.unlink()

    @staticmethod
    def _ours_or_absent(path: Path) -> bool:
        if path.name == FILE_NAME:
            return True
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            return False
        return isinstance(document, dict) and MARKER in document
