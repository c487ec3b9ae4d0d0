"""Who may sign policy: the trusted keys, the threshold, and their signed rotation.

The root of trust (version 1) is ``[policy] trusted_keys`` and ``threshold`` from the agent's
config, placed there by the installer. To rotate keys without reinstalling, an organization
publishes signed trust files in the style of TUF's root metadata::

    [trust]
    version   = 2                       # exactly the previous version + 1
    threshold = 2
    keys      = ["ed25519:…", "ed25519:…", "ed25519:…"]
    expires   = 2027-01-01T00:00:00Z    # optional

``trust.toml.sig`` uses the same envelope as policies with payload type
:data:`~proscribe.core.policy.envelope.TRUST_PAYLOAD_TYPE`. Version N+1 is accepted only when
it carries valid signatures from the threshold of version N's keys *and* the threshold of its
own keys: the old signers authorize the change, the new signers prove they hold their keys.
Versions cannot be skipped, so a chain is walked one link at a time from the root.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from proscribe.core.errors import KeyFileError, ProscribeError, TrustError
from proscribe.core.fs import atomic_write
from proscribe.core.policy.envelope import (
    TRUST_PAYLOAD_TYPE,
    distinct_keys,
    parse_envelope,
    verify_envelope,
)
from proscribe.core.policy.keys import key_id, parse_public_key, public_key_string

__all__ = [
    "MAX_TRUST_BYTES",
    "TrustConfig",
    "TrustStore",
    "load_trust_chain",
    "parse_trust",
    "rotate",
]

log = logging.getLogger(__name__)

MAX_TRUST_BYTES = 64 * 1024
_MAX_KEYS = 64


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """The keys allowed to sign policy and how many of them must agree."""

    keys: tuple[Ed25519PublicKey, ...]
    threshold: int
    version: int = 1
    expires: datetime | None = None

    def __post_init__(self) -> None:
        distinct = distinct_keys(self.keys)
        if len(distinct) != len(self.keys):
            raise TrustError("trusted keys must be distinct (fix: remove the repeated key)")
        if not 1 <= self.threshold <= len(self.keys):
            raise TrustError(
                f"threshold {self.threshold} must be between 1 and the number of trusted keys "
                f"({len(self.keys)}) (fix: lower the threshold or add keys)"
            )

    @classmethod
    def from_strings(
        cls, keys: Sequence[str], threshold: int, source: str = "trusted_keys"
    ) -> TrustConfig:
        """Build from ``ed25519:…`` strings (or .pub paths), e.g. the agent config's root."""
        parsed: list[Ed25519PublicKey] = []
        for i, text in enumerate(keys):
            try:
                parsed.append(parse_public_key(text))
            except KeyFileError as err:
                raise TrustError(f"{source}[{i}]: {err}") from err
        return cls(keys=tuple(parsed), threshold=threshold)

    def key_ids(self) -> tuple[str, ...]:
        return tuple(key_id(k) for k in self.keys)

    def key_strings(self) -> tuple[str, ...]:
        return tuple(public_key_string(k) for k in self.keys)


def parse_trust(data: bytes, source: str = "<trust>") -> TrustConfig:
    """Parse a trust file's bytes (call only on bytes whose signatures were checked)."""
    if len(data) > MAX_TRUST_BYTES:
        raise TrustError(f"{source}: trust file is larger than {MAX_TRUST_BYTES // 1024} KiB")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise TrustError(f"{source}: not valid TOML: {err}") from err
    extra = sorted(set(doc) - {"trust"})
    if extra:
        raise TrustError(f"{source}: unknown table or key {extra[0]!r} (fix: only [trust])")
    table = doc.get("trust")
    if not isinstance(table, dict):
        raise TrustError(f"{source}: missing [trust] table")
    extra = sorted(set(table) - {"version", "threshold", "keys", "expires"})
    if extra:
        raise TrustError(f"{source}: [trust] has unknown key {extra[0]!r}")
    version = table.get("version")
    threshold = table.get("threshold")
    keys = table.get("keys")
    expires = table.get("expires")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise TrustError(f"{source}: [trust] version must be an integer >= 1")
    if not isinstance(threshold, int) or isinstance(threshold, bool):
        raise TrustError(f"{source}: [trust] threshold must be an integer")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise TrustError(f"{source}: [trust] keys must be a list of 'ed25519:…' strings")
    if len(keys) > _MAX_KEYS:
        raise TrustError(f"{source}: [trust] lists more than {_MAX_KEYS} keys")
    if expires is not None and (not isinstance(expires, datetime) or expires.tzinfo is None):
        raise TrustError(f"{source}: [trust] expires must be a date-time with a zone, e.g. …Z")
    parsed: list[Ed25519PublicKey] = []
    for i, text in enumerate(keys):
        if not text.startswith("ed25519:"):  # never treat a string in a signed file as a path
            raise TrustError(f"{source}: [trust] keys[{i}] must start with 'ed25519:'")
        try:
            parsed.append(parse_public_key(text))
        except KeyFileError as err:
            raise TrustError(f"{source}: [trust] keys[{i}]: {err}") from err
    try:
        return TrustConfig(
            keys=tuple(parsed), threshold=threshold, version=version, expires=expires
        )
    except TrustError as err:
        raise TrustError(f"{source}: {err}") from err


def rotate(current: TrustConfig, data: bytes, sig: bytes, source: str = "<trust>") -> TrustConfig:
    """Accept the next trust version, or raise :class:`TrustError` saying why not."""
    if len(data) > MAX_TRUST_BYTES:
        raise TrustError(f"{source}: trust file is larger than {MAX_TRUST_BYTES // 1024} KiB")
    try:
        envelope = parse_envelope(sig, f"{source}.sig")
    except ProscribeError as err:
        raise TrustError(str(err)) from err
    # Verify against the keys already trusted before parsing anything from the new file.
    by_old = verify_envelope(data, envelope, current.keys, current.threshold, TRUST_PAYLOAD_TYPE)
    if not by_old.ok:
        raise TrustError(
            f"{source}: not authorized by trust version {current.version}: {by_old.reason}"
        )
    new = parse_trust(data, source)
    if new.version != current.version + 1:
        raise TrustError(
            f"{source}: version {new.version} cannot follow version {current.version} "
            f"(fix: apply version {current.version + 1} first; versions cannot be skipped)"
        )
    by_new = verify_envelope(data, envelope, new.keys, new.threshold, TRUST_PAYLOAD_TYPE)
    if not by_new.ok:
        raise TrustError(
            f"{source}: version {new.version} is not signed by its own keys: {by_new.reason}"
        )
    return new


def load_trust_chain(
    root: TrustConfig, files: Sequence[Path], now: datetime | None = None
) -> TrustConfig:
    """Walk ``root`` through trust files (each with ``FILE.sig`` beside it), in order.

    The result is the newest version. If ``now`` is given and that version has expired, the
    chain is refused: expiry is how an organization retires a compromised trust file.
    """
    trust = root
    for path in files:
        sig_path = Path(f"{path}.sig")
        data = _read(path)
        sig = _read(sig_path)
        trust = rotate(trust, data, sig, str(path))
    if now is not None and trust.expires is not None and trust.expires <= now:
        raise TrustError(
            f"trust version {trust.version} expired at {trust.expires.isoformat()} "
            "(fix: publish and sign the next trust version)"
        )
    return trust


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_TRUST_BYTES + 1)
    except FileNotFoundError as err:
        raise TrustError(f"{path}: not found (fix: check the path)") from err
    except OSError as err:
        raise TrustError(f"{path}: cannot read: {err.strerror}") from err
    if len(data) > MAX_TRUST_BYTES:
        raise TrustError(f"{path}: larger than {MAX_TRUST_BYTES // 1024} KiB")
    return data


_VERSION_FILE = re.compile(r"(\d{1,9})\.toml")


class TrustStore:
    """Trust versions accepted after the root, kept as ``DIR/<version>.toml`` (+ ``.sig``).

    On start the kept files are walked from the config's root, one version at a time, exactly as
    when they first arrived; a kept file that no longer verifies (e.g. the root in the config was
    replaced) ends the walk there. New versions come in through :meth:`offer`.
    """

    def __init__(self, directory: Path, root: TrustConfig) -> None:
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._root = root
        self._current = root
        versions = sorted(
            int(m.group(1))
            for p in self._dir.iterdir()
            if (m := _VERSION_FILE.fullmatch(p.name)) is not None
        )
        for version in versions:
            if version <= self._current.version:
                continue
            path = self._dir / f"{version}.toml"
            try:
                self._current = rotate(
                    self._current, _read(path), _read(Path(f"{path}.sig")), str(path)
                )
            except TrustError as err:
                log.warning(
                    "kept trust file not applied, staying at version %s: %s",
                    self._current.version,
                    err,
                )
                break

    def current(self) -> TrustConfig:
        return self._current

    def expired(self, now: datetime) -> bool:
        return self._current.expires is not None and self._current.expires <= now

    def offer(self, data: bytes, sig: bytes, source: str = "<trust>") -> TrustConfig:
        """Accept the next version (raise :class:`TrustError` if it is not) and keep it."""
        new = rotate(self._current, data, sig, source)
        path = self._dir / f"{new.version}.toml"
        atomic_write(path, data, 0o644)
        atomic_write(Path(f"{path}.sig"), sig, 0o644)
        log.info(
            "trust rotated to version %s (%s keys, threshold %s)",
            new.version,
            len(new.keys),
            new.threshold,
        )
        self._current = new
        return new
