"""The agent's identity towards the collector: its Ed25519 key and the agent_id it was given.

Files in ``state_dir``:

- ``agent.key`` — PEM PKCS#8 Ed25519 private key, mode 0600, generated on first use. The
  collector only ever sees the public half, so a dump of its database holds no credential.
- ``agent_id`` — the id the collector returned from ``POST /api/v1/enroll``.

Enrollment sends the enroll secret (read from its file each time, so an operator can rotate it
without restarting the agent), host facts and the public key. When the collector answers
``unknown_agent`` the id is forgotten and the agent enrolls again with the same key; on
``revoked_agent`` the key is replaced too (a revoked key may be compromised). The spool is never
touched by any of this.
"""

from __future__ import annotations

import logging
import socket
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
MAX_SECRET_BYTES = 4096


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
