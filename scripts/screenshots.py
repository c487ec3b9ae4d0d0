#!/usr/bin/env python3
"""Screenshots of every dashboard page, for the README and docs/dashboard.md.

Starts a real collector (``proscribe collector serve``) on a free loopback port with sample
data (a 40-host fleet, the US Navy DeepSeek pack as serials 1 and 2 with two exemptions, six
thousand violations over 30 days), signs in with Debian's Chromium through Playwright, and
writes one PNG per page to ``docs/screenshots/``.

    .venv/bin/python -m scripts.screenshots [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.parse
import uuid
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.sync_api import Page, sync_playwright

from proscribe.collector.storage.admin_actions import add_signer
from proscribe.collector.storage.agents import create_enroll_secret
from proscribe.collector.storage.audit import append_audit
from proscribe.core.policy.keys import key_id
from tests.support.devserver import CollectorProcess
from tests.support.sample import (
    create_user,
    enroll_fleet,
    fill_events,
    prepare_database,
    store_sample_policies,
)
from tests.support.simulate import SimulatedAgent

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1200, "height": 750}
PAGES = (
    ("overview", "/"),
    ("violations", "/violations?since=30d&limit=25"),
    ("hosts", "/hosts"),
    ("host", None),  # the busiest host's page, found from the overview
    ("policy", "/policy"),
    ("report", "/report?since=30d"),
    ("admin", "/admin"),
)


def sign_in(page: Page, base: str, name: str, password: str) -> None:
    page.goto(f"{base}/login")
    page.fill("#username", name)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


HOSTILE_EVENT = {
    "kind": "process",
    "rule": "deepseek-desktop",
    "action": "killed",
    "severity": "high",
    "policy": {"id": "us-navy-deepseek-2025", "serial": 2},
    "process": {
        "pid": 4242,
        "name": "<script>window.__pwned = 'script'</script>",
        "exe": "/home/bob/Downloads/evil\u202etxt.exe",
        "cmdline": ['"><img src=x onerror="window.__pwned=\'img\'">', "{{7*7}}", "\x1b[2J"],
        "user": '"><img src=x onerror="window.__pwned=\'user\'">{{7*7}}',
    },
}


def shoot_hostile(page: Page, base: str, secret: str, out: Path) -> None:
    agent = SimulatedAgent(base)
    try:
        agent.enroll(secret, hostname="<img src=x onerror=window.__pwned='host'>")
        moment = datetime.now(UTC)
        stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        reply = agent.post_events([{**HOSTILE_EVENT, "id": str(uuid.uuid4()), "time": stamp}])
        if reply.status != 200:
            raise SystemExit(f"could not store the hostile event: HTTP {reply.status}")
    finally:
        agent.close()
    page.set_viewport_size({"width": 1200, "height": 500})
    page.goto(f"{base}/violations?since=1h&rule=deepseek-desktop&host=" + urllib.parse.quote(
        "<img src=x onerror=window.__pwned='host'>"))  # fmt: skip
    target = out / "hostile-strings.png"
    page.screenshot(path=str(target))
    print(f"{target} {target.stat().st_size // 1024} KiB")
    page.set_viewport_size(VIEWPORT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/screenshots", type=Path)
    parser.add_argument("--events", type=int, default=6000)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="proscribe-shots-") as tmp:
        folder = Path(tmp)
        url = f"sqlite:///{folder / 'collector.db'}"
        db = prepare_database(url)
        now = time.time()
        signer = Ed25519PrivateKey.generate()
        store_sample_policies(db, now, signer)
        with db.write() as conn:  # the signing key, named in the registry
            add_signer(
                conn,
                key_id(signer.public_key()),
                name="Dana Reyes",
                role="CISO",
                actor="compliance-admin",
                via="cli",
                now_us=int(now * 1e6),
            )
        fleet = enroll_fleet(db, 40, now)
        fill_events(db, fleet, args.events, now=now, days=30)
        password = create_user(db, "compliance-admin", "admin")
        with db.write() as conn:  # a little admin history for the admin page
            for label in ("finance laptops", "engineering workstations"):
                secret_id, secret = create_enroll_secret(conn, label, int(now * 1e6))
                append_audit(
                    conn,
                    actor="compliance-admin",
                    action="enroll_secret.create",
                    target=secret_id,
                    detail={"label": label},
                    now_us=int(now * 1e6),
                )
        db.dispose()
        with CollectorProcess(folder, url) as collector, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
            page = context.new_page()
            page.goto(f"{collector.url}/login")
            page.screenshot(path=str(args.out / "login.png"))
            sign_in(page, collector.url, "compliance-admin", password)
            for name, path in PAGES:
                if path is None:
                    page.goto(f"{collector.url}/hosts")
                    href = page.get_attribute("table a[href^='/hosts/']", "href")
                    path = href or "/hosts"
                page.goto(f"{collector.url}{path}")
                target = args.out / f"{name}.png"
                page.screenshot(path=str(target))
                print(f"{target} {target.stat().st_size // 1024} KiB")
            # Last (so the other pages do not show it): what an attacker-named host looks like.
            shoot_hostile(page, collector.url, secret, args.out)
            # The report as it prints (print stylesheet): the cover page.
            page.goto(f"{collector.url}/report?since=30d")
            page.emulate_media(media="print")
            target = args.out / "report-print.png"
            page.screenshot(path=str(target))
            print(f"{target} {target.stat().st_size // 1024} KiB")
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
