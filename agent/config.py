"""The agent's configuration file (``agent.toml``): parsed once into frozen dataclasses.

Every section and key is listed here; an unknown key, a wrong type or a bad value is a
:class:`~proscribe.core.errors.ConfigError` whose message names the file, the key and the fix.
Relative paths are resolved against the directory of the config file, so a config and its
policy can travel together. See ``docs/agent.md`` for the user-facing description of each key.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from proscribe.core.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AgentConfig",
    "AgentSection",
    "CollectorSection",
    "DnsSection",
    "EnforceSection",
    "PolicySection",
    "SensorsSection",
    "SpoolSection",
    "load_agent_config",
    "parse_agent_config",
    "parse_host_port",
]

DEFAULT_CONFIG_PATH = Path("/etc/proscribe/agent.toml")
MAX_CONFIG_BYTES = 256 * 1024

Mode = Literal["enforce", "monitor"]
ProcessSensorChoice = Literal["auto", "netlink", "poll", "off"]
DnsSensorChoice = Literal["auto", "capture", "proxy", "off"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AgentSection:
    mode: Mode = "enforce"
    state_dir: Path = Path("/var/lib/proscribe")
    hostname: str = ""  # "" = the OS hostname; set it to pin the name exemptions match against
    status_interval: float = 5.0  # seconds between writes of state_dir/status.json


@dataclass(frozen=True, slots=True)
class PolicySection:
    file: Path = Path("/etc/proscribe/policy.toml")
    trusted_keys: tuple[str, ...] = ()  # "ed25519:BASE64" strings or paths to .pub files
    threshold: int = 1
    recheck_interval: float = 60.0  # seconds; a safety net beside the file watcher

    @property
    def sig_file(self) -> Path:
        return self.file.with_name(self.file.name + ".sig")


@dataclass(frozen=True, slots=True)
class CollectorSection:
    url: str
    ca_file: Path | None = None
    enroll_secret_file: Path | None = None


@dataclass(frozen=True, slots=True)
class SensorsSection:
    process: ProcessSensorChoice = "auto"
    dns: DnsSensorChoice = "auto"
    poll_interval: float = 1.0  # seconds between psutil polls in poll mode
    sweep_interval: float = 30.0  # seconds between safety-net sweeps in netlink mode
    queue_size: int = 4096  # events buffered between the sensor and the checker


@dataclass(frozen=True, slots=True)
class EnforceSection:
    kill_children: bool = False  # kill the descendants of a blocked process too
    notify: bool = True  # desktop notice (notify-send) when the user has a session bus
    exec_deny_mounts: tuple[str, ...] = ()  # fanotify pre-exec deny on these mounts; () = off
    exec_deny_timeout_ms: int = 200  # answer "allow" when a decision takes longer (fail-open)
    exec_deny_cache_size: int = 4096  # verdicts cached by (dev, inode, mtime, ctime, size)
    kernel_guard: str = "auto"  # eBPF exec guard: auto | required | off (agent/kernel_guard.py)
    # managed Chromium/Chrome/Edge/Firefox policies from the domain rules (Linux; the
    # installer turns it on: agent/enforce/browser_policy.py)
    browser_policies: bool = False


@dataclass(frozen=True, slots=True)
class SpoolSection:
    max_events: int = 100_000
    max_bytes: int = 50 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DnsSection:
    proxy_listen: str = "127.0.0.1:53"
    upstreams: tuple[str, ...] = ()  # "" = the system resolvers from /etc/resolv.conf
    interfaces: tuple[str, ...] = ()  # capture interfaces; empty = all
    watch_encrypted: bool = True  # report DoT / DoH connections (Linux; sensors/dns/encrypted.py)
    doh_resolvers: tuple[str, ...] = ()  # more DoH resolver addresses beyond the built-in list
    # dns = "auto" in enforce mode: reject DoT (port 853) and the DoH resolvers' port 443
    block_encrypted: bool = True
    # seconds the redirect outlives the agent (renewed every ttl/5): after a crash DNS flows
    # normally again within this time
    redirect_ttl: int = 15
    # attribute queries from the kernel's sender map (eBPF cgroup programs; Linux, root) first
    kernel_attribution: bool = True


@dataclass(frozen=True, slots=True)
class DedupeSection:
    window: float = 300.0  # seconds within which repeated starts of one rule+exe fold into a count


@dataclass(frozen=True, slots=True)
class ModelsSection:
    """The model sensor (agent/sensors/models.py): local AI model files judged by content."""

    sensor: Literal["on", "off"] = "on"
    dirs: tuple[str, ...] = ()  # more directories to watch and sweep (e.g. /srv/models)
    user_stores: bool = True  # every local user's stores (homes, HF_HOME, OLLAMA_MODELS, …)
    system_stores: bool = True  # /usr/share/ollama, /var/lib/docker's model store, …
    sweep_interval: float = 6 * 3600.0  # seconds between sweeps (one also runs at start)
    sweep_files_per_second: int = 2000  # the sweep's I/O budget (files opened per second)
    maps_interval: float = 10.0  # seconds between looks at every process's mapped files
    quarantine_dir: Path | None = None  # None: state_dir/quarantine (same file system only)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    source: Path
    agent: AgentSection = field(default_factory=AgentSection)
    policy: PolicySection = field(default_factory=PolicySection)
    collector: CollectorSection | None = None
    sensors: SensorsSection = field(default_factory=SensorsSection)
    enforce: EnforceSection = field(default_factory=EnforceSection)
    spool: SpoolSection = field(default_factory=SpoolSection)
    dns: DnsSection = field(default_factory=DnsSection)
    dedupe: DedupeSection = field(default_factory=DedupeSection)
    models: ModelsSection = field(default_factory=ModelsSection)

    @property
    def state_dir(self) -> Path:
        return self.agent.state_dir

    @property
    def spool_path(self) -> Path:
        return self.agent.state_dir / "spool.db"

    @property
    def status_path(self) -> Path:
        return self.agent.state_dir / "status.json"


def load_agent_config(path: Path) -> AgentConfig:
    """Read and validate ``path``; every problem is a one-line :class:`ConfigError`."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as err:
        raise ConfigError(
            f"{path}: config file not found (fix: create it, or pass --config FILE)"
        ) from err
    except OSError as err:
        raise ConfigError(
            f"{path}: cannot read the config file: {err.strerror} "
            "(fix: check the path and its permissions)"
        ) from err
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: config file is larger than {MAX_CONFIG_BYTES} bytes (fix: point "
            "--config at the agent's TOML file)"
        )
    return parse_agent_config(data, path)


def parse_agent_config(data: bytes, path: Path) -> AgentConfig:
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 (fix: save the file as UTF-8)") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err} (fix: correct the syntax there)") from err
    r = _Reader(path, doc)
    base = path.absolute().parent
    r.only_sections(
        "agent", "policy", "collector", "sensors", "enforce", "spool", "dns", "dedupe", "models"
    )

    a = r.section("agent", ("mode", "state_dir", "hostname", "status_interval"))
    agent = AgentSection(
        mode=r.choice(a, "agent.mode", ("enforce", "monitor"), "enforce"),
        state_dir=r.path(a, "agent.state_dir", base, Path("/var/lib/proscribe")),
        hostname=r.string(a, "agent.hostname", ""),
        status_interval=r.number(a, "agent.status_interval", 5.0, low=0.1, high=3600),
    )

    p = r.section("policy", ("file", "trusted_keys", "threshold", "recheck_interval"))
    keys = r.string_list(p, "policy.trusted_keys")
    trusted = tuple(_check_key(r, k, base) for k in keys)
    threshold = r.integer(p, "policy.threshold", 1, low=1, high=64)
    if trusted and threshold > len(trusted):
        raise r.error(
            "policy.threshold",
            f"is {threshold} but only {len(trusted)} trusted key(s) are listed",
            "lower the threshold or add keys to policy.trusted_keys",
        )
    policy = PolicySection(
        file=r.path(p, "policy.file", base, Path("/etc/proscribe/policy.toml")),
        trusted_keys=trusted,
        threshold=threshold,
        recheck_interval=r.number(p, "policy.recheck_interval", 60.0, low=1, high=86400),
    )

    collector: CollectorSection | None = None
    if "collector" in doc:
        c = r.section("collector", ("url", "ca_file", "enroll_secret_file"))
        url = r.string(c, "collector.url", "")
        if not url.startswith(("https://", "http://")):
            raise r.error(
                "collector.url",
                f"must be an http(s) URL, got {url!r}",
                'write e.g. url = "https://collector.example:8443"',
            )
        collector = CollectorSection(
            url=url,
            ca_file=r.optional_path(c, "collector.ca_file", base),
            enroll_secret_file=r.optional_path(c, "collector.enroll_secret_file", base),
        )

    s = r.section("sensors", ("process", "dns", "poll_interval", "sweep_interval", "queue_size"))
    sensors = SensorsSection(
        process=r.choice(s, "sensors.process", ("auto", "netlink", "poll", "off"), "auto"),
        dns=r.choice(s, "sensors.dns", ("auto", "capture", "proxy", "off"), "auto"),
        poll_interval=r.number(s, "sensors.poll_interval", 1.0, low=0.05, high=3600),
        sweep_interval=r.number(s, "sensors.sweep_interval", 30.0, low=1, high=86400),
        queue_size=r.integer(s, "sensors.queue_size", 4096, low=16, high=1_000_000),
    )

    e = r.section(
        "enforce",
        (
            "kill_children",
            "notify",
            "exec_deny_mounts",
            "exec_deny_timeout_ms",
            "exec_deny_cache_size",
            "kernel_guard",
            "browser_policies",
        ),
    )
    enforce = EnforceSection(
        kill_children=r.boolean(e, "enforce.kill_children", False),
        notify=r.boolean(e, "enforce.notify", True),
        exec_deny_mounts=r.string_list(e, "enforce.exec_deny_mounts"),
        exec_deny_timeout_ms=r.integer(e, "enforce.exec_deny_timeout_ms", 200, low=10, high=5000),
        exec_deny_cache_size=r.integer(
            e, "enforce.exec_deny_cache_size", 4096, low=0, high=1_000_000
        ),
        kernel_guard=r.choice(e, "enforce.kernel_guard", ("auto", "required", "off"), "auto"),
        browser_policies=r.boolean(e, "enforce.browser_policies", False),
    )

    sp = r.section("spool", ("max_events", "max_bytes"))
    spool = SpoolSection(
        max_events=r.integer(sp, "spool.max_events", 100_000, low=100, high=100_000_000),
        max_bytes=r.integer(
            sp, "spool.max_bytes", 50 * 1024 * 1024, low=64 * 1024, high=64 * 1024**3
        ),
    )

    d = r.section(
        "dns",
        (
            "proxy_listen",
            "upstreams",
            "interfaces",
            "watch_encrypted",
            "doh_resolvers",
            "block_encrypted",
            "redirect_ttl",
            "kernel_attribution",
        ),
    )
    listen = r.string(d, "dns.proxy_listen", "127.0.0.1:53")
    r.host_port("dns.proxy_listen", listen, default_port=None)
    upstreams = r.string_list(d, "dns.upstreams")
    for up in upstreams:
        r.host_port("dns.upstreams", up, default_port=53)
    dns = DnsSection(
        proxy_listen=listen,
        upstreams=upstreams,
        interfaces=r.string_list(d, "dns.interfaces"),
        watch_encrypted=r.boolean(d, "dns.watch_encrypted", True),
        doh_resolvers=r.string_list(d, "dns.doh_resolvers"),
        block_encrypted=r.boolean(d, "dns.block_encrypted", True),
        redirect_ttl=r.integer(d, "dns.redirect_ttl", 15, low=3, high=600),
        kernel_attribution=r.boolean(d, "dns.kernel_attribution", True),
    )
    for address in dns.doh_resolvers:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise r.error(
                "dns.doh_resolvers", f"{address!r} is not an IP address", 'write e.g. ["10.0.0.53"]'
            ) from None

    dd = r.section("dedupe", ("window",))
    dedupe = DedupeSection(window=r.number(dd, "dedupe.window", 300.0, low=0, high=86400))

    m = r.section(
        "models",
        (
            "sensor",
            "dirs",
            "user_stores",
            "system_stores",
            "sweep_interval",
            "sweep_files_per_second",
            "maps_interval",
            "quarantine_dir",
        ),
    )
    model_dirs = r.string_list(m, "models.dirs")
    for folder in model_dirs:
        if not folder.startswith("/"):
            raise r.error("models.dirs", f"{folder!r} is not absolute", 'write e.g. "/srv/models"')
    models = ModelsSection(
        sensor=r.choice(m, "models.sensor", ("on", "off"), "on"),
        dirs=model_dirs,
        user_stores=r.boolean(m, "models.user_stores", True),
        system_stores=r.boolean(m, "models.system_stores", True),
        sweep_interval=r.number(m, "models.sweep_interval", 6 * 3600.0, low=10, high=30 * 86400),
        sweep_files_per_second=r.integer(
            m, "models.sweep_files_per_second", 2000, low=1, high=1_000_000
        ),
        maps_interval=r.number(m, "models.maps_interval", 10.0, low=0.1, high=86400),
        quarantine_dir=r.optional_path(m, "models.quarantine_dir", base),
    )

    return AgentConfig(
        source=path,
        agent=agent,
        policy=policy,
        collector=collector,
        sensors=sensors,
        enforce=enforce,
        spool=spool,
        dns=dns,
        dedupe=dedupe,
        models=models,
    )


def _check_key(r: _Reader, value: str, base: Path) -> str:
    prefix = "ed25519:"
    if value.startswith(prefix):
        try:
            raw = base64.b64decode(value[len(prefix) :].split(maxsplit=1)[0], validate=True)
        except (binascii.Error, IndexError) as err:
            raise r.error(
                "policy.trusted_keys",
                f"{value[:30]!r} is not valid base64",
                "paste the line from NAME.pub exactly",
            ) from err
        if len(raw) != 32:
            raise r.error(
                "policy.trusted_keys",
                f"{value[:30]!r} decodes to {len(raw)} bytes, not 32",
                "paste the line from NAME.pub exactly",
            )
        return value
    candidate = Path(value).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    if not candidate.is_file():
        raise r.error(
            "policy.trusted_keys",
            f"{value!r} is neither an 'ed25519:…' key nor an existing .pub file",
            "paste the line from NAME.pub, or give the path of the .pub file",
        )
    return str(candidate)


def parse_host_port(text: str, key: str, default_port: int | None = 53) -> tuple[str, int]:
    """``"127.0.0.1:53"``, ``"[::1]:5353"``, ``"9.9.9.9"``, ``"2001:db8::1"`` -> ``(host,
    port)``; a bare address gets ``default_port`` (``None``: the port is required)."""
    value = text.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":")
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""  # a bare name, IPv4 or IPv6 address
    if not port and default_port is not None:
        port = str(default_port)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f'{key}: {text!r} is not HOST:PORT; write e.g. "127.0.0.1:53"')
    return host, int(port)


class _Reader:
    """Typed access to the parsed TOML that turns every mistake into one ConfigError."""

    def __init__(self, path: Path, doc: Mapping[str, Any]) -> None:
        self.source = path
        self.doc = doc

    def error(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key} {problem} (fix: {fix})")

    def only_sections(self, *names: str) -> None:
        for name, value in self.doc.items():
            if name not in names:
                raise self.error(
                    f"[{name}]", "is not a known section", f"use only {', '.join(names)}"
                )
            if not isinstance(value, dict):
                raise self.error(name, "must be a table", f"write it as a [{name}] section")

    def section(self, name: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
        table: Mapping[str, Any] = self.doc.get(name, {})
        for key in table:
            if key not in keys:
                raise self.error(
                    f"{name}.{key}",
                    "is not a known key",
                    f"remove it; [{name}] accepts {', '.join(keys)}",
                )
        return table

    def _get(
        self,
        table: Mapping[str, Any],
        key: str,
        kind: type[T] | tuple[type, ...],
        default: T,
        what: str,
    ) -> T:
        name = key.split(".", 1)[1]
        if name not in table:
            return default
        value = table[name]
        if isinstance(value, bool) and kind is not bool:
            raise self.error(key, f"must be {what}, got {value!r}", f"set {key} to {what}")
        if not isinstance(value, kind):
            raise self.error(key, f"must be {what}, got {value!r}", f"set {key} to {what}")
        return value  # type: ignore[return-value]

    def string(self, table: Mapping[str, Any], key: str, default: str) -> str:
        return self._get(table, key, str, default, "a string")

    def boolean(self, table: Mapping[str, Any], key: str, default: bool) -> bool:
        return self._get(table, key, bool, default, "true or false")

    def integer(
        self, table: Mapping[str, Any], key: str, default: int, *, low: int, high: int
    ) -> int:
        value = self._get(table, key, int, default, "an integer")
        if not low <= value <= high:
            raise self.error(key, f"is {value}, out of range", f"use {low}..{high}")
        return value

    def number(
        self, table: Mapping[str, Any], key: str, default: float, *, low: float, high: float
    ) -> float:
        value = float(self._get(table, key, (int, float), default, "a number of seconds"))
        if not low <= value <= high:
            raise self.error(key, f"is {value:g}, out of range", f"use {low:g}..{high:g}")
        return value

    def choice(
        self, table: Mapping[str, Any], key: str, options: tuple[str, ...], default: str
    ) -> Any:
        value = self.string(table, key, default)
        if value not in options:
            raise self.error(
                key, f"is {value!r}", f"use one of {', '.join(repr(o) for o in options)}"
            )
        return value

    def host_port(self, key: str, value: str, *, default_port: int | None) -> tuple[str, int]:
        try:
            return parse_host_port(value, key, default_port)
        except ConfigError:
            raise self.error(
                key, f"{value!r} is not HOST:PORT", 'write e.g. "127.0.0.1:53"'
            ) from None

    def string_list(self, table: Mapping[str, Any], key: str) -> tuple[str, ...]:
        value = self._get(table, key, list, [], "a list of strings")
        if not all(isinstance(v, str) and v for v in value):
            raise self.error(key, "must hold only non-empty strings", 'write ["…", "…"]')
        return tuple(value)

    def path(self, table: Mapping[str, Any], key: str, base: Path, default: Path) -> Path:
        text = self.string(table, key, "")
        return _resolve(text, base) if text else default

    def optional_path(self, table: Mapping[str, Any], key: str, base: Path) -> Path | None:
        text = self.string(table, key, "")
        return _resolve(text, base) if text else None


def _resolve(text: str, base: Path) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else (base / p)
