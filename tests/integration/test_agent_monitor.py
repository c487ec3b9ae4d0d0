"""The real daemon in monitor mode with the polling sensor: it reports, it never kills.

Also covers what the polling sweep is for: a process that was already running (and had renamed
its comm to hide) before the agent started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.support.agent_harness import (
    Procs,
    Signer,
    events_for,
    policy_text,
    running_agent,
    write_config,
)
from tests.support.waits import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


@pytest.mark.slow
def test_monitor_mode_reports_would_block_and_kills_nothing(tmp_path: Path) -> None:
    token = secrets.token_hex(3)
    signer = Signer()
    signer.write(tmp_path / "policy.toml", policy_text(token))
    config = write_config(tmp_path, signer, mode="monitor", process="poll")
    state = tmp_path / "state"
    procs = Procs()
    try:
        # started before the agent, and renamed (comm) to look innocent
        python = tmp_path / f"dsk{token}-py"
        shutil.copy2(os.path.realpath(sys.executable), python)
        hidden = procs.start(
            [
                str(python),
                "-c",
                "import ctypes, time\n"
                "ctypes.CDLL(None).prctl(15, b'innocent', 0, 0, 0)\n"
                "time.sleep(60)\n",
            ]
        )
        comm = Path(f"/proc/{hidden.pid}/comm")
        assert wait_for(lambda: comm.read_text().strip() == "innocent", 10)

        with running_agent(config, tmp_path / "agent.log"):
            early = wait_for(lambda: events_for(state, hidden.pid), 10)
            assert [e["action"] for e in early] == ["would_block"], (
                tmp_path / "agent.log"
            ).read_text()

            binary = tmp_path / f"dsk{token}-chat"
            shutil.copy2("/bin/sleep", binary)
            late = procs.start([str(binary), "60"])
            events = wait_for(lambda: events_for(state, late.pid), 10)
            assert [e["action"] for e in events] == ["would_block"]

            script = tmp_path / "ollama"
            script.write_text("#!/usr/bin/python3\nimport time\ntime.sleep(60)\n")
            script.chmod(0o755)
            runner = procs.start([str(script), "run", f"deepseek-r1-{token}"])
            assert wait_for(lambda: events_for(state, runner.pid), 10)

            time.sleep(0.5)  # time for a wrong kill to land: monitor mode must kill nothing
            assert hidden.poll() is None and late.poll() is None and runner.poll() is None
    finally:
        procs.cleanup()
