"""The agent's identity towards the collector: its Ed25519 key and the agent_id it was given.

Files in ``state_dir``:

- ``agent.key`` — PEM PKCS#8 Ed25519 private key, mode 0600, generated on first use. The
  collector only ever sees the public half, so a dump of its database holds no credential.
- ``agent_id`` — the id the collector returned from ``POST /api/v1/enroll``.

- ``machine_id`` — a random machine identity, made only when the system has none
  (``/etc/machine-id``); see :func:`machine_identity`.

Enrollment sends the enroll secret (read from its file each time, so an operator can rotate it
without restarting the agent; refused when group or others can read it), host facts (with the
machine identity) and the public key. When the collector answers
``unknown_agent`` the id is forgotten and the agent enrolls again with the same key; on
``revoked_agent`` the key is replaced too (a revoked key may be compromised; the collector
refuses it for ever, and refuses the machine until an admin lifts its ban). The spool is never
touched by any of this.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import stat
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proscribe.agent.evidence import os_name
from proscribe.core.errors import ConfigError
from proscribe.core.fs import atomic_write
from proscribe.core.policy.keys import load_private_key, public_key_string
from proscribe.core.wire.auth import sign_request

log = logging.getLogger(__name__)

KEY_FILE = "agent.key"
AGENT_ID_FILE = "agent_id"
MACHINE_ID_FILE = "machine_id"
MAX_SECRET_BYTES = 4096
SYSTEM_MACHINE_IDS = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
_MACHINE_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def machine_identity(state_dir: Path, system: tuple[Path, ...] = SYSTEM_MACHINE_IDS) -> str:
    """This machine's identity, sent at enrollment and in heartbeats (what a ban holds on to
    when a revoked agent makes a new key): ``/etc/machine-id`` (systemd), else D-Bus's copy,
    else a random id made once and kept in ``state_dir/machine_id``."""
    for path in system:
        try:
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if _MACHINE_ID.match(text):
            return text
    own = state_dir / MACHINE_ID_FILE
    try:
        text = own.read_text(encoding="ascii").strip()
        if _MACHINE_ID.match(text):
            return text
    except (OSError, UnicodeDecodeError):
        pass
    text = secrets.token_hex(16)
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(own, text.encode("ascii") + b"\n", 0o644)
    except OSError as err:
        log.warning("cannot keep a machine id in %s (%s); using one for this run", own, err)
    return text


def check_secret_file_private(path: Path) -> None:
    """ConfigError (one line: the file and the fix) when the enroll secret file can be read by
    anyone but its owner: a secret any local user can read lets any of them enroll a rogue
    agent with the fleet's secret."""
    if os.name != "posix":
        return
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # missing or unreadable: the read says so, with its own fix
    if mode & 0o077:
        raise ConfigError(
            f"collector.enroll_secret_file: {path} is readable by group or others "
            f"(mode {stat.S_IMODE(mode):04o}) (fix: chmod 600 {path})"
        )


def _agent_version() -> str:
    try:
        return metadata.version("proscribe")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def default_host_facts() -> dict[str, str]:
    return {
        "hostname": socket.gethostname(),
        "os": os_name(),
        "agent_version": _agent_version(),
    }


class IdentityStore:
    """Key, agent_id and enroll secret of this agent, persisted under ``state_dir``."""

    def __init__(
        self,
        state_dir: Path,
        enroll_secret_file: Path | None,
        host_facts: dict[str, str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.enroll_secret_file = enroll_secret_file
        self.host_facts = host_facts or default_host_facts()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"agent.state_dir: cannot create {self.state_dir} ({err}) "
                "(fix: create it, owned by the agent's user)"
            ) from err
        self._key = self._load_or_create_key()
        self._agent_id = self._read_agent_id()
        self.clock_offset = 0.0  # seconds to add to time.time() when signing

    # -- key and id -------------------------------------------------------------------------

    @property
    def key_path(self) -> Path:
        return self.state_dir / KEY_FILE

    def _load_or_create_key(self) -> Ed25519PrivateKey:
        if self.key_path.exists():
            return load_private_key(self.key_path)
        return self._new_key()

    def _new_key(self) -> Ed25519PrivateKey:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write(self.key_path, pem, 0o600)
        log.info("generated the agent key %s", self.key_path)
        return key

    def _read_agent_id(self) -> str | None:
        path = self.state_dir / AGENT_ID_FILE
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as err:
            log.warning("cannot read %s (%s); will enroll again", path, err)
            return None
        return text or None

    @property
    def agent_id(self) -> str | None:
        return self._agent_id

    @property
    def enrolled(self) -> bool:
        return self._agent_id is not None

    @property
    def public_key(self) -> str:
        return public_key_string(self._key.public_key())

    def set_agent_id(self, agent_id: str) -> None:
        atomic_write(self.state_dir / AGENT_ID_FILE, agent_id.encode("utf-8") + b"\n", 0o644)
        self._agent_id = agent_id

    def forget(self, *, new_key: bool) -> None:
        """Drop the agent_id (the collector does not know or no longer trusts it)."""
        (self.state_dir / AGENT_ID_FILE).unlink(missing_ok=True)
        self._agent_id = None
        if new_key:
            self._key = self._new_key()

    # -- requests ---------------------------------------------------------------------------

    def enroll_body(self) -> dict[str, Any]:
        """The JSON for ``POST /api/v1/enroll``; ConfigError when the secret is unusable."""
        if self.enroll_secret_file is None:
            raise ConfigError(
                "collector.enroll_secret_file: not set, so this agent cannot enroll "
                "(fix: set it to the file holding an enroll secret from the collector)"
            )
        check_secret_file_private(self.enroll_secret_file)
        try:
            raw = self.enroll_secret_file.read_bytes()[: MAX_SECRET_BYTES + 1]
        except OSError as err:
            raise ConfigError(
                f"collector.enroll_secret_file: cannot read {self.enroll_secret_file} ({err}) "
                "(fix: create it with the secret from `proscribe collector enroll-secret create`)"
            ) from err
        secret = raw.decode("utf-8", "replace").strip()
        if not secret or len(raw) > MAX_SECRET_BYTES:
            raise ConfigError(
                f"collector.enroll_secret_file: {self.enroll_secret_file} is empty or too long "
                "(fix: put the one-line secret from `proscribe collector enroll-secret create`)"
            )
        return {"secret": secret, **self.host_facts, "public_key": self.public_key}

    def sign(self, method: str, path_and_query: str, body: bytes) -> dict[str, str]:
        """Signature headers for one request; only valid once enrolled. The timestamp is this
        machine's clock plus ``clock_offset`` (learnt from a ``stale_request`` answer)."""
        if self._agent_id is None:
            raise RuntimeError("sign() before enrollment")
        now = time.time() + self.clock_offset
        return sign_request(self._key, self._agent_id, method, path_and_query, body, now=now)
