"""Key generation and loading: the files keygen writes and every wrong file a user may pass."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proscribe.core.errors import KeyFileError
from proscribe.core.policy.keys import (
    generate_keypair,
    key_id,
    load_private_key,
    parse_public_key,
    public_key_string,
)


def test_generate_writes_private_0600_and_one_line_public(tmp_path: Path) -> None:
    key_path, pub_path = generate_keypair(tmp_path / "alice")
    assert key_path == tmp_path / "alice.key"
    assert pub_path == tmp_path / "alice.pub"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    lines = pub_path.read_text().splitlines()
    assert len(lines) == 1
    token = lines[0].split()[0]
    assert token.startswith("ed25519:")
    assert len(base64.b64decode(token.removeprefix("ed25519:"))) == 32

    private = load_private_key(key_path)
    public = parse_public_key(str(pub_path))
    assert public_key_string(public) == public_key_string(private.public_key())
    assert parse_public_key(token).public_bytes_raw() == public.public_bytes_raw()
    assert key_id(public) == key_id(private.public_key())
    assert len(key_id(public)) == 64


def test_generate_never_overwrites(tmp_path: Path) -> None:
    key_path, _ = generate_keypair(tmp_path / "bob")
    before = key_path.read_bytes()
    with pytest.raises(KeyFileError, match=r"bob\.key: already exists"):
        generate_keypair(tmp_path / "bob")
    assert key_path.read_bytes() == before


def test_generate_refuses_when_only_pub_exists(tmp_path: Path) -> None:
    (tmp_path / "carol.pub").write_text("something else\n")
    with pytest.raises(KeyFileError, match=r"carol\.pub: already exists"):
        generate_keypair(tmp_path / "carol")
    assert not (tmp_path / "carol.key").exists()


def test_generate_in_missing_directory_is_clear(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot create"):
        generate_keypair(tmp_path / "nope" / "dave")


def test_two_keys_differ(tmp_path: Path) -> None:
    _, a = generate_keypair(tmp_path / "a")
    _, b = generate_keypair(tmp_path / "b")
    assert a.read_text().split()[0] != b.read_text().split()[0]


def test_missing_private_key(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"missing\.key: private key file not found"):
        load_private_key(tmp_path / "missing.key")


def test_public_key_given_instead_of_private(tmp_path: Path) -> None:
    _, pub = generate_keypair(tmp_path / "k")
    with pytest.raises(KeyFileError, match="is a public key"):
        load_private_key(pub)


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_wrong_algorithm_private_key(tmp_path: Path, kind: str) -> None:
    other = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    path = tmp_path / f"{kind}.key"
    path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not Ed25519") as info:
        load_private_key(path)
    assert "\n" not in str(info.value)
    assert kind.upper() in str(info.value)


def test_garbage_private_key(tmp_path: Path) -> None:
    path = tmp_path / "junk.key"
    path.write_bytes(b"\x00\x01 not a key at all")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_private_key(path)


def test_encrypted_private_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = tmp_path / "enc.key"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="encrypted"):
        load_private_key(path)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_group_or_world_readable_key_refused(tmp_path: Path, mode: int) -> None:
    key_path, _ = generate_keypair(tmp_path / "loose")
    key_path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_private_key(key_path)
    key_path.chmod(0o600)
    load_private_key(key_path)


def test_directory_given_as_key(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="is a directory"):
        load_private_key(tmp_path)


def test_public_key_file_with_comment_and_blank_lines(tmp_path: Path) -> None:
    _, pub = generate_keypair(tmp_path / "x")
    token = pub.read_text().split()[0]
    other = tmp_path / "y.pub"
    other.write_text(f"# release signing key\n\n{token} release team 2025\n")
    assert public_key_string(parse_public_key(str(other))) == token


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("ed25519:!!!notbase64", "not valid base64"),
        ("ed25519:" + base64.b64encode(b"\x01" * 31).decode(), "31 bytes"),
        ("ed25519:" + base64.b64encode(b"\x01" * 33).decode(), "33 bytes"),
        ("ed25519:", "0 bytes"),
        ("ed25519:AAAA AAAA", "is 3 bytes"),
    ],
)
def test_bad_public_key_strings(text: str, match: str) -> None:
    with pytest.raises(KeyFileError, match=match):
        parse_public_key(text)


def test_pasted_public_line_with_comment(tmp_path: Path) -> None:
    _, pub = generate_keypair(tmp_path / "z")
    line = pub.read_text().strip()
    assert " " in line  # keygen writes a comment after the key
    assert public_key_string(parse_public_key(line)) == line.split()[0]


def test_public_key_file_with_wrong_prefix(tmp_path: Path) -> None:
    path = tmp_path / "rsa.pub"
    path.write_text("ssh-rsa AAAAB3NzaC1yc2E user@host\n")
    with pytest.raises(KeyFileError, match="must start with 'ed25519:'"):
        parse_public_key(str(path))


def test_private_key_given_as_public(tmp_path: Path) -> None:
    key_path, _ = generate_keypair(tmp_path / "p")
    with pytest.raises(KeyFileError, match="is a private key"):
        parse_public_key(str(key_path))


def test_missing_and_empty_public_key_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not found"):
        parse_public_key(str(tmp_path / "none.pub"))
    empty = tmp_path / "empty.pub"
    empty.write_text("# only a comment\n")
    with pytest.raises(KeyFileError, match="holds no"):
        parse_public_key(str(empty))
