"""The real daemon against real model files and real processes that map them (issue 12).

The policy's model rules match only names carrying a random token, the agent watches only this
test's folders (user and system stores off), and every process is started here and killed by
pid. GGUF files are written by llama.cpp's own writer (the ``gguf`` package).
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from proscribe.cli import main
from tests.support.agent_harness import (
    Procs,
    Signer,
    policy_text,
    running_agent,
    spool_events,
    write_config,
)
from tests.support.models import write_gguf
from tests.support.waits import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")

MAPPER = """
import mmap, sys, time
with open(sys.argv[1], "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
print("mapped", flush=True)
time.sleep(60)
"""


def _policy(token: str) -> str:
    return policy_text(
        token,
        extra=f"""
[[model]]
id     = "deepseek-models"
names  = ["DeepSeek*{token}*"]
action = "block"

[[model]]
id     = "quarantined-models"
names  = ["Quarantine*{token}*"]
action = "quarantine"
""",
    )


def _setup(tmp_path: Path, mode: str = "enforce") -> tuple[Path, Path, Path, str]:
    token = secrets.token_hex(4)
    store = tmp_path / "store"
    store.mkdir()
    signer = Signer()
    signer.write(tmp_path / "policy.toml", _policy(token))
    config = write_config(
        tmp_path,
        signer,
        mode=mode,
        process="off",
        extra=f"""
[models]
dirs = ["{store}"]
user_stores = false
system_stores = false
maps_interval = 0.5
quarantine_dir = "{tmp_path / "quarantine"}"
""",
    )
    return config, store, tmp_path / "state", token


def _model_events(state: Path) -> list[dict[str, Any]]:
    return [e for e in spool_events(state) if e["kind"] == "model"]


def _mapper(procs: Procs, path: Path) -> subprocess.Popen[bytes]:
    proc = procs.start([sys.executable, "-c", MAPPER, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"mapped\n"
    return proc


def test_found_by_content_and_its_runtime_killed(tmp_path: Path, procs: Procs) -> None:
    config, store, state, token = _setup(tmp_path)
    with running_agent(config, tmp_path / "agent.log"):
        # a renamed GGUF: only its metadata says what it is
        model = write_gguf(
            store / "sub" / "model.gguf", arch="qwen2", name=f"DeepSeek R1 Distill {token}"
        )
        # look-alikes: another model carrying the token, a text file named like DeepSeek
        llama = write_gguf(store / f"deepseek-{token}.gguf", arch="llama", name=f"Llama {token}")
        (store / f"deepseek-notes-{token}.md").write_text(f"DeepSeek R1 {token} notes\n")
        assert wait_for(lambda: _model_events(state), timeout=10)
        found = _model_events(state)[0]
        assert found["rule"] == "deepseek-models" and found["action"] == "reported"
        section = found["file"]
        assert (
            section["path"] == str(model) and section["owner"] == pwd.getpwuid(os.getuid()).pw_name
        )
        assert section["size"] == model.stat().st_size and len(section["sha256"]) == 64
        assert f"GGUF general.name = 'DeepSeek R1 Distill {token}'" in section["model"]["evidence"]

        innocent = _mapper(procs, llama)
        runtime = _mapper(procs, model)
        assert wait_for(lambda: runtime.poll() is not None, timeout=5)
        assert runtime.returncode == -signal.SIGKILL
        killed = [e for e in _model_events(state) if e["action"] == "killed"]
        assert killed[0]["process"]["pid"] == runtime.pid
        assert "has it" in killed[0]["detail"]

        # anywhere else (not a watched folder): caught by the look at mapped files
        elsewhere = write_gguf(
            tmp_path / "elsewhere" / "x.bin", name=f"DeepSeek V3 {token}", tensor_bytes=2 << 20
        )
        far = _mapper(procs, elsewhere)
        assert wait_for(lambda: far.poll() is not None, timeout=5)
        time.sleep(1.0)
        assert innocent.poll() is None  # the Llama model's reader was left alone
    paths = {e["file"]["path"] for e in _model_events(state)}
    assert paths == {str(model), str(elsewhere)}


def test_monitor_mode_reports_and_kills_nothing(tmp_path: Path, procs: Procs) -> None:
    config, store, state, token = _setup(tmp_path, mode="monitor")
    with running_agent(config, tmp_path / "agent.log"):
        model = write_gguf(store / "m.gguf", arch="deepseek2", name=f"DeepSeek {token}")
        assert wait_for(lambda: _model_events(state), timeout=10)
        runtime = _mapper(procs, model)
        assert wait_for(
            lambda: any(e["action"] == "would_block" for e in _model_events(state)), timeout=5
        )
        assert runtime.poll() is None


def test_sweep_finds_what_was_there_before_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, store, state, token = _setup(tmp_path)
    model = write_gguf(store / "old" / "weights", name=f"DeepSeek {token}", tensor_bytes=2 << 20)
    with running_agent(config, tmp_path / "agent.log"):
        assert wait_for(lambda: _model_events(state), timeout=10)
        time.sleep(1.0)  # a status interval
        assert main(["agent", "status", "--config", str(config)]) == 0
        assert "sensor:    models: running (1 stores watched" in capsys.readouterr().out
    assert _model_events(state)[0]["file"]["path"] == str(model)
    assert main(["agent", "events", "--config", str(config)]) == 0
    assert f"model   reported    deepseek-models  {model}" in capsys.readouterr().out


def test_quarantine_moves_records_and_restores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, store, state, token = _setup(tmp_path)
    with running_agent(config, tmp_path / "agent.log"):
        model = write_gguf(store / "q.gguf", name=f"Quarantine me {token}")
        original = model.read_bytes()
        assert wait_for(
            lambda: any(e["action"] == "quarantined" for e in _model_events(state)), timeout=10
        )
    assert not model.exists()
    event = next(e for e in _model_events(state) if e["action"] == "quarantined")
    folder = tmp_path / "quarantine"
    assert (folder.stat().st_mode & 0o777) == 0o700
    assert main(["agent", "quarantine", "list", "--config", str(config), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in records] == [event["file"]["quarantine"]]
    assert records[0]["path"] == str(model) and records[0]["sha256"] == event["file"]["sha256"]
    assert main(["agent", "quarantine", "restore", records[0]["id"], "--config", str(config)]) == 0
    assert model.read_bytes() == original
    assert main(["agent", "quarantine", "restore", records[0]["id"], "--config", str(config)]) == 2
    assert "no file with id" in capsys.readouterr().err


def test_ollama_runner_loading_a_blob_by_hash_is_killed(tmp_path: Path, procs: Procs) -> None:
    from tests.support.models import ollama_store, write_gguf_bytes

    config, store, state, token = _setup(tmp_path)
    with running_agent(config, tmp_path / "agent.log"):
        data = write_gguf_bytes(tmp_path / "x.gguf", arch="qwen2", name=f"DeepSeek R1 {token}")
        # `ollama pull deepseek-r1` then `ollama cp deepseek-r1 myr1`: two manifests, one blob
        _manifest, blob = ollama_store(store / "ollama", "deepseek-r1", "7b", data)
        copy, _ = ollama_store(store / "ollama", "myr1", "latest", data)
        assert wait_for(
            lambda: {str(blob), str(copy)} <= {e["file"]["path"] for e in _model_events(state)},
            timeout=10,
        )
        # `ollama runner --model …/blobs/sha256-…`: the command line names no model
        runner = _mapper(procs, blob)
        assert wait_for(lambda: runner.poll() is not None, timeout=5)
    killed = [e for e in _model_events(state) if e["action"] == "killed"]
    assert killed[0]["process"]["pid"] == runner.pid
    assert killed[0]["file"]["model"]["digests"] == ["sha256:" + blob.name[7:]]
