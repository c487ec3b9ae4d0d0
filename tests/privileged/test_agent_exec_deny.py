"""The real daemon with ``[enforce] exec_deny_mounts``: a denied program never starts.

fanotify marks go only on a private tmpfs this test mounts under its temp dir and unmounts.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.privileged.test_exec_deny import private_tmpfs
from tests.support.agent_harness import (
    Signer,
    policy_text,
    running_agent,
    spool_events,
    write_config,
)
from tests.support.waits import wait_for

pytestmark = [pytest.mark.root, pytest.mark.linux, pytest.mark.slow]


def _try_exec(path: Path) -> int:
    """Exec ``path`` from a child; 0 when it ran, else the errno of the failed exec."""
    code = (
        "import os, sys\n"
        "try:\n"
        f"    os.execv({str(path)!r}, [{str(path)!r}, '0'])\n"
        "except OSError as e:\n"
        "    sys.exit(e.errno)\n"
    )
    return subprocess.run([sys.executable, "-c", code], timeout=30, check=False).returncode


@pytest.mark.parametrize("mode", ["enforce", "monitor"])
def test_daemon_denies_exec_on_the_marked_mount(tmp_path: Path, mode: str) -> None:
    token = uuid.uuid4().hex[:8]
    signer = Signer()
    signer.write(tmp_path / "policy.toml", policy_text(token))
    with private_tmpfs(tmp_path) as mnt:
        denied = mnt / f"dsk{token}"
        allowed = mnt / "allowed-tool"
        for copy in (denied, allowed):
            shutil.copy2("/bin/sleep", copy)
        config = write_config(
            tmp_path,
            signer,
            mode=mode,
            extra=f'exec_deny_mounts = ["{mnt}"]\nexec_deny_timeout_ms = 500\n',
        )
        with running_agent(config, tmp_path / "agent.log"):
            result = _try_exec(denied)
            assert _try_exec(allowed) == 0
            if mode == "enforce":
                assert result == errno.EPERM
            else:
                assert result == 0
            expected = "denied" if mode == "enforce" else "would_block"

            def refused() -> list[dict[str, object]]:
                return [
                    e
                    for e in spool_events(tmp_path / "state")
                    if e.get("action") == expected and "exec" in str(e.get("detail"))
                ]

            events = wait_for(refused, timeout=10)
            assert events, (tmp_path / "agent.log").read_text()
            event = events[0]
            assert event["rule"] == "deepseek-desktop"
            assert event["process"]["exe"] == str(denied)  # type: ignore[index]
