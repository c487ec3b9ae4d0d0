"""A real collector (``proscribe collector serve`` in a subprocess on a free loopback port)
with sample data, two people (a viewer and an admin), an agent enrolled through the real API,
and Debian's Chromium driven by Playwright. Shared by the whole browser suite (module scope)
so Chromium and the server start once."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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


@dataclass(frozen=True)
class Dashboard:
    url: str
    viewer_password: str
    admin_password: str
    enroll_secret: str
    folder: Path


@pytest.fixture(scope="session")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from proscribe.collector.storage.agents import create_enroll_secret
    from tests.support.devserver import CollectorProcess
    from tests.support.sample import (
        create_user,
        enroll_fleet,
        fill_events,
        prepare_database,
        store_sample_policies,
    )

    folder = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{folder / 'collector.db'}"
    db = prepare_database(url)
    now = time.time()
    store_sample_policies(db, now)
    fleet = enroll_fleet(db, 8, now)
    fill_events(db, fleet, 400, now=now, days=10)
    viewer = create_user(db, "vera", "viewer")
    admin = create_user(db, "adam", "admin")
    with db.write() as conn:
        _id, secret = create_enroll_secret(conn, "browser tests", int(now * 1e6))
    db.dispose()
    with CollectorProcess(folder, url) as collector:
        yield Dashboard(collector.url, viewer, admin, secret, folder)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
