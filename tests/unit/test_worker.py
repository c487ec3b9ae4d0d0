"""The one bounded hand-off (agent/worker.py): submit says whether it was taken, drops are
counted by reason, flush waits for what was taken, stop drains or counts what it could not."""

from __future__ import annotations

import threading

import pytest

from proscribe.agent.worker import BackgroundWorker
from tests.support.agent_harness import wait_for


@pytest.mark.parametrize("poll_interval", [None, 0.02])
def test_every_item_taken_is_handled_in_order(poll_interval: float | None) -> None:
    seen: list[int] = []
    worker: BackgroundWorker[int] = BackgroundWorker(
        seen.append, name="t", maxsize=1000, poll_interval=poll_interval
    )
    worker.start()
    try:
        assert all(worker.submit(i) for i in range(500))
        assert worker.flush(5)
        assert seen == list(range(500))
        assert worker.depth() == 0 and worker.counts["errors"] == 0
    finally:
        assert worker.stop(5)


def test_a_full_queue_refuses_and_counts_without_blocking() -> None:
    release = threading.Event()
    handled: list[int] = []

    def handle(item: int) -> None:
        release.wait(5)
        handled.append(item)

    worker: BackgroundWorker[int] = BackgroundWorker(handle, name="t", maxsize=3)
    worker.start()
    try:
        assert worker.submit(0)  # taken by the (now blocked) consumer
        assert wait_for(lambda: worker.depth() == 0)
        assert [worker.submit(i) for i in range(1, 6)] == [True, True, True, False, False]
        assert worker.drops["full"] == 2  # refused at once: the consumer is still blocked
    finally:
        release.set()
        worker.stop(5)
    assert handled == [0, 1, 2, 3]


def test_a_failing_handler_is_counted_and_the_next_item_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[int] = []

    def handle(item: int) -> None:
        if item == 1:
            raise RuntimeError("bug in the handler")
        seen.append(item)

    worker: BackgroundWorker[int] = BackgroundWorker(handle, name="t", maxsize=10)
    worker.start()
    for item in range(3):
        worker.submit(item)
    assert worker.flush(5)
    worker.stop(5)
    assert seen == [0, 2] and worker.counts["errors"] == 1
    assert "t: handling an item failed" in caplog.text


def test_stop_drains_what_was_taken_then_refuses() -> None:
    seen: list[int] = []
    worker: BackgroundWorker[int] = BackgroundWorker(
        seen.append, name="t", maxsize=100, poll_interval=0.5
    )
    worker.start()
    for item in range(50):
        worker.submit(item)
    assert worker.stop(5)  # does not wait for the 0.5 s tick either
    assert seen == list(range(50)) and not worker.alive
    assert not worker.submit(50) and worker.drops["stopped"] == 1


def test_stop_with_a_stuck_handler_counts_the_rest_as_dropped() -> None:
    release = threading.Event()
    handled: list[int] = []

    def handle(item: int) -> None:
        release.wait(5)
        handled.append(item)

    worker: BackgroundWorker[int] = BackgroundWorker(handle, name="t", maxsize=10)
    worker.start()
    for item in range(4):
        worker.submit(item)
    assert not worker.stop(0.1)  # item 0 is stuck
    release.set()
    assert wait_for(lambda: worker.drops["stopped"] == 3)
    assert handled == [0]  # the stuck one finished; the rest were counted, not run late


def test_flush_times_out_behind_a_slow_item_and_is_true_when_idle() -> None:
    release = threading.Event()
    worker: BackgroundWorker[int] = BackgroundWorker(
        lambda _i: release.wait(5), name="t", maxsize=10
    )
    assert worker.flush(0.1)  # not started, nothing taken
    worker.start()
    worker.submit(1)
    assert not worker.flush(0.1)
    release.set()
    assert worker.flush(5)
    worker.stop(5)


def test_it_restarts_after_a_stop() -> None:
    seen: list[int] = []
    worker: BackgroundWorker[int] = BackgroundWorker(seen.append, name="t", maxsize=10)
    for round_ in range(2):
        worker.start()
        worker.submit(round_)
        worker.stop(5)
    assert seen == [0, 1]


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        BackgroundWorker(print, name="t", maxsize=0)
