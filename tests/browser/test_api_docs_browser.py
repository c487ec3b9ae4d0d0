"""``/docs`` and ``/redoc`` with ``[server] api_docs = true`` render in a real browser from the
collector alone: every request outside the collector is blocked (an air-gapped network), and
the page works within its Content-Security-Policy (Chromium reports each violation on the
console)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.devserver import CollectorProcess

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    folder: Path = tmp_path_factory.mktemp("apidocs")
    with CollectorProcess(folder, server_toml="api_docs = true\n") as server:
        yield server


@pytest.mark.parametrize(
    ("path", "rendered"), [("/docs", ".opblock"), ("/redoc", "[data-section-id]")]
)
def test_api_docs_render_offline_within_their_csp(
    collector: CollectorProcess, browser: Any, path: str, rendered: str
) -> None:
    context = browser.new_context()
    outside: list[str] = []
    problems: list[str] = []

    def only_the_collector(route: Any) -> None:
        if route.request.url.startswith(collector.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_collector)
    page = context.new_page()
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(collector.url + path)
    page.wait_for_selector(rendered, timeout=20_000)
    assert "/api/v1/events" in page.content()
    context.close()
    assert outside == []
    # ReDoc's sidebar credit shows an image from its CDN: the policy blocks it (the image then
    # hides itself). Nothing else may be refused, and nothing else may fail.
    blocked = [p for p in problems if "Content Security Policy" in p]
    assert all("https://cdn.redoc.ly/redoc/logo-mini.svg" in p for p in blocked), blocked
    assert [p for p in problems if p not in blocked] == []
