"""``proscribe agent …`` in-process: bad input is one line and exit 2; status/events work
without a running daemon."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proscribe.cli import main
from proscribe.core.policy.keys import public_key_string
from tests.support.agent_harness import write_secret

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


def test_status_text_without_a_daemon_says_why_the_policy_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.agent_harness import Signer, policy_text

    path = config(tmp_path)  # trusts KEY only
    Signer().write(tmp_path / "policy.toml", policy_text("offline"))  # signed by a stranger
    assert main(["agent", "status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "policy:    none in force" in out
    line = next(ln for ln in out.splitlines() if "last rejected" in ln)
    assert "from file" in line and "signature check failed" in line, out
    (tmp_path / "policy.toml").unlink()
    assert main(["agent", "status", "--config", str(path)]) == 0
    assert "policy.toml: not found" in capsys.readouterr().out


def check(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str) -> tuple[int, str]:
    code = main(["agent", "check", "--config", str(config(tmp_path, extra))])
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).strip()


def test_check_accepts_what_run_would_start_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ca.pem").write_text("pem")
    write_secret(tmp_path / "secret", "s3cret\n")
    extra = (
        f'[collector]\nurl = "https://c.example:8443"\nca_file = "{tmp_path / "ca.pem"}"\n'
        f'enroll_secret_file = "{tmp_path / "secret"}"\n'
    )
    code, text = check(tmp_path, capsys, extra)
    assert code == 0 and text.startswith("ok: ") and "1 trusted key" in text, text
    assert not (tmp_path / "state").exists()  # nothing created


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[collector]\nurl = "http://collector.example:8443"\n', "plain http is allowed only"),
        ('[collector]\nurl = "http://10.0.0.5:8443"\n', "plain http is allowed only"),
        ('[collector]\nurl = "https://c.example"\n', "collector.ca_file: required"),
        ('[collector]\nurl = "http://127.0.0.1:1"\nenroll_secret_file = "/nonexistent/s"\n',
         "enroll_secret_file"),
        ("[sensors]\nprocess = 'ebpf'\n", "sensors.process"),
    ],
)  # fmt: skip
def test_check_refuses_with_the_agents_own_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, expected: str
) -> None:
    code, text = check(tmp_path, capsys, extra)
    assert code == 2 and len(text.splitlines()) == 1, text
    assert expected in text and "Traceback" not in text


def test_check_refuses_a_secret_others_can_read_as_run_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret"
    write_secret(secret, "s3cret\n")
    secret.chmod(0o644)
    extra = f'[collector]\nurl = "http://127.0.0.1:1"\nenroll_secret_file = "{secret}"\n'
    code, text = check(tmp_path, capsys, extra)
    assert code == 2 and len(text.splitlines()) == 1, text
    assert "readable by group or others (mode 0644)" in text and f"chmod 600 {secret}" in text
    secret.chmod(0o600)
    assert check(tmp_path, capsys, extra)[0] == 0


def test_check_refuses_an_empty_trust_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nstate_dir = "{tmp_path}"\n[policy]\ntrusted_keys = []\n')
    assert main(["agent", "check", "--config", str(path)]) == 2
    assert "policy.trusted_keys is empty" in capsys.readouterr().err


def test_status_counts_dead_letters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from proscribe.agent.spool import Spool
    from proscribe.core.events import new_event

    path = config(tmp_path)
    (tmp_path / "state").mkdir()
    with Spool(tmp_path / "state" / "spool.db") as spool:
        events = [new_event("process", rule="r", action="killed", process={"pid": i})
                  for i in range(3)]  # fmt: skip
        spool.append_many(events)
        spool.pending()
        spool.dead_letter([events[0]["id"]], "poison: HTTP 500: boom when sent alone")
    assert main(["agent", "status", "--config", str(path)]) == 0
    assert "2 pending" in (out := capsys.readouterr().out) and "dead-lettered 1" in out
    assert main(["agent", "events", "--config", str(path)]) == 0
    assert "(poison: HTTP 500: boom when sent alone)" in capsys.readouterr().out


def test_status_names_the_trusted_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each trusted key by key id and name: the .pub comment (keygen writes the key's name)
    here; the collector's signer registry wins once the reporter has heard it (issue 13)."""
    from proscribe.core.policy.keys import generate_keypair, key_id, parse_public_key

    _key, pub = generate_keypair(tmp_path / "vera-lind")
    bare = public_key_string(Ed25519PrivateKey.generate().public_key())
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[policy]\nfile = "{tmp_path / "policy.toml"}"\ntrusted_keys = ["{pub}", "{bare}"]\n'
    )
    assert main(["agent", "status", "--json", "--config", str(path)]) == 0
    keys = json.loads(capsys.readouterr().out)["trusted_keys"]
    assert keys[0] == {
        "keyid": key_id(parse_public_key(str(pub))),
        "name": "vera-lind",
        "named_by": ".pub comment",
    }
    assert keys[1]["name"] is None
    assert main(["agent", "status", "--config", str(path)]) == 0
    text = capsys.readouterr().out
    assert "trust:     vera-lind — key " in text and "(unnamed) — key " in text


def test_status_text_says_when_the_loader_check_fell_back_to_sys_enter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The kernel guard's loader check on its fallback hook costs every system call: the text
    status says so and why; on the mmap_lock tracepoint it says only ``bpf``."""
    from proscribe.cli.agent import _print_status

    kernel = {"state": "running", "detail": "", "mmap_hook": "mmap_lock"}
    _print_status({"running": True, "pid": 1, "guard": {"active": "bpf", "kernel": kernel}})
    assert "\nguard:     bpf\n" in capsys.readouterr().out
    kernel.update(mmap_hook="sys_enter", mmap_hook_detail="mmap_lock refused: ENOENT")
    _print_status({"running": True, "pid": 1, "guard": {"active": "bpf", "kernel": kernel}})
    assert (
        "\nguard:     bpf (loader check on sys_enter, every system call pays: "
        "mmap_lock refused: ENOENT)\n"
    ) in capsys.readouterr().out
