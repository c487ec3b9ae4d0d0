"""The agent's managed Chromium policy, obeyed by Debian's real Chromium.

Runs in a private mount namespace (``unshare -m``) with a tmpfs over ``/etc/chromium``, so the
managed-policy folder the agent writes is the namespace's own and nothing on this machine
changes. ``--host-resolver-rules`` sends every name to a local test server: what the browser
shows comes from the policy alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.support.agent_harness import REPO

pytestmark = [pytest.mark.root, pytest.mark.linux]

SCRIPT = r"""
import http.server, json, sys, threading
from pathlib import Path
from proscribe.agent.enforce.browser_policy import BrowserPolicies
from proscribe.core.policy.loader import load_policy

POLICY = b'''
[meta]
schema  = 1
id      = "browser-test"
serial  = 3
issued  = 2025-01-24T00:00:00Z
expires = 2099-01-01T00:00:00Z
title   = "Browser test"

[[domain]]
id     = "deepseek-web"
names  = ["deepseek.com", "=exact.example"]
action = "block"
'''
subprocess = __import__("subprocess")
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/etc/chromium"], check=True)
files = BrowserPolicies(enforce=True)
written = files.apply(load_policy(POLICY, "browser-test.toml"))

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<title>hello</title>hello"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
threading.Thread(target=server.serve_forever, daemon=True).start()
port = server.server_address[1]
args = json.loads(sys.argv[1]) + ["--host-resolver-rules=MAP * 127.0.0.1"]
from playwright.sync_api import sync_playwright, Error
results = {"written": [str(p) for p in written],
           "document": json.loads(written[0].read_text()) if written else None}
with sync_playwright() as pw:
    browser = pw.chromium.launch(executable_path=sys.argv[2], args=args)
    for name in ("chat.deepseek.com", "deepseek.com", "exact.example", "sub.exact.example",
                 "allowed.example", "notdeepseek.com"):
        page = browser.new_page()  # a fresh page: an error page must not interrupt the next
        try:
            response = page.goto(f"http://{name}:{port}/", timeout=15000)
            results[name] = f"loaded {response.status if response else '?'} {page.title()}"
        except Error as err:
            results[name] = str(err).splitlines()[0]
        page.close()
    browser.close()
target = written[0]
target.unlink()
results["tamper"] = files.check()
results["restored"] = target.exists()
print(json.dumps(results))
"""


def test_chromium_blocks_denied_names_by_managed_policy() -> None:
    if shutil.which("chromium") is None or shutil.which("unshare") is None:
        pytest.skip("needs Debian's chromium and unshare")
    pytest.importorskip("playwright.sync_api")
    out = subprocess.run(
        [
            "unshare", "-m", "--propagation", "private", sys.executable, "-c", SCRIPT,
            json.dumps(CHROMIUM_ARGS), CHROMIUM,
        ],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert results["written"] == ["/etc/chromium/policies/managed/proscribe.json"]
    assert results["document"] == {
        "URLBlocklist": ["deepseek.com", ".exact.example"],
        "DnsOverHttpsMode": "off",
    }
    for denied in ("chat.deepseek.com", "deepseek.com", "exact.example"):
        assert "ERR_BLOCKED_BY_ADMINISTRATOR" in results[denied], results
    for allowed in ("allowed.example", "notdeepseek.com", "sub.exact.example"):
        assert results[allowed] == "loaded 200 hello", results
    assert results["tamper"] == [
        "managed browser policy /etc/chromium/policies/managed/proscribe.json was removed"
    ]
    assert results["restored"] is True
