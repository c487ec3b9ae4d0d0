"""The desktop notice: skipped cleanly where there is no session, sent where there is one."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from proscribe.agent.enforce.notify import Notifier, session_env
from tests.support.waits import wait_for


def test_skipped_without_a_session_but_always_logged(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(True, own_env={})
    with caplog.at_level(logging.WARNING):
        sent = notifier.tell("Program stopped", "deepseek was stopped")
    assert sent is False
    assert "deepseek was stopped" in caplog.text
    assert sum(notifier.skipped.values()) == 1


def test_disabled_is_a_no_op() -> None:
    notifier = Notifier(False, own_env={"DISPLAY": ":0"})
    assert notifier.tell("t", "m") is False and notifier.skipped["disabled"] == 1


def test_sent_through_notify_send_when_a_session_exists(tmp_path: Path) -> None:
    fake = tmp_path / "notify-send"
    marker = tmp_path / "called"
    fake.write_text(f'#!/bin/sh\necho "$DISPLAY|$@" > {marker}\n')
    fake.chmod(0o755)
    notifier = Notifier(True, command=str(fake), own_env={})
    assert notifier.tell("Title", "why", env={"DISPLAY": ":7"}) is True
    assert wait_for(lambda: marker.exists() and marker.read_text().startswith(":7|"), 5)
    assert "why" in marker.read_text()


def test_session_env_reads_only_session_variables(tmp_path: Path) -> None:
    (tmp_path / "5").mkdir()
    (tmp_path / "5" / "environ").write_bytes(b"DISPLAY=:1\0SECRET=x\0XDG_RUNTIME_DIR=/run/u\0")
    assert session_env(5, tmp_path) == {"DISPLAY": ":1", "XDG_RUNTIME_DIR": "/run/u"}
    assert session_env(6, tmp_path) == {}
