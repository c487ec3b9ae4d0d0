"""Waiting for something a real process or thread will do, instead of sleeping a fixed time.

``wait_for`` polls a condition until it holds or the timeout passes and returns the condition's
last value, so ``assert wait_for(lambda: ...)`` fails with the same value an immediate check
would have given. The timeout is an upper bound for a loaded machine, not an expectation: a
passing test returns as soon as the condition holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, step: float = 0.02) -> T:
    """Call ``predicate`` every ``step`` seconds until it returns something true, at most
    ``timeout`` seconds; return its last value (false-y on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()
