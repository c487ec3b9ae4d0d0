"""Shared test configuration.

Markers (see pyproject.toml): ``root``, ``linux``, ``postgres``, ``browser``, ``netns``,
``slow``. A test carrying one of them is skipped, with the reason, when the machine cannot run
it; CI runs as root with the services up, so there they run for real. Set
``PROSCRIBE_REQUIRE_ALL=1`` (CI does) to turn those skips into failures, so a broken
environment cannot pass CI by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.support.clock import ManualClock

if TYPE_CHECKING:
    from tests.support.dashboard_env import EnvTemplates


def _postgres_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def _why_not(marker: str) -> str | None:
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if marker == "root" and not is_root:
        return "needs root"
    if marker == "linux" and not sys.platform.startswith("linux"):
        return "needs Linux"
    if marker == "netns" and (not is_root or shutil.which("ip") is None):
        return "needs root and iproute2 for network namespaces"
    if marker == "postgres" and not _postgres_up():
        return "PostgreSQL is not reachable at 127.0.0.1:5432"
    if marker == "browser" and shutil.which("chromium") is None:
        return "Debian's chromium is not installed (apt-get install chromium)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    strict = os.environ.get("PROSCRIBE_REQUIRE_ALL") == "1"
    for marker in ("root", "linux", "netns", "postgres", "browser"):
        if item.get_closest_marker(marker) is None:
            continue
        reason = _why_not(marker)
        if reason is None:
            continue
        if strict:
            pytest.fail(f"PROSCRIBE_REQUIRE_ALL=1 but the environment lacks it: {reason}")
        pytest.skip(reason)


@pytest.fixture
def clock() -> ManualClock:
    """A clock frozen at the real time now, moved only by the test (``clock.advance(s)``); for
    code that takes ``clock=`` (the collector app, the reporter, the deduplicator)."""
    return ManualClock()


@pytest.fixture(scope="session")
def env_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvTemplates]:
    """The databases the dashboard environments (``make_env``) are copied from, made once per
    session; the PostgreSQL one is dropped at the end."""
    from tests.support.dashboard_env import EnvTemplates

    with EnvTemplates(tmp_path_factory.mktemp("env-templates")) as templates:
        yield templates
