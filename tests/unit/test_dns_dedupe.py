"""DnsDeduper: one event per key within the window, repeats counted (time injected)."""

from __future__ import annotations

from proscribe.agent.sensors.dns.dedupe import DnsDeduper


def test_first_then_repeats_then_new_window() -> None:
    now = [1000.0]
    deduper = DnsDeduper(window=60, clock=lambda: now[0])
    key = ("deepseek-web", 4242, "chat.deepseek.com")
    assert deduper.offer(key) == (True, None)
    deduper.remember(key, "event-1")
    now[0] += 30
    assert deduper.offer(key) == (False, "event-1")
    assert deduper.offer(key) == (False, "event-1")
    assert deduper.repeats(key) == 2 and deduper.suppressed == 2
    assert deduper.offer(("deepseek-web", 4243, "chat.deepseek.com"))[0]  # another process
    now[0] += 31
    assert deduper.offer(key) == (True, None)


def test_capacity_is_bounded() -> None:
    deduper = DnsDeduper(window=60, max_keys=10, clock=lambda: 0.0)
    for i in range(100):
        assert deduper.offer(("r", i, "n"))[0]
    assert len(deduper._seen) <= 10
