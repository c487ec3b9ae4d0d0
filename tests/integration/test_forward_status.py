"""Forwarding state where people look: /metrics, the Admin page and ``proscribe collector
forward status`` (a real subprocess beside the running collector) show lag, counts and the last
error, and never a webhook URL's secret path."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dashboard_env import DashboardEnv, EnvTemplates, event, make_env
from tests.support.ports import free_tcp_port
from tests.support.waits import wait_for

SECRET_PATH = "/services/T0000/B0000/XXXXsecretXXXX"


@pytest.fixture
def closed_port() -> int:
    return free_tcp_port()


@pytest.fixture
def env(tmp_path: Path, closed_port: int, env_templates: EnvTemplates) -> Iterator[DashboardEnv]:
    forwards = [
        {
            "name": "siem",
            "kind": "syslog",
            "url": f"tcp://127.0.0.1:{closed_port}",
            "retry_max": 1.0,
        },
        {
            "name": "chat",
            "kind": "webhook",
            "format": "slack",
            "url": f"https://127.0.0.1:{closed_port}{SECRET_PATH}",
            "retry_max": 1.0,
        },
    ]
    config = {"forward": forwards, "metrics": {"access": "open"}}
    yield from make_env(tmp_path, env_templates, config=config)


def _failing(env: DashboardEnv) -> bool:
    return "failing" in env.login("adam").get("/admin").text


def test_metrics_admin_page_and_cli_show_the_lag_and_the_error(
    env: DashboardEnv, tmp_path: Path, closed_port: int
) -> None:
    agent = env.enroll()
    env.post_events(agent, [event() for _ in range(3)])
    metrics = ""

    def both_failing() -> bool:
        nonlocal metrics
        metrics = env.client.get("/metrics").text
        return (
            'proscribe_forward_failing{forwarder="siem"} 1' in metrics
            and 'proscribe_forward_failing{forwarder="chat"} 1' in metrics
        )

    assert wait_for(both_failing, timeout=30), metrics
    assert 'proscribe_forward_lag_events{forwarder="siem"} 3' in metrics
    assert 'proscribe_forward_sent_total{forwarder="chat"} 0' in metrics
    assert SECRET_PATH not in metrics

    page = env.login("adam").get("/admin").text
    assert 'id="forwarding"' in page and "failing" in page
    assert f"tcp://127.0.0.1:{closed_port}" in page and "3 events" in page
    assert "XXXXsecretXXXX" not in page

    config = tmp_path / "collector.toml"
    config.write_text(
        f'[database]\nurl = "{env.db_url}"\n'
        f'[[forward]]\nname = "siem"\nkind = "syslog"\nurl = "tcp://127.0.0.1:{closed_port}"\n'
    )
    cli = [sys.executable, "-m", "proscribe.cli", "collector", "forward", "status", "--config"]
    text = subprocess.run([*cli, str(config)], capture_output=True, text=True, check=True).stdout
    assert f"siem (syslog, rfc5424) -> tcp://127.0.0.1:{closed_port}: failing" in text
    assert "lag 3 events" in text and "last error at" in text
    # a table removed from the config keeps its row, and says so
    assert "chat (?, ?) -> (not configured)" in text and "no longer in the config" in text
    assert "XXXXsecretXXXX" not in text
    data = json.loads(
        subprocess.run(
            [*cli, str(config), "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    siem = next(f for f in data["forwarders"] if f["name"] == "siem")
    assert siem["lag_events"] == 3 and siem["sent"] == 0 and siem["last_error"]


def test_no_forwarding_configured(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "c.db"}"\n')
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "proscribe.cli",
            "collector",
            "forward",
            "status",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("no [[forward]] tables in")
