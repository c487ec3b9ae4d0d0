"""The hand-off from a sensor thread to its consumer: the agent's ``BackgroundWorker`` against the
three hand-offs it replaced, run side by side in one process.

Two figures per mechanism, each the median of ``--rounds`` rounds:

* ``submit``: the producer's cost per item (what a packet- or exec-reading thread pays), with
  the consumer draining on its own thread;
* ``latency``: from ``submit`` to the handler running, one item at a time with a pause between
  (what exec → event pays for the hand-off).

Peers: ``queue.Queue`` with a blocking ``get`` (the process sensor's checker and the exec-deny
reports before), and a ``deque`` drained every 20 ms (the DNS delivery before).

    .venv/bin/python -m bench.handoff [--items 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import queue
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

from proscribe.agent.worker import BackgroundWorker

Handoff = tuple[Callable[[float], bool], Callable[[], None]]  # (submit, stop)


def worker_handoff(handle: Callable[[float], None], poll: float | None) -> Handoff:
    worker: BackgroundWorker[float] = BackgroundWorker(
        handle, name="bench", maxsize=1_000_000, poll_interval=poll
    )
    worker.start()
    return worker.submit, lambda: worker.stop(10)


def queue_handoff(handle: Callable[[float], None]) -> Handoff:
    """The process sensor's checker before: ``queue.Queue`` + ``put_nowait`` + blocking ``get``."""
    items: queue.Queue[float | None] = queue.Queue(maxsize=1_000_000)

    def run() -> None:
        while (item := items.get()) is not None:
            handle(item)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def submit(item: float) -> bool:
        try:
            items.put_nowait(item)
        except queue.Full:
            return False
        return True

    def stop() -> None:
        items.put(None)
        thread.join(10)

    return submit, stop


def deque_handoff(handle: Callable[[float], None], interval: float = 0.02) -> Handoff:
    """The DNS delivery before: a ``deque`` the consumer drains every ``interval`` seconds."""
    buffer: deque[float] = deque()
    stopping = threading.Event()

    def run() -> None:
        while True:
            stopped = stopping.wait(interval)
            while buffer:
                handle(buffer.popleft())
            if stopped:
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def submit(item: float) -> bool:
        if len(buffer) >= 1_000_000:
            return False
        buffer.append(item)
        return True

    def stop() -> None:
        stopping.set()
        thread.join(10)

    return submit, stop


MECHANISMS: dict[str, Callable[[Callable[[float], None]], Handoff]] = {
    "BackgroundWorker (wake per item)": lambda h: worker_handoff(h, None),
    "queue.Queue (before: process sensor, exec-deny)": queue_handoff,
    "BackgroundWorker (drain every 20 ms)": lambda h: worker_handoff(h, 0.02),
    "deque every 20 ms (before: DNS delivery)": deque_handoff,
}


def submit_cost(make: Callable[[Callable[[float], None]], Handoff], items: int) -> float:
    """Seconds per submit, producer side, with the consumer running."""
    done = threading.Event()
    seen = [0]

    def handle(_item: float) -> None:
        seen[0] += 1
        if seen[0] == items:
            done.set()

    submit, stop = make(handle)
    started = time.perf_counter()
    for _ in range(items):
        submit(0.0)
    spent = time.perf_counter() - started
    done.wait(30)
    stop()
    return spent / items


def latency(make: Callable[[Callable[[float], None]], Handoff], samples: int) -> float:
    """Median seconds from submit to the handler, one item at a time."""
    got: list[float] = []
    arrived = threading.Event()

    def handle(sent: float) -> None:
        got.append(time.perf_counter() - sent)
        arrived.set()

    submit, stop = make(handle)
    for _ in range(samples):
        arrived.clear()
        submit(time.perf_counter())
        arrived.wait(5)
        time.sleep(0.002)
    stop()
    return statistics.median(got)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    costs: dict[str, list[float]] = {name: [] for name in MECHANISMS}
    delays: dict[str, list[float]] = {name: [] for name in MECHANISMS}
    for _ in range(args.rounds):  # interleaved, so machine load falls on all alike
        for name, make in MECHANISMS.items():
            costs[name].append(submit_cost(make, args.items))
            delays[name].append(latency(make, args.samples // args.rounds + 1))
    print(f"hand-off, median of {args.rounds} rounds ({args.items} items per submit round)")
    print(f"  {'mechanism':50} {'submit':>10} {'latency':>10}")
    for name in MECHANISMS:
        cost = statistics.median(costs[name]) * 1e9
        delay = statistics.median(delays[name]) * 1e6
        print(f"  {name:50} {cost:7.0f} ns {delay:7.0f} µs")
    pairs = list(MECHANISMS)
    for new, old in ((pairs[0], pairs[1]), (pairs[2], pairs[3])):
        ratio = statistics.median(costs[new]) / statistics.median(costs[old])
        lat = statistics.median(delays[new]) / statistics.median(delays[old])
        print(f"  {new.split(' (')[0]} {new.split(' (')[1][:-1]} / peer: submit {ratio:.2f}x, "
              f"latency {lat:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
