"""``proscribe agent …`` in-process: bad input is one line and exit 2; status/events work
without a running daemon."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from proscribe.cli import main

KEY = "ed25519:" + base64.b64encode(bytes(range(32))).decode()


def config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[policy]\nfile = "{tmp_path / "policy.toml"}"\ntrusted_keys = ["{KEY}"]\n{extra}'
    )
    return path


def test_run_with_a_bad_config_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = config(tmp_path, "[sensors]\nprocess = 'ebpf'\n")
    assert main(["agent", "run", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "sensors.process" in err and str(bad) in err and "Traceback" not in err


def test_missing_config_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "status", "--config", str(tmp_path / "none.toml")]) == 2
    assert "--config" in capsys.readouterr().err


def test_status_and_events_without_a_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path)
    assert main(["agent", "status", "--json", "--config", str(path)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["running"] is False
    assert status["spool"]["depth"] == 0
    assert status["policy"]["id"] is None and status["policy"]["stale"] is True
    assert main(["agent", "status", "--config", str(path)]) == 0
    assert "not running" in capsys.readouterr().out
    assert main(["agent", "events", "--config", str(path)]) == 0
    assert "no events" in capsys.readouterr().out
    assert main(["agent", "events", "--json", "--config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["agent", "events", "--limit", "0", "--config", str(path)]) == 2


def test_events_lists_spooled_events_with_control_characters_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from proscribe.agent.spool import Spool
    from proscribe.core.events import new_event

    path = config(tmp_path)
    (tmp_path / "state").mkdir()
    with Spool(tmp_path / "state" / "spool.db") as spool:
        spool.append(
            new_event(
                "process",
                rule="r1",
                action="killed",
                process={"pid": 9, "name": "evil\x1b[2J", "exe": "/x", "cmdline": [], "user": "u"},
            )
        )
    assert main(["agent", "events", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "r1" in out and "killed" in out and "\x1b" not in out and "\\x1b" in out
