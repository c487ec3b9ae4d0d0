"""Ed25519 signing keys: generate, load and name them.

Private keys live in ``NAME.key`` (PEM, PKCS#8, unencrypted, mode 0600); public keys in
``NAME.pub`` as one line ``ed25519:BASE64`` (the raw 32-byte key), optionally followed by a
space and a comment. That line is also what goes into an agent's ``trusted_keys``.

A key's id is the hex SHA-256 of its raw 32 bytes. It is only ever used as a hint (which
trusted key to try first) and as a label in messages; verification never trusts it.

Every failure here is a :class:`~proscribe.core.errors.KeyFileError` whose message names the
file and the fix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from proscribe.core.errors import KeyFileError

__all__ = [
    "PUBLIC_KEY_PREFIX",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "parse_public_key",
    "public_key_string",
]

PUBLIC_KEY_PREFIX = "ed25519:"
RAW_KEY_BYTES = 32
# Key files are tiny; anything larger is not a key and is not read whole.
_MAX_KEY_FILE_BYTES = 16 * 1024


def public_key_string(pk: Ed25519PublicKey) -> str:
    """The one-line form ``ed25519:BASE64`` of a public key."""
    raw = pk.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def key_id(pk: Ed25519PublicKey) -> str:
    """Hex SHA-256 of the raw public key: a label and a hint, never proof of anything."""
    raw = pk.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def generate_keypair(prefix: Path) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (0600) and ``PREFIX.pub``; never overwrite an existing file."""
    key_path = Path(f"{prefix}.key")
    pub_path = Path(f"{prefix}.pub")
    for path in (key_path, pub_path):
        if path.exists():
            raise KeyFileError(
                f"{path}: already exists; refusing to overwrite a key "
                "(fix: choose another NAME or move the old key away)"
            )
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_line = f"{public_key_string(private.public_key())} {prefix.name}\n"
    # O_EXCL: a race with another keygen (or a symlink planted at the path) fails instead of
    # clobbering a key someone already distributed.
    _write_exclusive(key_path, pem, 0o600)
    try:
        _write_exclusive(pub_path, public_line.encode("ascii"), 0o644)
    except KeyFileError:
        key_path.unlink(missing_ok=True)
        raise
    return key_path, pub_path


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as err:
        raise KeyFileError(
            f"{path}: already exists; refusing to overwrite a key "
            "(fix: choose another NAME or move the old key away)"
        ) from err
    except OSError as err:
        raise KeyFileError(
            f"{path}: cannot create: {err.strerror} (fix: check the directory exists and is "
            "writable)"
        ) from err
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed or (for 0644) not mattered
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(_MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError as err:
        raise KeyFileError(
            f"{path}: {what} not found (fix: check the path, or create one with "
            "'proscribe keygen NAME')"
        ) from err
    except IsADirectoryError as err:
        raise KeyFileError(f"{path}: is a directory, not a {what} (fix: give the file)") from err
    except OSError as err:
        raise KeyFileError(f"{path}: cannot read {what}: {err.strerror}") from err
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path}: too large to be a {what} (fix: give the right file)")
    return data


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key written by :func:`generate_keypair`."""
    path = Path(path)
    data = _read_key_file(path, "private key file")
    if data.lstrip().startswith(PUBLIC_KEY_PREFIX.encode()):
        raise KeyFileError(
            f"{path}: is a public key; signing needs the private key "
            "(fix: pass the .key file that 'proscribe keygen' wrote beside it)"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as err:  # encrypted PEM and no password
        raise KeyFileError(
            f"{path}: is an encrypted private key, which is not supported "
            "(fix: use a key from 'proscribe keygen')"
        ) from err
    except (ValueError, UnsupportedAlgorithm) as err:
        raise KeyFileError(
            f"{path}: is not a PEM private key (fix: pass the .key file from 'proscribe keygen')"
        ) from err
    if not isinstance(key, Ed25519PrivateKey):
        kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "") or "other"
        raise KeyFileError(
            f"{path}: is a {kind} key, not Ed25519 (fix: create one with 'proscribe keygen NAME')"
        )
    _check_private_permissions(path)
    return key


def _check_private_permissions(path: Path) -> None:
    if os.name != "posix":
        return  # NTFS ACLs are the installer's business
    mode = path.stat().st_mode
    if stat.S_IMODE(mode) & 0o077:
        raise KeyFileError(
            f"{path}: private key is readable by group or others "
            f"(mode {stat.S_IMODE(mode):04o}) (fix: chmod 600 {path})"
        )


def parse_public_key(text_or_path: str) -> Ed25519PublicKey:
    """An ``ed25519:BASE64`` string, or the path of a ``.pub`` file holding one."""
    text = str(text_or_path).strip()
    if text.startswith(PUBLIC_KEY_PREFIX):
        token = text.split()[0]  # a pasted .pub line may carry its comment
        return _decode_public(token, token)
    path = Path(text)
    data = _read_key_file(path, "public key file")
    if b"PRIVATE KEY" in data:
        raise KeyFileError(
            f"{path}: is a private key; give the public key (fix: pass the .pub file, "
            "and keep the .key file secret)"
        )
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise KeyFileError(f"{path}: is not a text .pub file (fix: give NAME.pub)") from err
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        return _decode_public(line.split()[0], str(path))
    raise KeyFileError(f"{path}: holds no 'ed25519:…' line (fix: give NAME.pub from keygen)")


def _decode_public(token: str, where: str) -> Ed25519PublicKey:
    if not token.startswith(PUBLIC_KEY_PREFIX):
        raise KeyFileError(
            f"{_short(where)}: public key must start with '{PUBLIC_KEY_PREFIX}' "
            "(fix: copy the line from NAME.pub)"
        )
    body = token[len(PUBLIC_KEY_PREFIX) :]
    try:
        raw = base64.b64decode(body.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as err:
        raise KeyFileError(
            f"{_short(where)}: public key is not valid base64 (fix: copy the line from NAME.pub)"
        ) from err
    if len(raw) != RAW_KEY_BYTES:
        raise KeyFileError(
            f"{_short(where)}: public key is {len(raw)} bytes, an Ed25519 key is "
            f"{RAW_KEY_BYTES} (fix: copy the whole line from NAME.pub)"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def _short(text: str) -> str:
    # Messages are one line; a pasted key string can be long or contain control characters.
    flat = text.encode("unicode_escape").decode("ascii")
    return flat if len(flat) <= 80 else flat[:77] + "..."
