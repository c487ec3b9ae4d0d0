"""End to end on loopback: the real agent kills a denied process, and its event reaches a real
collector (uvicorn, SQLite) through enrollment and signed uploads."""

from __future__ import annotations

import secrets
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_harness import (
    Procs,
    Signer,
    policy_text,
    running_agent,
    write_config,
    write_secret,
)
from tests.support.ports import free_tcp_port
from tests.support.waits import wait_for

pytest.importorskip("uvicorn")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc"),
]


class Collector:
    def __init__(self, tmp: Path) -> None:
        import uvicorn

        from proscribe.collector.app import create_app
        from proscribe.collector.config import settings_from_mapping

        settings = settings_from_mapping({"database": {"url": f"sqlite:///{tmp / 'c.db'}"}})
        self.app = create_app(settings)
        self.port = free_tcp_port()
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        assert wait_for(lambda: self.server.started, 15)

    def enroll_secret(self) -> str:
        from proscribe.collector.storage import agents

        with self.app.state.collector.db.write() as conn:
            _sid, secret = agents.create_enroll_secret(conn, "test", 0)
        return str(secret)

    def events(self) -> list[dict[str, Any]]:
        from sqlalchemy import select

        from proscribe.collector.storage.tables import events

        with self.app.state.collector.db.read() as conn:
            return [dict(r._mapping) for r in conn.execute(select(events))]

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    c = Collector(tmp_path)
    yield c
    c.close()


def test_violation_travels_from_agent_to_collector(tmp_path: Path, collector: Collector) -> None:
    token = secrets.token_hex(3)
    signer = Signer()
    signer.write(tmp_path / "policy.toml", policy_text(token))
    write_secret(tmp_path / "enroll.secret", collector.enroll_secret() + "\n")
    config = write_config(
        tmp_path,
        signer,
        extra=(
            f'[collector]\nurl = "http://127.0.0.1:{collector.port}"\n'
            'enroll_secret_file = "enroll.secret"\n'
        ),
    )
    procs = Procs()
    try:
        with running_agent(config, tmp_path / "agent.log"):
            binary = tmp_path / f"dsk{token}-e2e"
            shutil.copy2("/bin/sleep", binary)
            proc = procs.start([str(binary), "30"])
            assert proc.wait(10) < 0
            stored = wait_for(
                lambda: [e for e in collector.events() if e.get("rule") == "deepseek-desktop"],
                15,
            )
            assert stored, (tmp_path / "agent.log").read_text()
            assert stored[0].get("action") == "killed"
    finally:
        procs.cleanup()


def _host_row(collector: Collector) -> Any:
    from sqlalchemy import select

    from proscribe.collector.storage.tables import hosts

    with collector.app.state.collector.db.read() as conn:
        return conn.execute(select(hosts)).first()


def test_real_agent_reports_health_and_says_goodbye_on_a_clean_stop(
    tmp_path: Path, collector: Collector
) -> None:
    """Measured on main: a clean stop looked like an outage (host "reporting" until the window
    ended). Now the last heartbeat says who stopped it and the host is "stopped"."""
    import json

    from proscribe.collector.compliance import fleet

    signer = Signer()
    signer.write(tmp_path / "policy.toml", policy_text(secrets.token_hex(3)))
    write_secret(tmp_path / "enroll.secret", collector.enroll_secret() + "\n")
    config = write_config(
        tmp_path,
        signer,
        extra=(
            f'[collector]\nurl = "http://127.0.0.1:{collector.port}"\n'
            'enroll_secret_file = "enroll.secret"\n'
        ),
    )
    with running_agent(config, tmp_path / "agent.log") as agent:
        row = wait_for(lambda: _host_row(collector), 15)
        assert row is not None, (tmp_path / "agent.log").read_text()
        health = json.loads(row.health)
        assert health["guard"] in ("netlink", "poll", "fanotify", "bpf")
        assert health["sensors"]["process"]["alive"] is True
        assert row.machine_id and len(row.machine_id) >= 8
        agent.terminate()  # SIGTERM, as systemctl stop sends
        assert agent.wait(15) == 0
    row = _host_row(collector)
    assert row.goodbye_us is not None and "SIGTERM" in row.goodbye_by
    state = collector.app.state.collector
    with state.db.read() as conn:
        found = fleet(conn, now_us=state.now_us(), window_us=180_000_000)
    (host,) = found.hosts
    assert host.state.state == "stopped", host.state
    assert "SIGTERM" in host.state.reasons[0]


def test_agent_refuses_a_world_readable_enroll_secret(tmp_path: Path) -> None:
    import subprocess

    from tests.support.agent_harness import PROSCRIBE, REPO

    signer = Signer()
    signer.write(tmp_path / "policy.toml", policy_text(secrets.token_hex(3)))
    secret = tmp_path / "enroll.secret"
    secret.write_text("pse_not-a-real-secret\n")
    secret.chmod(0o644)
    config = write_config(
        tmp_path,
        signer,
        extra='[collector]\nurl = "http://127.0.0.1:9"\nenroll_secret_file = "enroll.secret"\n',
    )
    done = subprocess.run(
        [*PROSCRIBE, "agent", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(secret) in lines[0] and "chmod 600" in lines[0] and "0644" in lines[0]
    # The innocent look-alike: the same file at 0600 starts (and is stopped by the test).
    secret.chmod(0o600)
    with running_agent(config, tmp_path / "agent.log"):
        pass
