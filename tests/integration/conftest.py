"""Fixtures shared by the integration tests (real processes, real servers on loopback).

Harnesses live in ``tests.support`` (importable from tests and benchmarks alike); what is here
wires them into pytest.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.agent_harness import Procs


@pytest.fixture
def procs() -> Iterator[Procs]:
    """Processes the test starts (``procs.start(argv)``); each is killed by pid at the end."""
    started = Procs()
    yield started
    started.cleanup()
