"""``bench.fleet`` at toy size (two real replicas behind Debian's haproxy on PostgreSQL): it runs
end to end, prints each figure, and drops its databases. Not a timing test: the figures are not
checked, only that the benchmark still works (docs/scale.md quotes its full-size run)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from bench import fleet
from tests.support.haproxy import haproxy_path
from tests.support.postgres import ADMIN_DSN

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(
        haproxy_path() is None, reason="haproxy is not installed (apt-get install haproxy)"
    ),
]


def _databases(prefix: str) -> list[str]:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",)
        ).fetchall()
    return [str(r[0]) for r in rows]


def test_fleet_bench_runs_at_toy_size(capsys: pytest.CaptureFixture[str]) -> None:
    name = f"proscribe_fleet_smoke_{uuid.uuid4().hex[:8]}"
    code = fleet.main(
        [
            "--database", name, "--agents", "1200", "--enroll-http", "20", "--hb-seconds", "1",
            "--ingest-agents", "2", "--ingest-batches", "4", "--events", "3000",
            "--report-repeats", "1", "--procs", "2",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    for line in (
        "postgresql 15",
        "enrolled 20 agents over HTTP through haproxy",
        "enrolled 1,180 more agents in the database",
        "restarted: loaded 1,200 agent keys",  # each replica, before the heartbeat steps
        "heartbeats, first contact of 20 hosts",
        "heartbeats, steady state, 3.1% of target",
        "signed before the step (the agents' own CPU, not in the figures above)",
        "haproxy opened",
        "ingest over HTTP through haproxy",
        "built and signed before the clock",
        "raw PostgreSQL inserts, same run",
        "bulk-loaded",
        "90-day report over 3,000 events",
    ):
        assert line in out, out
    assert "failed batches" not in out, out
    # Every heartbeat was answered 200 (the generator checks each answer and counts by kind).
    steps = [line for line in out.splitlines() if line.startswith("heartbeats, ")]
    assert len(steps) >= 2 and all("; failures 0;" in line for line in steps), out
    assert _databases(name) == []
