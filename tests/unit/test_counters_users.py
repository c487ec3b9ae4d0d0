"""Two small shared primitives: thread-safe counters and the bounded uid → name cache."""

from __future__ import annotations

import os
import pwd
import sys
import threading
from collections.abc import Iterator

import pytest

from proscribe.agent.counters import Counters
from proscribe.agent.sensors.users import UserNames


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads as often as the interpreter allows, so a lost update would show."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("busy_switching")
def test_no_increment_is_lost_between_threads() -> None:
    counts = Counters(("allowed",))
    threads = [
        threading.Thread(target=lambda: [counts.add("allowed") for _ in range(20_000)])
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts["allowed"] == 160_000


def test_counters_snapshot_names_and_maximum() -> None:
    counts = Counters(("a", "b"))
    assert counts.snapshot() == {"a": 0, "b": 0}  # declared names show up at 0
    counts.add("a", 5)
    counts.add("c")
    counts.raise_to("slowest", 7)
    counts.raise_to("slowest", 3)  # a maximum never goes down
    assert counts.snapshot() == {"a": 5, "b": 0, "c": 1, "slowest": 7}
    assert counts["missing"] == 0


def test_user_names_are_looked_up_and_cached() -> None:
    users = UserNames()
    me = pwd.getpwuid(os.getuid()).pw_name
    assert users.name(os.getuid()) == me
    assert users.name(None) == ""
    unknown = 4_000_000_001  # no account: named by its number, as ps does
    assert users.name(unknown) == str(unknown)
    assert len(users) == 2


def test_user_names_are_bounded_least_recently_used_first() -> None:
    users = UserNames(capacity=3)
    for uid in (4_000_000_001, 4_000_000_002, 4_000_000_003):
        users.name(uid)
    users.name(4_000_000_001)  # used again: the oldest is now ..002
    users.name(4_000_000_004)
    assert len(users) == 3
    assert list(users._names) == [4_000_000_003, 4_000_000_001, 4_000_000_004]


@pytest.mark.usefixtures("busy_switching")
def test_user_names_from_many_threads_stay_within_the_bound() -> None:
    users = UserNames(capacity=50)
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for uid in range(4_000_000_000 + offset, 4_000_000_000 + offset + 500):
                assert users.name(uid) == str(uid)
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i * 100,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(users) == 50
