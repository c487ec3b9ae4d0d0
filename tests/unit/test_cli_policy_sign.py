"""``proscribe keygen`` / ``policy sign`` / ``policy verify`` in-process: every error path is one
line with the right exit code (the real entry point is exercised in tests/integration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proscribe.cli import main
from proscribe.core.policy.envelope import parse_envelope
from proscribe.core.policy.keys import generate_keypair

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


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    for name in ("alice", "bob", "carol"):
        generate_keypair(directory / name)
    return directory


@pytest.fixture
def work(tmp_path: Path, keydir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for path in keydir.iterdir():
        target = tmp_path / path.name
        target.write_bytes(path.read_bytes())
        target.chmod(path.stat().st_mode & 0o777)
    (tmp_path / "policy.toml").write_bytes(POLICY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def pub(work: Path, name: str) -> str:
    return (work / f"{name}.pub").read_text().split()[0]


def test_keygen_prints_the_trusted_keys_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(capsys, "keygen", "dana")
    assert code == 0
    assert f"trusted_keys entry: {pub(tmp_path, 'dana')}" in out
    code, _, err = cli(capsys, "keygen", "dana")
    assert code == 2
    assert "dana.key: already exists" in one_line(err)


def test_sign_twice_then_verify(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "policy", "sign", "policy.toml", "--key", "alice.key")[0] == 0
    code, out, _ = cli(capsys, "policy", "sign", "policy.toml", "--key", "bob.key")
    assert code == 0
    assert "now holds 2 signatures" in out
    env = parse_envelope((work / "policy.toml.sig").read_bytes())
    assert len(env.signatures) == 2
    code, out, _ = cli(
        capsys, "policy", "verify", "policy.toml", "--trust", "alice.pub", "--trust", "bob.pub",
        "--threshold", "2",
    )  # fmt: skip
    assert code == 0
    assert "2 of 2 required" in out
    # only one of the signers is trusted: 1 of 2
    code, out, _ = cli(
        capsys, "policy", "verify", "policy.toml", "--trust", "alice.pub", "--trust",
        pub(work, "carol"), "--threshold", "2",
    )  # fmt: skip
    assert code == 1
    assert "verified false" in out
    assert "1 of 2 required trusted signatures" in out


def test_a_signed_policy_that_has_expired_is_verified_false(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Correctly signed, but an agent refuses it (it expired before it could arrive): an
    # installer relying on verify must not hand it to a host as good.
    path = work / "policy.toml"
    path.write_bytes(
        POLICY.replace(b'title = "CLI test"', b'expires = 2025-02-01T00:00:00Z\ntitle = "x"')
    )
    # Signing it is refused (issue 13) unless asked for explicitly.
    code, out, err = cli(capsys, "policy", "sign", "policy.toml", "--key", "alice.key")
    assert code == 2 and out == ""
    assert "2025-02-01" in one_line(err) and "--allow-expired" in err
    assert not (work / "policy.toml.sig").exists()
    code, _, err = cli(
        capsys, "policy", "sign", "policy.toml", "--key", "alice.key", "--allow-expired"
    )
    assert code == 0 and "signing an expired policy" in err
    code, out, _ = cli(capsys, "policy", "verify", "policy.toml", "--trust", "alice.pub")
    assert code == 1
    assert "verified false" in out and "expired at 2025-02-01" in out
    # Expiring in the future is fine.
    path.write_bytes(
        POLICY.replace(b'title = "CLI test"', b'expires = 2999-01-01T00:00:00Z\ntitle = "x"')
    )
    assert cli(capsys, "policy", "sign", "policy.toml", "--key", "alice.key")[0] == 0
    assert cli(capsys, "policy", "verify", "policy.toml", "--trust", "alice.pub")[0] == 0


def test_edit_after_signing_and_crlf_copy_fail(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "policy", "sign", "policy.toml", "--key", "alice.key")[0] == 0
    path = work / "policy.toml"
    path.write_bytes(POLICY.replace(b"\n", b"\r\n"))
    code, out, _ = cli(capsys, "policy", "verify", "policy.toml", "--trust", "alice.pub")
    assert (code, "0 of 1" in out) == (1, True)
    path.write_bytes(POLICY.replace(b"serial = 1", b"serial = 2"))
    assert cli(capsys, "policy", "verify", "policy.toml", "--trust", "alice.pub")[0] == 1


def test_bad_keys_are_exit_2_one_line(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "policy", "verify", "policy.toml", "--trust", "alice.key")
    assert code == 2
    assert "is a private key" in one_line(err)
    code, _, err = cli(capsys, "policy", "verify", "policy.toml", "--trust", "ed25519:AAAA")
    assert code == 2
    assert "3 bytes" in one_line(err)
    (work / "alice.key").chmod(0o644)
    code, _, err = cli(capsys, "policy", "sign", "policy.toml", "--key", "alice.key")
    assert code == 2
    assert "chmod 600" in one_line(err)
    assert not (work / "policy.toml.sig").exists()


def test_missing_and_malformed_files_exit_2(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "policy", "verify", "policy.toml", "--trust", "alice.pub")
    assert code == 2
    assert "policy.toml.sig: not found" in one_line(err)
    (work / "policy.toml.sig").write_text("{not json")
    code, _, err = cli(capsys, "policy", "verify", "policy.toml", "--trust", "alice.pub")
    assert code == 2
    assert "not a valid signature file" in one_line(err)
    # a malformed existing .sig is not silently replaced by sign either
    code, _, err = cli(capsys, "policy", "sign", "policy.toml", "--key", "alice.key")
    assert code == 2
    assert (work / "policy.toml.sig").read_text() == "{not json"
    code, _, err = cli(capsys, "policy", "sign", "missing.toml", "--key", "alice.key")
    assert code == 2
    assert "missing.toml: not found" in one_line(err)
    (work / "big.toml").write_bytes(b"#" * (1024 * 1024 + 1))
    code, _, err = cli(capsys, "policy", "sign", "big.toml", "--key", "alice.key")
    assert code == 2
    assert "stopped at the cap" in one_line(err)
    code, _, err = cli(
        capsys, "policy", "verify", "policy.toml", "--trust", "a.pub", "--threshold", "0"
    )
    assert code == 2
    assert "--threshold must be at least 1" in one_line(err)
    code, _, err = cli(capsys, "policy", "verify", "policy.toml")
    assert code == 2
    assert "--trust" in err


def test_sign_lints_first(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "bad.toml").write_text("[meta]\nschema = 1\nbogus = 1\n")
    code, _, err = cli(capsys, "policy", "sign", "bad.toml", "--key", "alice.key")
    assert code == 2
    assert one_line(err).startswith("proscribe: error: bad.toml")
    assert not (work / "bad.toml.sig").exists()


def test_verify_with_explicit_sig_path(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "policy", "sign", "policy.toml", "--key", "alice.key")[0] == 0
    (work / "policy.toml.sig").rename(work / "elsewhere.sig")
    code, _, _ = cli(
        capsys, "policy", "verify", "policy.toml", "--trust", "alice.pub", "--sig", "elsewhere.sig"
    )
    assert code == 0


def test_trust_file_sign_and_verify(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "trust.toml").write_text(
        f'[trust]\nversion = 2\nthreshold = 1\nkeys = ["{pub(work, "bob")}"]\n'
    )
    code, _, err = cli(
        capsys, "policy", "sign", "trust.toml", "--key", "alice.key", "--type", "trust"
    )
    assert code == 0, err
    # signed by the old key only: the new trust's own threshold is missing
    code, out, _ = cli(
        capsys, "policy", "verify", "trust.toml", "--trust", "alice.pub", "--type", "trust"
    )
    assert code == 1
    assert "not signed by its own keys" in out
    assert (
        cli(capsys, "policy", "sign", "trust.toml", "--key", "bob.key", "--type", "trust")[0] == 0
    )
    code, out, _ = cli(
        capsys, "policy", "verify", "trust.toml", "--trust", "alice.pub", "--type", "trust"
    )
    assert code == 0
    assert "trust version 2" in out
    # the trust envelope presented as a policy signature: payload type refused
    code, out, _ = cli(capsys, "policy", "verify", "trust.toml", "--trust", "alice.pub")
    assert code == 1
    assert "payload type" in out
    # a trust file is not a policy: signing it as one is refused before anything is written
    before = (work / "trust.toml.sig").read_bytes()
    code, _, err = cli(capsys, "policy", "sign", "trust.toml", "--key", "carol.key")
    assert code == 2
    assert "trust.toml" in one_line(err)
    assert (work / "trust.toml.sig").read_bytes() == before
    # a policy .sig cannot take a trust signature
    assert cli(capsys, "policy", "sign", "policy.toml", "--key", "alice.key")[0] == 0
    (work / "policy.toml.sig").rename(work / "trust.toml.sig")
    code, _, err = cli(
        capsys, "policy", "sign", "trust.toml", "--key", "bob.key", "--type", "trust"
    )
    assert code == 2
    assert "existing signatures are for" in one_line(err)


def test_trust_sign_refuses_invalid_trust_file(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "trust.toml").write_text("[trust]\nversion = 2\nthreshold = 3\nkeys = []\n")
    code, _, err = cli(
        capsys, "policy", "sign", "trust.toml", "--key", "alice.key", "--type", "trust"
    )
    assert code == 2
    assert "threshold 3" in one_line(err)


def test_resigning_is_not_double_counted(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(3):
        assert cli(capsys, "policy", "sign", "policy.toml", "--key", "alice.key")[0] == 0
    doc = json.loads((work / "policy.toml.sig").read_text())
    assert len(doc["signatures"]) == 1
