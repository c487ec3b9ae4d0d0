"""``proscribe scan``: one-shot audit of real processes, exit 1 on a violation."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proscribe.cli import main
from tests.support.agent_harness import Signer, policy_text, write_config

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


@pytest.fixture
def denied(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    token = secrets.token_hex(3)
    binary = tmp_path / f"dsk{token}-scan"
    shutil.copy2("/bin/sleep", binary)
    proc = subprocess.Popen([str(binary), "30"])
    yield token, proc
    proc.kill()
    proc.wait()


def test_scan_with_an_unverified_policy_file_finds_the_process(
    tmp_path: Path, denied: tuple[str, subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    token, proc = denied
    policy = tmp_path / "draft.toml"
    policy.write_text(policy_text(token))
    assert main(["scan", "--policy", str(policy), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert "unverified" in report["policy"]["source"]
    assert [v["pid"] for v in report["violations"]] == [proc.pid]
    assert proc.poll() is None  # scan never kills


def test_scan_uses_the_configured_verified_policy(
    tmp_path: Path, denied: tuple[str, subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    token, proc = denied
    signer = Signer()
    signer.write(tmp_path / "policy.toml", policy_text(token))
    config = write_config(tmp_path, signer)
    assert main(["scan", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "(verified)" in out and f"pid {proc.pid}" in out
    # a tampered file is refused, with one line and a non-zero exit
    (tmp_path / "policy.toml").write_text(policy_text(token) + "\n# edited\n")
    assert main(["scan", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "signature" in err and "Traceback" not in err


def test_scan_finds_denied_files_and_exits_0_when_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = secrets.token_hex(3)
    weights = tmp_path / f"weights-{token}.gguf"
    weights.write_bytes(b"x")
    policy = tmp_path / "p.toml"
    policy.write_text(
        policy_text(token, extra=f'[[file]]\nid = "weights"\nglobs = ["{tmp_path}/weights-*"]\n')
    )
    assert main(["scan", "--policy", str(policy), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [v.get("path") for v in report["violations"]] == [str(weights)]
    weights.unlink()
    assert main(["scan", "--policy", str(policy)]) == 0


def test_scan_reads_models_by_content_in_each_users_real_environment_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.agent_harness import running_agent, spool_events
    from tests.support.models import hf_cache_repo, write_gguf, write_gguf_bytes

    token = secrets.token_hex(3)
    signer = Signer()
    rule = f'\n[[model]]\nid = "deepseek-models"\nnames = ["DeepSeek*{token}*"]\naction = "block"\n'
    signer.write(tmp_path / "policy.toml", policy_text(token, extra=rule))
    store = tmp_path / "srv"
    config = write_config(
        tmp_path,
        signer,
        process="off",
        extra=f'[models]\nsensor = "off"\ndirs = ["{store}"]\n',
    )
    renamed = write_gguf(store / "r1-distill-qwen-7b" / "model.gguf", name=f"DeepSeek R1 {token}")
    write_gguf(store / f"deepseek-{token}.gguf", name=f"Llama {token}")  # named, not DeepSeek
    # a user's HF_HOME set only in the environment of that user's running process
    hf_home = tmp_path / "hf"
    snapshot = hf_cache_repo(
        hf_home / "hub",
        f"someone/DEEPSEEK-{token}",
        {"m.gguf": write_gguf_bytes(tmp_path / "x", name=f"DeepSeek V3 {token}")},
    )
    (tmp_path / "state").mkdir(mode=0o700)  # the agent's, made by the installer
    holder = subprocess.Popen(
        ["sleep", "30"], env={"HF_HOME": str(hf_home), "PATH": "/usr/bin:/bin"}
    )
    try:
        assert main(["scan", "--config", str(config), "--json", "--report"]) == 1
    finally:
        holder.kill()
        holder.wait()
    report = json.loads(capsys.readouterr().out)
    found = {v["path"] for v in report["violations"] if v["kind"] == "model"}
    assert found == {str(renamed), str(snapshot / "m.gguf")}
    state = tmp_path / "state"
    assert len(list((state / "inbox").glob("*.json"))) == 1
    with running_agent(config, tmp_path / "agent.log"):
        from tests.support.waits import wait_for

        assert wait_for(
            lambda: len([e for e in spool_events(state) if e["kind"] == "model"]) == 2, timeout=10
        )
    sent = [e for e in spool_events(state) if e["kind"] == "model"]
    assert {e["file"]["path"] for e in sent} == found
    assert all("found by proscribe scan" in e["detail"] for e in sent)
    assert all(e["host"]["hostname"] == "test-host" for e in sent)
    assert not list((state / "inbox").glob("*.json"))
