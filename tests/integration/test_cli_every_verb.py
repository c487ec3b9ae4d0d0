"""Every verb of ``proscribe``, found by walking the CLI's own registry (a new verb is covered
without editing this file): bad input is one line and exit 2 (or the verb's documented code),
and a reader that closes stdout early never gets a traceback.

* bad input, in-process: every positional argument, every path option and every required
  option gets (a) a path under a regular file, which can be neither read nor created, and (b)
  a file of garbage bytes (beside a garbage ``.key``, which keygen must not overwrite);
* stdout closed before the verb writes (the deterministic form of ``| head -1``), in real
  processes: ``--help`` of every verb, and a real invocation of every verb that has output —
  each verb must be listed in GOOD or in NOT_RUN with the reason.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from proscribe.cli import EXIT_BROKEN_PIPE, build_parser, main
from tests.support.agent_harness import Signer, policy_text, write_config

REPO = Path(__file__).resolve().parents[2]
NAVY = REPO / "policies" / "us-navy-deepseek-2025.toml"
GARBAGE = b"\x00\xff\xfe not [[toml = \n\x1b[2J" * 8

# Verbs whose documented exit code for bad input is not (only) 2.
DOCUMENTED = {
    ("policy", "lint"): {1, 2},  # 1 = problems found in a file that could be read
}


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
    tuple[tuple[str, ...], argparse.ArgumentParser]
]:  # fmt: skip
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaves(sub, (*path, name))


VERBS = dict(leaves(build_parser()))
IDS = [" ".join(p) for p in VERBS]


def bad_argv(path: tuple[str, ...], parser: argparse.ArgumentParser, bad: Path) -> list[str]:
    argv = list(path)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.nargs == 0:
            continue
        if not action.option_strings:
            argv.append(str(bad))
        elif action.required or action.type is Path or action.dest in ("config", "trust"):
            argv += [action.option_strings[-1], str(bad)]
    return argv


@pytest.fixture
def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(GARBAGE)
    # For a verb that writes NAME.key (keygen), a key already there is the bad input.
    (tmp_path / "garbage.key").write_bytes(GARBAGE)
    return {"unreachable": garbage / "sub" / "input", "garbage": garbage}


@pytest.mark.parametrize("verb", list(VERBS), ids=IDS)
@pytest.mark.parametrize("kind", ["unreachable", "garbage"])
def test_bad_input_is_one_line_and_the_documented_exit_code(
    verb: tuple[str, ...],
    kind: str,
    bad_inputs: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = bad_argv(verb, VERBS[verb], bad_inputs[kind])
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own usage errors
        code = int(stop.code or 0)
    _out, err = capsys.readouterr()
    assert code in DOCUMENTED.get(verb, {2}), (argv, code, err)
    assert "Traceback" not in err
    assert err.strip(), f"{argv}: no message"
    last = err.strip().splitlines()[-1]
    assert last.startswith(("proscribe", "usage:")) or str(bad_inputs[kind]) in last, err


def run_closed(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``proscribe ARGV`` with a stdout pipe whose reader is already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "proscribe.cli", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            cwd=cwd,
            check=False,
        )
    finally:
        os.close(write_end)


def check_quiet(argv: list[str], result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, (argv, result.stderr)
    assert "Exception ignored" not in result.stderr, (argv, result.stderr)
    # argparse writes help itself and ignores a failed write: with unbuffered output
    # (PYTHONUNBUFFERED) nothing is left to fail later, and --help ends 0, still quietly.
    assert result.returncode in (0, EXIT_BROKEN_PIPE), (argv, result.returncode, result.stderr)
    assert result.stderr == "", (argv, result.stderr)


@pytest.mark.slow
def test_help_of_every_verb_into_a_closed_pipe(tmp_path: Path) -> None:
    argvs = [[*verb, "--help"] for verb in VERBS] + [["--help"], ["policy", "--help"]]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda argv: run_closed(argv, tmp_path), argvs))
    for argv, result in zip(argvs, results, strict=True):
        check_quiet(argv, result)


# Verbs with output, run for real (in a fixture's directory: agent config, spool, collector).
GOOD: dict[tuple[str, ...], list[str]] = {
    ("keygen",): ["keys/new-signer"],
    ("policy", "lint"): [str(NAVY)],
    ("policy", "show"): [str(NAVY)],
    ("policy", "export"): [str(NAVY), "--format", "rpz"],
    ("policy", "sign"): ["signed.toml", "--key", "keys/signer.key"],
    ("policy", "verify"): ["policy.toml", "--trust", "keys/signer.pub"],
    ("policy", "test"): [str(NAVY)],
    ("scan",): ["--policy", "policy.toml", "--config", "agent.toml"],
    ("agent", "check"): ["--config", "agent.toml"],
    ("agent", "status"): ["--config", "agent.toml"],
    ("agent", "events"): ["--config", "agent.toml", "--limit", "500"],
    ("agent", "requeue"): ["no-such-id", "--config", "agent.toml"],
    ("agent", "quarantine", "list"): ["--config", "agent.toml"],
    ("agent", "quarantine", "restore"): ["no-such-id", "--config", "agent.toml"],
    ("collector", "migrate"): ["--config", "collector.toml"],
    ("collector", "enroll-secret", "create"): ["--config", "collector.toml"],
    ("collector", "enroll-secret", "list"): ["--config", "collector.toml"],
    ("collector", "enroll-secret", "revoke"): ["no-such-id", "--config", "collector.toml"],
    ("collector", "agent", "list"): ["--config", "collector.toml"],
    ("collector", "agent", "revoke"): ["no-such-agent", "--config", "collector.toml"],
    ("collector", "agent", "bans"): ["--config", "collector.toml"],
    ("collector", "agent", "unban"): ["no-such-machine", "--config", "collector.toml"],
    ("collector", "inventory", "import"): ["inventory.csv", "--config", "collector.toml"],
    ("collector", "inventory", "list"): ["--config", "collector.toml"],
    ("collector", "signer", "add"): [
        "keys/signer.pub",
        "--name",
        "S",
        "--config",
        "collector.toml",
    ],
    ("collector", "signer", "list"): ["--config", "collector.toml"],
    ("collector", "signer", "retire"): ["no-such-key", "--config", "collector.toml"],
    ("collector", "user", "add"): ["officer2", "--role", "viewer", "--config", "collector.toml"],
    ("collector", "user", "list"): ["--config", "collector.toml"],
    ("collector", "user", "disable"): ["nobody", "--config", "collector.toml"],
    ("collector", "user", "reset"): ["nobody", "--config", "collector.toml"],
    ("collector", "purge"): ["--older-than", "400d", "--dry-run", "--config", "collector.toml"],
    ("collector", "recount"): ["--config", "collector.toml"],
    ("collector", "audit", "verify"): ["--config", "collector.toml"],
    ("collector", "report"): ["--since", "30d", "--config", "collector.toml"],
    ("collector", "forward", "status"): ["--config", "collector.toml"],
    ("collector", "forward", "test"): ["nosuch", "--config", "collector.toml"],
    ("collector", "backup"): ["--to", "backup.db", "--config", "collector.toml"],
}
NOT_RUN = {
    ("agent", "run"): "a daemon: runs until stopped (its output goes to the log)",
    ("collector", "serve"): "a server: runs until stopped",
    ("demo",): "runs a collector and an agent for a minute (tests/integration/test_demo.py)",
}


def test_every_verb_is_run_for_real_or_says_why_not() -> None:
    missing = [" ".join(v) for v in VERBS if v not in GOOD and v not in NOT_RUN]
    assert not missing, f"add these verbs to GOOD or NOT_RUN: {missing}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    signer = Signer()
    signer.write(tmp_path / "policy.toml", policy_text("everyverb"))
    (tmp_path / "signed.toml").write_text(policy_text("everyverb2"))
    write_config(tmp_path, signer, process="poll")
    (tmp_path / "keys").mkdir()
    from proscribe.core.policy.keys import generate_keypair

    generate_keypair(tmp_path / "keys" / "signer")
    signer_line = (tmp_path / "keys" / "signer.pub").read_text().split()[0]
    from proscribe.core.policy.envelope import sign_payload
    from proscribe.core.policy.keys import load_private_key

    key = load_private_key(tmp_path / "keys" / "signer.key")
    (tmp_path / "policy.toml.sig").write_bytes(
        sign_payload((tmp_path / "policy.toml").read_bytes(), key).to_bytes()
    )
    del signer_line
    from proscribe.agent.spool import Spool
    from proscribe.core.events import new_event

    (tmp_path / "state").mkdir(exist_ok=True)
    with Spool(tmp_path / "state" / "spool.db") as spool:
        spool.append_many(
            [
                new_event("process", rule="r", action="killed", process={"pid": i, "name": "x"})
                for i in range(300)
            ]
        )
    (tmp_path / "collector.toml").write_text(
        f'[server]\nlisten = "127.0.0.1:1"\n[database]\nurl = "sqlite:///{tmp_path / "c.db"}"\n'
    )
    assert main(["collector", "migrate", "--config", str(tmp_path / "collector.toml")]) == 0
    (tmp_path / "inventory.csv").write_text(
        "hostname,asset_id,owner,group\nws-0001,ASSET-0001,alice@example.com,finance\n"
    )
    return tmp_path


@pytest.mark.slow
def test_every_verb_with_output_into_a_closed_pipe(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    argvs = [[*verb, *args] for verb, args in GOOD.items()]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda argv: run_closed(argv, workdir), argvs))
    for argv, result in zip(argvs, results, strict=True):
        assert "Traceback" not in result.stderr, (argv, result.stderr)
        assert "Exception ignored" not in result.stderr, (argv, result.stderr)
        # Verbs whose outcome is a documented non-zero code (a lookup of something absent,
        # "would violate") say so on stderr before any output; the rest stop at the pipe.
        if result.returncode != EXIT_BROKEN_PIPE:
            assert result.returncode in (1, 2), (argv, result.returncode, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("proscribe: error:"), (argv, lines)
