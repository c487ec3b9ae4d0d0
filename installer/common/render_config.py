#!/usr/bin/env python3
"""Render ``agent.toml`` or ``collector.toml`` from installer flags, for every platform.

install.sh (Linux and the .deb's postinst), the macOS pkg's postinstall script and
``install.ps1`` on Windows all call this file with the Python of the virtual environment they
just created, so the TOML a host receives does not depend on which installer wrote it; only
the platform's default locations differ (``--platform``). The Ansible role renders the same
text from a Jinja2 template, and a test proves the two agree byte for byte.

Standard library only (it runs before anything else is importable), Python 3.11+ (``tomllib``
re-parses the output as a self-check). Errors are one line on stderr, exit status 2.

Usage::

    render_config.py agent --collector-url URL --trusted-key ed25519:… [--trusted-key K.pub]
                           [--threshold N] [--mode enforce|monitor] [--dns auto|capture|proxy|off]
                           [--platform linux|macos|windows] [-o FILE]
    render_config.py collector --listen HOST:PORT [--tls-cert F --tls-key F]
                               [--database-url URL] [--trusted-key …] [-o FILE]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import ipaddress
import json
import os
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

__all__ = ["PLATFORMS", "Layout", "render_agent", "render_collector", "toml_string"]


@dataclass(frozen=True)
class Layout:
    """Where a platform keeps the program, its configuration and its state."""

    prefix: str
    conf_dir: str
    state_dir: str
    collector_state_dir: str
    sep: str = "/"

    def conf(self, name: str) -> str:
        return f"{self.conf_dir}{self.sep}{name}"


PLATFORMS: dict[str, Layout] = {
    "linux": Layout(
        prefix="/opt/proscribe",
        conf_dir="/etc/proscribe",
        state_dir="/var/lib/proscribe",
        collector_state_dir="/var/lib/proscribe-collector",
    ),
    # macOS keeps the Linux program and config paths (so the launchd plist runs the same
    # command line as the systemd unit); daemon state lives in /var/db by macOS convention.
    "macos": Layout(
        prefix="/opt/proscribe",
        conf_dir="/etc/proscribe",
        state_dir="/var/db/proscribe",
        collector_state_dir="/var/db/proscribe-collector",
    ),
    "windows": Layout(
        prefix=r"C:\Program Files\Proscribe",
        conf_dir=r"C:\ProgramData\Proscribe",
        state_dir=r"C:\ProgramData\Proscribe\state",
        collector_state_dir=r"C:\ProgramData\Proscribe\collector",
        sep="\\",
    ),
}

_KEY_PREFIX = "ed25519:"


class RenderError(Exception):
    """A flag value the installer cannot turn into a valid config; str() is one line."""


def toml_string(value: str) -> str:
    """A TOML basic string.

    JSON's string escapes (``\\"``, ``\\\\``, ``\\n``, ``\\u00XX``…) are all valid TOML; TOML
    additionally forbids a raw DEL. Using exactly ``json.dumps`` lets the Ansible template
    (``to_json``) produce the same bytes.
    """
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_list(values: Sequence[str]) -> str:
    if not values:
        return "[]"
    if len(values) == 1:
        return f"[{toml_string(values[0])}]"
    inner = "".join(f"    {toml_string(v)},\n" for v in values)
    return f"[\n{inner}]"


def read_trusted_key(value: str) -> str:
    """``ed25519:BASE64`` (alone or with the name ``proscribe keygen`` writes after it), or the
    first line of a ``.pub`` file; checked to be 32 bytes.

    Keys are inlined into the config (rather than referenced by path) so the config alone
    states whom the host trusts and no second file can be swapped underneath it.
    """
    # The whole line of a NAME.pub is accepted too: "ed25519:BASE64 NAME" (keygen's format).
    words = value.split()
    text = words[0] if words else ""
    if not text.startswith(_KEY_PREFIX):
        path = Path(value)
        try:
            lines = path.read_text(encoding="utf-8").split()
        except OSError as err:
            raise RenderError(
                f"--trusted-key {value!r}: neither an 'ed25519:…' key nor a readable .pub file "
                f"({err.strerror or err}) (fix: pass the line from NAME.pub or its path)"
            ) from err
        text = lines[0] if lines else ""
        if not text.startswith(_KEY_PREFIX):
            raise RenderError(
                f"--trusted-key {value}: the file does not start with 'ed25519:' "
                "(fix: pass the NAME.pub written by 'proscribe keygen', never the .key)"
            )
    body = text[len(_KEY_PREFIX) :]
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RenderError(
            f"--trusted-key {value[:40]!r}: not valid base64 (fix: copy the line from NAME.pub)"
        ) from err
    if len(raw) != 32:
        raise RenderError(
            f"--trusted-key {value[:40]!r}: decodes to {len(raw)} bytes, an Ed25519 public key "
            "has 32 (fix: copy the line from NAME.pub)"
        )
    return _KEY_PREFIX + body


def _check_threshold(threshold: int, keys: Sequence[str]) -> None:
    if threshold < 1 or (keys and threshold > len(keys)):
        raise RenderError(
            f"--threshold {threshold}: must be between 1 and the number of --trusted-key "
            f"values ({len(keys)}) (fix: lower --threshold or add keys)"
        )


def _check_url(url: str) -> None:
    if not url.startswith(("https://", "http://")) or len(url.split("://", 1)[1]) == 0:
        raise RenderError(
            f"--collector-url {url!r}: must be an http(s) URL "
            "(fix: e.g. https://collector.example:8443)"
        )


def render_agent(
    *,
    platform: str = "linux",
    mode: str = "enforce",
    trusted_keys: Sequence[str] = (),
    threshold: int = 1,
    collector_url: str | None = None,
    ca_file: str | None = None,
    enroll_secret_file: str | None = None,
    dns: str = "auto",
    dns_proxy_listen: str | None = None,
    process: str = "auto",
    policy_file: str | None = None,
    state_dir: str | None = None,
) -> str:
    """The text of ``agent.toml`` (keys as ``proscribe.agent.config`` reads them)."""
    layout = PLATFORMS[platform]
    keys = [read_trusted_key(k) for k in trusted_keys]
    _check_threshold(threshold, keys)
    lines = [
        "# Proscribe agent configuration, written by the installer",
        "# (installer/common/render_config.py). Keys are described in docs/install.md.",
        "# Re-running the installer keeps this file unless it is given --force-config.",
        "",
        "[agent]",
        f"mode      = {toml_string(mode)}",
        f"state_dir = {toml_string(state_dir or layout.state_dir)}",
        "",
        "[policy]",
        f"file         = {toml_string(policy_file or layout.conf('policy.toml'))}",
        f"trusted_keys = {_toml_list(keys)}",
        f"threshold    = {threshold}",
        "",
    ]
    if collector_url:
        _check_url(collector_url)
        lines += ["[collector]", f"url                = {toml_string(collector_url)}"]
        if ca_file:
            lines.append(f"ca_file            = {toml_string(ca_file)}")
        if enroll_secret_file:
            lines.append(f"enroll_secret_file = {toml_string(enroll_secret_file)}")
        lines.append("")
    lines += [
        "[sensors]",
        f"process = {toml_string(process)}",
        f"dns     = {toml_string(dns)}",
    ]
    if dns in ("auto", "proxy") and dns_proxy_listen:
        lines += ["", "[dns]", f"proxy_listen = {toml_string(dns_proxy_listen)}"]
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)  # self-check: never hand out a file the daemon cannot parse
    return text


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def render_collector(
    *,
    platform: str = "linux",
    listen: str = "127.0.0.1:8443",
    tls_cert: str | None = None,
    tls_key: str | None = None,
    behind_proxy: bool = False,
    database_url: str | None = None,
    trusted_keys: Sequence[str] = (),
    threshold: int = 1,
) -> str:
    """The text of ``collector.toml`` (keys as ``proscribe.collector.config`` reads them)."""
    layout = PLATFORMS[platform]
    if (tls_cert is None) != (tls_key is None):
        raise RenderError("--tls-cert and --tls-key go together (fix: give both or neither)")
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RenderError(f"--listen {listen!r}: must be HOST:PORT (fix: e.g. 127.0.0.1:8443)")
    if tls_cert is None and not behind_proxy and not _is_loopback(host.strip("[]")):
        raise RenderError(
            f"--listen {listen}: plain HTTP is allowed only on loopback (fix: give --tls-cert "
            "and --tls-key, or --behind-proxy when a TLS reverse proxy is in front)"
        )
    keys = [read_trusted_key(k) for k in trusted_keys]
    _check_threshold(threshold, keys)
    if database_url is None:
        db = f"{layout.collector_state_dir}{layout.sep}collector.db"
        database_url = "sqlite:///" + (db if layout.sep == "/" else PureWindowsPath(db).as_posix())
    lines = [
        "# Proscribe collector configuration, written by the installer",
        "# (installer/common/render_config.py). Keys are described in docs/install.md.",
        "",
        "[server]",
        f"listen = {toml_string(listen)}",
    ]
    if tls_cert and tls_key:
        lines += [f"tls_cert = {toml_string(tls_cert)}", f"tls_key  = {toml_string(tls_key)}"]
    if behind_proxy:
        lines.append("behind_proxy = true")
    lines += [
        "",
        "[database]",
        f"url = {toml_string(database_url)}",
        "",
        "[policy]",
        f"trusted_keys = {_toml_list(keys)}",
        f"threshold    = {threshold}",
    ]
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="render_config.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)

    agent = sub.add_parser("agent", help="render agent.toml")
    agent.add_argument("--platform", choices=sorted(PLATFORMS), default="linux")
    agent.add_argument("--mode", choices=("enforce", "monitor"), default="enforce")
    agent.add_argument("--trusted-key", action="append", default=[], dest="trusted_keys")
    agent.add_argument("--threshold", type=int, default=1)
    agent.add_argument("--collector-url")
    agent.add_argument("--ca-file")
    agent.add_argument("--enroll-secret-file")
    agent.add_argument("--dns", choices=("auto", "capture", "proxy", "off"), default="auto")
    agent.add_argument("--dns-proxy-listen")
    agent.add_argument("--process", choices=("auto", "netlink", "poll", "off"), default="auto")
    agent.add_argument("--policy-file")
    agent.add_argument("--state-dir")
    agent.add_argument("-o", "--output", help="write here (atomically, mode 0644); default stdout")

    coll = sub.add_parser("collector", help="render collector.toml")
    coll.add_argument("--platform", choices=sorted(PLATFORMS), default="linux")
    coll.add_argument("--listen", default="127.0.0.1:8443")
    coll.add_argument("--tls-cert")
    coll.add_argument("--tls-key")
    coll.add_argument("--behind-proxy", action="store_true")
    coll.add_argument("--database-url")
    coll.add_argument("--trusted-key", action="append", default=[], dest="trusted_keys")
    coll.add_argument("--threshold", type=int, default=1)
    coll.add_argument("-o", "--output", help="write here (atomically, mode 0644); default stdout")
    return parser


def _write(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    target = Path(output)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.kind == "agent":
            text = render_agent(
                platform=args.platform,
                mode=args.mode,
                trusted_keys=args.trusted_keys,
                threshold=args.threshold,
                collector_url=args.collector_url,
                ca_file=args.ca_file,
                enroll_secret_file=args.enroll_secret_file,
                dns=args.dns,
                dns_proxy_listen=args.dns_proxy_listen,
                process=args.process,
                policy_file=args.policy_file,
                state_dir=args.state_dir,
            )
        else:
            text = render_collector(
                platform=args.platform,
                listen=args.listen,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
                behind_proxy=args.behind_proxy,
                database_url=args.database_url,
                trusted_keys=args.trusted_keys,
                threshold=args.threshold,
            )
        _write(text, args.output)
    except (RenderError, OSError) as err:
        print(f"render_config.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
