"""``collector.toml``: the collector's settings, validated once.

::

    [server]
    listen           = "127.0.0.1:8443"   # host:port; plain HTTP only on loopback …
    tls_cert         = "/etc/proscribe/collector.crt"
    tls_key          = "/etc/proscribe/collector.key"   # mode 0600
    behind_proxy     = false              # … unless a TLS-terminating reverse proxy is in front
    heartbeat_window = 180                # seconds; a host not seen for longer is "stale"
    heartbeat_interval = 60               # seconds, 15 to 3600: told to every agent
    session_key_file = "/etc/proscribe/session.key"
    api_docs         = false              # /docs and /redoc (served from local files)

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

    [metrics]
    access     = "loopback"   # | "token" (Authorization: Bearer, token_file) | "open"
    token_file = "/etc/proscribe/metrics.token"

    [[forward]]               # any number: syslog, webhook, splunk-hec destinations
    name = "siem"             # (keys: collector/forward/settings.py, docs/integrations.md)
    kind = "syslog"
    url  = "tls://siem.example:6514"

:class:`CollectorFile` is the file's schema (a pydantic model): sections and keys (unknown ones
are refused, so a typo never silently disables something), types (strict: ``"12"`` is not a
number and ``true`` is not 1), ranges and the rules between keys. The files it names are then
read and checked once (TLS certificate and key: PEM, matching, key not readable by others; the
session key; the metrics token). Every problem is one
:class:`~proscribe.core.errors.ConfigError` line naming the file, the key, the problem and the
fix.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from proscribe.collector.forward.settings import (
    ForwardFile,
    ForwardProblem,
    ForwardSettings,
    default_format,
    fix_for,
)
from proscribe.core.errors import ConfigError, KeyFileError
from proscribe.core.netaddr import is_loopback
from proscribe.core.wire import MAX_HEARTBEAT_INTERVAL, MIN_HEARTBEAT_INTERVAL

DEFAULT_LISTEN = "127.0.0.1:8443"
DEFAULT_DB_NAME = "collector.db"
DEFAULT_HEARTBEAT_WINDOW = 180.0
DEFAULT_HEARTBEAT_INTERVAL = 60.0
MIN_SESSION_KEY_BYTES = 32
MIN_METRICS_TOKEN_BYTES = 16
MIN_FORWARD_SECRET_BYTES = 16
_MAX_CONFIG_BYTES = 256 * 1024
_DATABASE_SCHEMES = ("sqlite://", "postgresql+psycopg://")


class ConfigProblem(ValueError):
    """A rule between keys, broken; ``key`` is the one to fix."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


# --- the file's schema ------------------------------------------------------------------------

_SECTION = ConfigDict(extra="forbid", strict=True, frozen=True)
Seconds = Annotated[float, Field(gt=0)]
Rate = Annotated[float, Field(ge=0)]


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("must be HOST:PORT")
    return host, int(port_text)


class ServerFile(BaseModel):
    model_config = _SECTION
    listen: str = DEFAULT_LISTEN
    tls_cert: str = ""
    tls_key: str = ""
    behind_proxy: bool = False
    heartbeat_window: Seconds = DEFAULT_HEARTBEAT_WINDOW
    heartbeat_interval: float = Field(
        default=DEFAULT_HEARTBEAT_INTERVAL,
        ge=MIN_HEARTBEAT_INTERVAL,
        le=MAX_HEARTBEAT_INTERVAL,
    )
    session_key_file: str = ""
    api_docs: bool = False

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        _parse_listen(value)
        return value

    @model_validator(mode="after")
    def _transport(self) -> ServerFile:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigProblem(
                "server.tls_cert",
                "server.tls_cert and server.tls_key must be given together",
            )
        if self.heartbeat_window < self.heartbeat_interval * 1.5:
            raise ConfigProblem(
                "server.heartbeat_interval",
                f"a heartbeat every {self.heartbeat_interval:g} s leaves no margin under "
                f"server.heartbeat_window = {self.heartbeat_window:g} s (hosts would turn "
                f"stale between heartbeats): raise heartbeat_window to at least "
                f"{self.heartbeat_interval * 1.5:g}, or lower heartbeat_interval",
            )
        host = _parse_listen(self.listen)[0]
        if not self.tls_cert and not self.behind_proxy and not is_loopback(host):
            raise ConfigProblem(
                "server.listen",
                f"{self.listen} is not loopback and no TLS is configured",
            )
        return self


class DatabaseFile(BaseModel):
    model_config = _SECTION
    url: str = ""  # empty: collector.db beside the config file

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value and not value.startswith(_DATABASE_SCHEMES):
            raise ValueError(f"{value.split('://', maxsplit=1)[0]!r} is not supported")
        return value


class PolicyFile(BaseModel):
    model_config = _SECTION
    trusted_keys: tuple[str, ...] = ()
    threshold: Annotated[int, Field(ge=1)] = 1

    @field_validator("trusted_keys", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        # TOML gives a list; strict mode wants the tuple the model stores.
        return tuple(value) if isinstance(value, list) else value

    @field_validator("trusted_keys")
    @classmethod
    def _keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from proscribe.core.policy.keys import parse_public_key

        for text in value:
            try:
                parse_public_key(text)
            except KeyFileError as err:
                raise ValueError(str(err)) from err
        return value

    @model_validator(mode="after")
    def _threshold(self) -> PolicyFile:
        if self.trusted_keys and self.threshold > len(self.trusted_keys):
            raise ConfigProblem(
                "policy.threshold",
                f"{self.threshold} is more than the number of trusted_keys "
                f"({len(self.trusted_keys)})",
            )
        return self


class EnrollFile(BaseModel):
    model_config = _SECTION
    per_ip_burst: Rate = 10.0
    per_ip_rate: Rate = 0.5
    global_burst: Rate = 200.0
    global_rate: Rate = 20.0


class MetricsFile(BaseModel):
    model_config = _SECTION
    access: Literal["loopback", "token", "open"] = "loopback"
    token_file: str = ""

    @model_validator(mode="after")
    def _token(self) -> MetricsFile:
        if (self.access == "token") != bool(self.token_file):
            raise ConfigProblem(
                "metrics.token_file",
                'metrics.token_file is needed with access = "token", and only then',
            )
        return self


class CollectorFile(BaseModel):
    """The schema of ``collector.toml``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    server: ServerFile = ServerFile()
    database: DatabaseFile = DatabaseFile()
    policy: PolicyFile = PolicyFile()
    enroll: EnrollFile = EnrollFile()
    metrics: MetricsFile = MetricsFile()
    forward: tuple[ForwardFile, ...] = ()

    @field_validator("forward", mode="before")
    @classmethod
    def _forward_list(cls, value: Any) -> Any:
        if isinstance(value, dict):
            raise ConfigProblem("forward", "write each destination as a [[forward]] table")
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _unique_names(self) -> CollectorFile:
        names = [f.name for f in self.forward]
        for name in names:
            if names.count(name) > 1:
                raise ConfigProblem("forward", f"two [[forward]] tables are named {name!r}")
        return self


_FIXES = {
    "server.listen": "e.g. '127.0.0.1:8443'; off loopback set server.tls_cert and "
    "server.tls_key, or put a TLS reverse proxy in front and set server.behind_proxy = true",
    "server.tls_cert": "set both, or neither for loopback-only plain HTTP",
    "server.heartbeat_window": "give seconds, e.g. 180",
    "server.heartbeat_interval": "give seconds from 15 to 3600, e.g. 60",
    "database.url": "use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB",
    "policy.trusted_keys": "list the signing keys' public lines, 'ed25519:BASE64'",
    "policy.threshold": "between 1 and the number of trusted_keys",
    "metrics.access": 'one of "loopback", "token", "open"',
    "metrics.token_file": 'set access = "token" and token_file together, or neither',
    "forward": "one [[forward]] table per destination, each with its own name",
}


def _forward_line(err: ValidationError, source: str, data: dict[str, Any]) -> str | None:
    """A problem inside a ``[[forward]]`` table, named by the table's place and name."""
    first = err.errors()[0]
    loc = list(first["loc"])
    if len(loc) < 2 or loc[0] != "forward" or not isinstance(loc[1], int):
        return None
    index = loc[1]
    tables = data.get("forward")
    raw = tables[index] if isinstance(tables, list) and index < len(tables) else None
    name = raw.get("name") if isinstance(raw, dict) else None
    where = f"[[forward]] #{index + 1}" + (f" ({name!r})" if isinstance(name, str) else "")
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, ForwardProblem):
        return f"{source}: {where} {cause.key}: {cause} (fix: {fix_for(cause.key)})"
    if len(loc) == 2:
        if first["type"] in ("model_type", "model_attributes_type"):
            return f"{source}: {where} must be a table (fix: write it as [[forward]] and keys)"
        return f"{source}: {where}: {first['msg']} (fix: see docs/integrations.md)"
    key = ".".join(str(p) for p in loc[2:])
    if first["type"] == "extra_forbidden":
        return (
            f"{source}: {where}: unknown key {key} "
            f"(fix: use one of {', '.join(ForwardFile.model_fields)})"
        )
    if first["type"] == "missing":
        return f"{source}: {where}: {key} is missing (fix: {fix_for(key)})"
    problem = str(cause) if first["type"] == "value_error" and cause else first["msg"]
    problem = problem[0].lower() + problem[1:] if problem else "invalid"
    return f"{source}: {where} {key} = {first.get('input')!r}: {problem} (fix: {fix_for(key)})"


def _problem_line(err: ValidationError, source: str, data: dict[str, Any]) -> str:
    """The first problem of ``err`` as one line: file, key, problem, fix."""
    forward = _forward_line(err, source, data)
    if forward is not None:
        return forward
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    kind = first["type"]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigProblem):
        key = cause.key
        problem = str(cause)
    else:
        key = ".".join(loc) or "(file)"
        problem = str(cause) if kind == "value_error" and cause else first["msg"]
    if kind == "extra_forbidden":
        if len(loc) == 1:
            return (
                f"{source}: unknown section [{loc[0]}] "
                f"(fix: use one of {', '.join(CollectorFile.model_fields)})"
            )
        section: Any = CollectorFile.model_fields[loc[0]].annotation
        return f"{source}: unknown key {key} (fix: use one of {', '.join(section.model_fields)})"
    if kind in ("model_type", "model_attributes_type") and len(loc) == 1:
        return f"{source}: [{loc[0]}] must be a table (fix: write it as [{loc[0]}] and keys)"
    shown = "" if isinstance(cause, ConfigProblem) else f" = {first.get('input')!r}"
    fix = _FIXES.get(key, "see docs/collector.md")
    text = problem[0].lower() + problem[1:] if problem else "invalid"
    return f"{source}: {key}{shown}: {text} (fix: {fix})"


# --- what create_app needs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnrollLimits:
    """Token-bucket sizes for ``POST /api/v1/enroll`` (shared by replicas: database rows)."""

    per_ip_burst: float = 10.0
    per_ip_rate: float = 0.5
    global_burst: float = 200.0
    global_rate: float = 20.0


@dataclass(frozen=True, slots=True)
class MetricsAccess:
    """Who may read ``/metrics``: loopback clients, bearers of ``token``, or anyone."""

    access: str = "loopback"
    token: bytes | None = field(default=None, repr=False)


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
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    trusted_keys: tuple[str, ...] = ()
    threshold: int = 1
    enroll: EnrollLimits = field(default_factory=EnrollLimits)
    source: str = "<settings>"
    # Signs dashboard sessions; replicas sharing it accept each other's sign-ins. None: a
    # random key per process (sessions end on restart).
    session_key: bytes | None = field(default=None, repr=False)
    api_docs: bool = False
    metrics: MetricsAccess = field(default_factory=MetricsAccess)
    forwards: tuple[ForwardSettings, ...] = ()

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
    base = (base or Path.cwd()).resolve()
    try:
        parsed = CollectorFile.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_problem_line(err, source, data)) from err
    server = parsed.server
    host, port = _parse_listen(server.listen)
    cert = _existing_file(server.tls_cert, "server.tls_cert", source, base)
    key = _existing_file(server.tls_key, "server.tls_key", source, base)
    if cert is not None and key is not None:
        _check_tls(cert, key, source)
    metrics = parsed.metrics
    token = None
    if metrics.token_file:
        token = _secret_file(
            metrics.token_file, "metrics.token_file", source, base, MIN_METRICS_TOKEN_BYTES
        )
    if server.api_docs:
        _check_api_docs(source)
    session_key = None
    if server.session_key_file:
        session_key = _secret_file(
            server.session_key_file, "server.session_key_file", source, base, MIN_SESSION_KEY_BYTES
        )
    enroll = parsed.enroll
    return CollectorSettings(
        database_url=_database_url(parsed.database.url, base),
        host=host,
        port=port,
        tls_cert=cert,
        tls_key=key,
        behind_proxy=server.behind_proxy,
        heartbeat_window=float(server.heartbeat_window),
        heartbeat_interval=float(server.heartbeat_interval),
        trusted_keys=parsed.policy.trusted_keys,
        threshold=parsed.policy.threshold,
        enroll=EnrollLimits(
            enroll.per_ip_burst, enroll.per_ip_rate, enroll.global_burst, enroll.global_rate
        ),
        source=source,
        session_key=session_key,
        api_docs=server.api_docs,
        metrics=MetricsAccess(metrics.access, token),
        forwards=tuple(_forward_settings(f, source, base) for f in parsed.forward),
    )


def _forward_settings(table: ForwardFile, source: str, base: Path) -> ForwardSettings:
    """Read the table's secret and check its CA file, naming the table in any problem."""
    where = f"[[forward]] {table.name!r}"
    secret = None
    if table.secret_file:
        secret = _secret_file(
            table.secret_file, f"{where} secret_file", source, base, MIN_FORWARD_SECRET_BYTES
        )
    ca_file = None
    if table.ca_file:
        ca_path = _resolve(table.ca_file, base)
        try:
            ssl.create_default_context(cafile=str(ca_path))
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(
                f"{source}: {where} ca_file = {table.ca_file!r}: not a readable PEM CA file "
                f"({getattr(err, 'strerror', None) or err}) (fix: {fix_for('ca_file')})"
            ) from err
        ca_file = str(ca_path)
    return ForwardSettings(
        name=table.name,
        kind=table.kind,
        url=table.url,
        format=table.format or default_format(table.kind),
        ca_file=ca_file,
        secret=secret,
        min_severity=table.min_severity,
        batch_size=table.batch_size,
        rate=table.rate,
        retry_max=table.retry_max,
        timeout=table.timeout,
        start=table.start,
        facility=table.facility,
        lease=table.lease,
    )


# --- the files the settings name ----------------------------------------------------------------


def _database_url(url: str, base: Path) -> str:
    """A SQLite path is resolved against the config file's folder (never the working
    directory, which depends on who starts the collector from where)."""
    if not url:
        return f"sqlite:///{base / DEFAULT_DB_NAME}"
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    path, sep, query = url[len(prefix) :].partition("?")
    if not path or path == ":memory:" or path.startswith("/"):
        return url
    return f"{prefix}{base / path}{sep}{query}"


def _resolve(value: str, base: Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def _existing_file(value: str, key: str, source: str, base: Path) -> Path | None:
    if not value:
        return None
    path = _resolve(value, base)
    if not path.is_file():
        raise ConfigError(
            f"{source}: {key} = {value!r}: file not found (fix: give the PEM file's path)"
        )
    return path


def _private_mode(path: Path, where: str) -> None:
    mode = path.stat().st_mode
    if os.name == "posix" and mode & 0o077:
        raise ConfigError(
            f"{where}: readable by others (mode {mode & 0o777:o}); a secret must be readable "
            f"by the collector's user only (fix: chmod 600 {path})"
        )


def _secret_file(value: str, key: str, source: str, base: Path, minimum: int) -> bytes:
    """A key or token file: owner-only, at least ``minimum`` bytes (blanks stripped)."""
    path = _resolve(value, base)
    where = f"{source}: {key} = {value!r}"
    make = f"head -c 48 /dev/urandom | base64 > {path} && chmod 600 {path}"
    try:
        _private_mode(path, where)
        secret = path.read_bytes().strip()
    except PermissionError as err:
        raise ConfigError(
            f"{where}: not readable by this user (fix: chown it to the collector's user, "
            f"then chmod 600 {path})"
        ) from err
    except OSError as err:
        raise ConfigError(f"{where}: {err.strerror or err} (fix: create it: {make})") from err
    if len(secret) < minimum:
        raise ConfigError(
            f"{where}: {len(secret)} bytes; at least {minimum} are needed (fix: {make})"
        )
    return secret


def _check_api_docs(source: str) -> None:
    from proscribe.collector.apidocs import PACKAGE, assets_folder

    if assets_folder() is None:
        raise ConfigError(
            f"{source}: server.api_docs = true: the {PACKAGE} package, whose files the pages "
            "are served from, is not installed (fix: pip install 'proscribe[apidocs]', or set "
            "api_docs = false)"
        )


def _check_tls(cert: Path, key: Path, source: str) -> None:
    """Certificate and key are PEM, belong together and the key is private: checked here so
    ``serve`` fails in one line before it says it is listening, not in a TLS traceback."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    _private_mode(key, f"{source}: server.tls_key = '{key}'")
    try:
        certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    except (ValueError, OSError) as err:
        raise ConfigError(
            f"{source}: server.tls_cert = '{cert}': not a PEM certificate "
            "(fix: give the certificate in PEM, '-----BEGIN CERTIFICATE-----')"
        ) from err
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except TypeError as err:
        raise ConfigError(
            f"{source}: server.tls_key = '{key}': encrypted with a passphrase, which the "
            f"collector cannot ask for (fix: openssl pkey -in {key} -out {key}.plain)"
        ) from err
    except (ValueError, OSError, PermissionError) as err:
        raise ConfigError(
            f"{source}: server.tls_key = '{key}': not a PEM private key, or not readable "
            "(fix: give the key in PEM, '-----BEGIN PRIVATE KEY-----', readable by this user)"
        ) from err
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(*raw) != private.public_key().public_bytes(*raw):
        raise ConfigError(
            f"{source}: server.tls_key = '{key}' does not belong to server.tls_cert = "
            f"'{cert}' (fix: give the key the certificate was issued for)"
        )
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as err:
        raise ConfigError(
            f"{source}: server.tls_cert/tls_key: not usable for TLS: {err.reason or err} "
            "(fix: check both files)"
        ) from err
