"""``collector.toml``: the collector's settings, read once and validated key by key.

::

    [server]
    listen           = "127.0.0.1:8443"   # host:port; plain HTTP only on loopback …
    tls_cert         = "/etc/proscribe/collector.crt"
    tls_key          = "/etc/proscribe/collector.key"
    behind_proxy     = false              # … unless a TLS-terminating reverse proxy is in front
    heartbeat_window = 180                # seconds; a host not seen for longer is "stale"

    [database]
    url = "sqlite:////var/lib/proscribe/collector.db"   # or postgresql+psycopg://…

    [policy]
    trusted_keys = ["ed25519:BASE64…"]
    threshold    = 1

    [enroll]
    per_ip_burst = 10      # token bucket per client address
    per_ip_rate  = 0.5     # tokens per second
    global_burst = 200
    global_rate  = 20.0

Every problem is a :class:`~proscribe.core.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proscribe.core.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:8443"
DEFAULT_DB_NAME = "collector.db"
DEFAULT_HEARTBEAT_WINDOW = 180.0
_MAX_CONFIG_BYTES = 256 * 1024

_KNOWN: dict[str, set[str]] = {
    "server": {
        "listen",
        "tls_cert",
        "tls_key",
        "behind_proxy",
        "heartbeat_window",
        "session_key_file",
    },
    "database": {"url"},
    "policy": {"trusted_keys", "threshold"},
    "enroll": {"per_ip_burst", "per_ip_rate", "global_burst", "global_rate"},
}


@dataclass(frozen=True, slots=True)
class EnrollLimits:
    """Token-bucket sizes for ``POST /api/v1/enroll`` (per replica, in memory)."""

    per_ip_burst: float = 10.0
    per_ip_rate: float = 0.5
    global_burst: float = 200.0
    global_rate: float = 20.0


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    """Everything :func:`proscribe.collector.app.create_app` needs."""

    database_url: str
    host: str = "127.0.0.1"
    port: int = 8443
    tls_cert: Path | None = None
    tls_key: Path | None = None
    behind_proxy: bool = False
    heartbeat_window: float = DEFAULT_HEARTBEAT_WINDOW
    trusted_keys: tuple[str, ...] = ()
    threshold: int = 1
    enroll: EnrollLimits = field(default_factory=EnrollLimits)
    source: str = "<settings>"
    # Signs dashboard sessions; replicas sharing it accept each other's sign-ins. None: a
    # random key per process (sessions end on restart).
    session_key: bytes | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None


def load_collector_config(path: Path) -> CollectorSettings:
    """Read and validate ``collector.toml``; relative paths resolve against its folder."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(
            f"{path}: cannot read the collector config: {err.strerror or err} "
            "(fix: pass --config with the path of collector.toml)"
        ) from err
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {_MAX_CONFIG_BYTES} bytes (fix: check the file)")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML: {err} (fix: correct the syntax)") from err
    return settings_from_mapping(data, source=str(path), base=path.parent)


def settings_from_mapping(
    data: dict[str, Any], *, source: str = "<settings>", base: Path | None = None
) -> CollectorSettings:
    """Validate an already parsed config mapping (tests and the demo build one in memory)."""
    base = base or Path.cwd()
    for section, value in data.items():
        if section not in _KNOWN:
            raise ConfigError(
                f"{source}: unknown section [{section}] "
                f"(fix: use one of {', '.join(sorted(_KNOWN))})"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for key in value:
            if key not in _KNOWN[section]:
                raise ConfigError(
                    f"{source}: unknown key {section}.{key} "
                    f"(fix: use one of {', '.join(sorted(_KNOWN[section]))})"
                )
    server = data.get("server", {})
    database = data.get("database", {})
    policy = data.get("policy", {})
    enroll = data.get("enroll", {})

    host, port = _parse_listen(_get(server, "server.listen", str, DEFAULT_LISTEN, source), source)
    cert = _path_or_none(server, "tls_cert", source, base)
    key = _path_or_none(server, "tls_key", source, base)
    if (cert is None) != (key is None):
        raise ConfigError(
            f"{source}: server.tls_cert and server.tls_key must be given together "
            "(fix: set both, or neither for loopback-only plain HTTP)"
        )
    behind_proxy = _get(server, "server.behind_proxy", bool, False, source)
    if cert is None and not behind_proxy and not _is_loopback(host):
        raise ConfigError(
            f"{source}: server.listen = {host}:{port} is not loopback and no TLS is configured "
            "(fix: set server.tls_cert and server.tls_key, or put a TLS reverse proxy in front "
            "and set server.behind_proxy = true)"
        )
    session_key = _session_key(server, source, base)
    window = float(
        _get(server, "server.heartbeat_window", (int, float), DEFAULT_HEARTBEAT_WINDOW, source)
    )
    if window <= 0:
        raise ConfigError(f"{source}: server.heartbeat_window must be > 0 seconds")

    default_url = f"sqlite:///{(base / DEFAULT_DB_NAME).resolve()}"
    url = _get(database, "database.url", str, default_url, source)
    if not (url.startswith(("sqlite://", "postgresql+psycopg://"))):
        raise ConfigError(
            f"{source}: database.url {url.split('://')[0]!r} is not supported "
            "(fix: use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)"
        )

    keys = policy.get("trusted_keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ConfigError(f"{source}: policy.trusted_keys must be a list of 'ed25519:…' strings")
    for k in keys:
        _check_public_key(k, source)
    threshold = _get(policy, "policy.threshold", int, 1, source)
    if threshold < 1 or (keys and threshold > len(keys)):
        raise ConfigError(
            f"{source}: policy.threshold = {threshold} must be between 1 and the number of "
            f"trusted_keys ({len(keys)})"
        )

    limits = EnrollLimits(
        **{
            name: float(_get(enroll, f"enroll.{name}", (int, float), default, source))
            for name, default in (
                ("per_ip_burst", 10.0),
                ("per_ip_rate", 0.5),
                ("global_burst", 200.0),
                ("global_rate", 20.0),
            )
        }
    )
    return CollectorSettings(
        database_url=url,
        host=host,
        port=port,
        tls_cert=cert,
        tls_key=key,
        behind_proxy=behind_proxy,
        heartbeat_window=window,
        trusted_keys=tuple(keys),
        threshold=threshold,
        enroll=limits,
        source=source,
        session_key=session_key,
    )


def _get(table: dict[str, Any], name: str, kind: Any, default: Any, source: str) -> Any:
    key = name.split(".", 1)[1]
    if key not in table:
        return default
    value = table[key]
    # bool is an int subclass; a threshold of `true` is a mistake, not 1.
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{source}: {name} must not be a boolean")
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "a number"
        raise ConfigError(f"{source}: {name} must be {expected}, got {value!r}")
    return value


def _path_or_none(table: dict[str, Any], key: str, source: str, base: Path) -> Path | None:
    value = _get(table, f"server.{key}", str, None, source)
    if value is None or value == "":
        return None
    path = Path(value)
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise ConfigError(
            f"{source}: server.{key} = {value!r}: file not found (fix: give the PEM file's path)"
        )
    return path


MIN_SESSION_KEY_BYTES = 32


def _session_key(server: dict[str, Any], source: str, base: Path) -> bytes | None:
    value = _get(server, "server.session_key_file", str, None, source)
    if not value:
        return None
    path = Path(value)
    path = path if path.is_absolute() else base / path
    where = f"{source}: server.session_key_file = {value!r}"
    make = f"head -c 48 /dev/urandom | base64 > {path} && chmod 600 {path}"
    try:
        mode = path.stat().st_mode
        key = path.read_bytes().strip()
    except PermissionError as err:
        raise ConfigError(
            f"{where}: not readable by this user (fix: chown it to the collector's user, "
            f"then chmod 600 {path})"
        ) from err
    except OSError as err:
        raise ConfigError(f"{where}: {err.strerror or err} (fix: create it: {make})") from err
    if os.name == "posix" and mode & 0o077:
        raise ConfigError(
            f"{where}: readable by others (mode {mode & 0o777:o}); anyone who reads it can "
            f"sign in as any user (fix: chmod 600 {path})"
        )
    if len(key) < MIN_SESSION_KEY_BYTES:
        raise ConfigError(
            f"{where}: {len(key)} bytes; at least {MIN_SESSION_KEY_BYTES} are needed (fix: {make})"
        )
    return key


def _parse_listen(value: str, source: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(
            f"{source}: server.listen = {value!r} must be HOST:PORT (fix: e.g. '127.0.0.1:8443')"
        )
    return host, int(port_text)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_public_key(text: str, source: str) -> None:
    from proscribe.core.errors import KeyFileError
    from proscribe.core.policy.keys import parse_public_key

    try:
        parse_public_key(text)
    except KeyFileError as err:
        raise ConfigError(f"{source}: policy.trusted_keys: {err}") from err
