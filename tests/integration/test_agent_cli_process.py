"""``proscribe agent …`` as real processes: one agent per state directory, status that says why a
policy was refused, and output into a pipe whose reader stops early."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from proscribe.agent.spool import Spool
from proscribe.core.events import new_event
from tests.support.agent_harness import (
    PROSCRIBE,
    REPO,
    Signer,
    policy_text,
    running_agent,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.linux]


def agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PROSCRIBE, "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def test_a_second_agent_on_the_same_state_directory_exits_2_naming_the_first(
    tmp_path: Path,
) -> None:
    signer = Signer()
    signer.write(tmp_path / "policy.toml", policy_text("lock"))
    config = write_config(tmp_path, signer, process="poll")
    with running_agent(config, tmp_path / "first.log") as first:
        started = time.monotonic()
        second = agent("run", "--config", str(config), timeout=30)
        assert second.returncode == 2, second.stdout + second.stderr
        assert time.monotonic() - started < 20  # refused at once, before building anything
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"pid {first.pid}" in lines[0] and str(tmp_path / "state") in lines[0]
        assert first.poll() is None  # the first one is undisturbed
        status = json.loads(agent("status", "--json", "--config", str(config)).stdout)
        assert status["running"] is True and status["pid"] == first.pid
    # The lock goes with its holder: a new agent starts on the same directory afterwards.
    with running_agent(config, tmp_path / "third.log") as third:
        assert third.poll() is None


def test_a_second_agent_with_another_state_directory_is_fine(tmp_path: Path) -> None:
    signer = Signer()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        signer.write(tmp_path / name / "policy.toml", policy_text(f"lock{name}"))
    config_a = write_config(tmp_path / "a", signer, process="poll")
    config_b = write_config(tmp_path / "b", signer, process="poll")
    with (
        running_agent(config_a, tmp_path / "a.log") as a,
        running_agent(config_b, tmp_path / "b.log") as b,
    ):
        assert a.poll() is None and b.poll() is None


def test_status_text_says_why_the_policy_was_rejected(tmp_path: Path) -> None:
    trusted, stranger = Signer(), Signer()
    stranger.write(tmp_path / "policy.toml", policy_text("rej"))  # not signed by a trusted key
    config = write_config(tmp_path, trusted, process="poll")
    with running_agent(config, tmp_path / "agent.log"):
        shown = wait_for(lambda: "last rejected" in agent("status", "--config", str(config)).stdout)
        assert shown
        text = agent("status", "--config", str(config)).stdout
        line = next(ln for ln in text.splitlines() if "last rejected" in ln)
        assert "bad_signature" in line and "signature check failed" in line, text
        assert "policy:    none in force" in text


def _spool_many(tmp_path: Path, n: int = 500) -> Path:
    signer = Signer()
    config = write_config(tmp_path, signer, process="poll")
    (tmp_path / "state").mkdir()
    events = [
        new_event("process", rule="r", action="killed", process={"pid": i, "name": f"p{i}"})
        for i in range(n)
    ]
    with Spool(tmp_path / "state" / "spool.db") as spool:
        spool.append_many(events)
    return config


@pytest.mark.parametrize(
    "args", [["events"], ["events", "--json"], ["status"], ["status", "--json"]]
)
def test_output_into_a_pipe_closed_early_is_quiet(tmp_path: Path, args: list[str]) -> None:
    config = _spool_many(tmp_path)
    # What `proscribe agent events | head -1` does: the reader leaves after one line.
    command = " ".join([*PROSCRIBE, "agent", *args, "--config", str(config)])
    out = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command} | head -1; echo rc=${{PIPESTATUS[0]}} >&2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert len(out.stdout.splitlines()) == 1
    assert "Traceback" not in out.stderr and "Error" not in out.stderr, out.stderr
    # Either it finished writing before head left (0), or it noticed (141, as cat would).
    assert out.stderr.strip().splitlines()[-1] in ("rc=0", "rc=141"), out.stderr


def test_status_while_the_agent_starts_never_disturbs_it(tmp_path: Path) -> None:
    # `agent status` before the first status.json used to open the policy store beside the
    # starting daemon, whose tidying removed the daemon's temp file mid-write (it crashed).
    # Now the reader waits for the state directory's lock, or says the agent is starting.
    signer = Signer()
    signer.write(tmp_path / "policy.toml", policy_text("race"))
    config = write_config(tmp_path, signer, process="poll")
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [*PROSCRIBE, "agent", "run", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            result = agent("status", "--json", "--config", str(config))
            assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
            state = json.loads(result.stdout)
            assert daemon.poll() is None, log.read_text()
            if (
                state.get("running")
                and not state.get("starting")
                and state.get("policy", {}).get("id")
            ):
                break
        assert state["policy"]["id"] == "test-ban", state
        assert daemon.poll() is None, log.read_text()
    finally:
        daemon.terminate()
        daemon.wait(15)


def test_an_agent_starting_while_a_reader_holds_the_lock_waits_for_it(tmp_path: Path) -> None:
    import threading

    from proscribe.agent.state_lock import StateLock

    signer = Signer()
    signer.write(tmp_path / "policy.toml", policy_text("wait"))
    config = write_config(tmp_path, signer, process="poll")
    reader = StateLock(tmp_path / "state").acquire(write_pid=False)  # what `agent status` does
    threading.Timer(1.0, reader.release).start()
    with running_agent(config, tmp_path / "agent.log") as daemon:
        assert daemon.poll() is None
        assert StateLock(tmp_path / "state").holder() == daemon.pid
