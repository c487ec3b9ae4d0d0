"""The agent's real reporter in a process of its own, for crash and clock tests: it reads the
spool in ``STATE/spool.db``, enrolls with ``STATE/enroll.secret`` and runs until killed.

``agent_state(tmp, database_url)`` migrates the collector's database and makes the agent's
state directory with an enroll secret from it; ``start_reporter(url, state, skew=3600)`` shifts
the process's ``time.time`` (a machine whose clock is an hour ahead); ``pending(spool)`` counts
what it has not had acknowledged yet.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import sys, time
skew = float(sys.argv[3])
if skew:
    _real = time.time
    time.time = lambda: _real() + skew  # this machine's clock is wrong
from pathlib import Path
from proscribe.agent.reporter import ReporterConfig, reporter_for_url
from proscribe.agent.spool import Spool

state = Path(sys.argv[2])
spool = Spool(state / "spool.db")
reporter = reporter_for_url(
    spool, url=sys.argv[1], ca_file=None, enroll_secret_file=state / "enroll.secret",
    state_dir=state, host_facts={"hostname": "ws", "os": "linux", "agent_version": "t"},
    config=ReporterConfig(heartbeat_interval=3600, policy_interval=3600, idle_check=0.1,
                          backoff_base=0.05, backoff_cap=0.3,
                          status_file=state / "reporter.json"),
)
reporter.start()
while True:
    time.sleep(1)
"""


def agent_state(tmp: Path, database_url: str) -> Path:
    from proscribe.collector.storage import open_database, upgrade
    from proscribe.collector.storage.agents import create_enroll_secret

    db = open_database(database_url)
    upgrade(db)
    with db.write() as conn:
        secret = create_enroll_secret(conn, "tests", 0)[1]
    db.dispose()
    state = tmp / "agent"
    state.mkdir()
    secret_file = state / "enroll.secret"
    secret_file.write_text(secret + "\n", encoding="utf-8")
    secret_file.chmod(0o600)
    return state


def start_reporter(url: str, state: Path, skew: float = 0.0) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, url, str(state), str(skew)])


def pending(spool_path: Path) -> int:
    conn = sqlite3.connect(spool_path, timeout=5)
    try:
        row = conn.execute("SELECT COUNT(*) FROM events WHERE state='pending'").fetchone()
        return int(row[0])
    finally:
        conn.close()
