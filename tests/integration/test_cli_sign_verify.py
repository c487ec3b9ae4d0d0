"""The real ``proscribe`` entry point: keygen, multi-signer sign, verify with thresholds.

The other error paths of the same verbs are tested in-process in
``tests/unit/test_cli_policy_sign.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

pytestmark = pytest.mark.slow  # a dozen runs of the real entry point (~0.3 s each when idle)

POLICY = b"""[meta]
schema = 1
id = "cli-test"
serial = 1
issued = 2025-01-24T00:00:00Z
title = "CLI test"

[[domain]]
id = "deepseek-web"
names = ["deepseek.com"]
action = "block"
"""


def proscribe_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("proscribe")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("proscribe")
    if found:
        return [found]
    return [sys.executable, "-m", "proscribe.cli"]


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*proscribe_cmd(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keys made once by the real keygen; each test gets copies (process starts are slow)."""
    directory = tmp_path_factory.mktemp("keys")
    for name in ("alice", "bob", "carol"):
        result = run(directory, "keygen", name)
        assert result.returncode == 0, result.stderr
        assert "ed25519:" in result.stdout
        assert (directory / f"{name}.key").stat().st_mode & 0o777 == 0o600
    return directory


@pytest.fixture
def workdir(tmp_path: Path, keydir: Path) -> Path:
    for path in keydir.iterdir():
        shutil.copy2(path, tmp_path / path.name)
    (tmp_path / "policy.toml").write_bytes(POLICY)
    return tmp_path


def verify(cwd: Path, threshold: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(
        cwd,
        "policy",
        "verify",
        "policy.toml",
        "--trust",
        "alice.pub",
        "--trust",
        "bob.pub",
        "--trust",
        (cwd / "carol.pub").read_text().split()[0],  # the inline "ed25519:…" form
        "--threshold",
        str(threshold),
        *extra,
    )


def test_two_signers_meet_threshold_two_not_three(workdir: Path) -> None:
    first = run(workdir, "policy", "sign", "policy.toml", "--key", "alice.key")
    assert first.returncode == 0, first.stderr
    assert "now holds 1 signature" in first.stdout
    second = run(workdir, "policy", "sign", "policy.toml", "--key", "bob.key")
    assert second.returncode == 0, second.stderr
    assert "now holds 2 signatures" in second.stdout

    ok = verify(workdir, 2)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "2 of 2 required trusted signatures" in ok.stdout

    short = verify(workdir, 3)
    assert short.returncode == 1
    assert "verified false" in short.stdout
    assert "2 of 3 required trusted signatures" in short.stdout

    # re-signing by the same person does not add a vote
    again = run(workdir, "policy", "sign", "policy.toml", "--key", "bob.key")
    assert "now holds 2 signatures" in again.stdout
    assert verify(workdir, 3).returncode == 1


def test_wrong_key_types_exit_2_with_one_line(workdir: Path) -> None:
    line = assert_one_line_error(
        run(workdir, "policy", "sign", "policy.toml", "--key", "alice.pub")
    )
    assert "is a public key" in line
    ec_key = workdir / "ec.key"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ec_key.chmod(0o600)
    line = assert_one_line_error(run(workdir, "policy", "sign", "policy.toml", "--key", "ec.key"))
    assert "not Ed25519" in line
