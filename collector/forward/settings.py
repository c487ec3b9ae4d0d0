"""``[[forward]]`` tables of ``collector.toml``: the schema (pydantic, strict, unknown keys
refused) and the checked settings a forwarder runs with.

::

    [[forward]]
    name       = "siem"                        # [a-z0-9_-], unique; names the cursor
    kind       = "syslog"                      # | "webhook" | "splunk-hec"
    url        = "tls://siem.example:6514"     # syslog: tcp:// or tls://; others: https://
    format     = "rfc5424"                     # syslog: rfc5424|cef; webhook: json|slack|teams|ecs;
                                               # splunk-hec: json|ecs
    ca_file    = "/etc/proscribe/siem-ca.pem"  # trust for tls:// and https:// (default: system)
    secret_file = "/etc/proscribe/hook.key"    # webhook: HMAC key; splunk-hec: the HEC token
    min_severity = "low"                       # events below are skipped (counted, not sent)
    batch_size = 100                           # events per request (1-500)
    rate       = 5.0                           # requests per second at most, to this destination
    retry_max  = 300                           # seconds: the longest wait between retries
    timeout    = 10                            # seconds per connection/request
    start      = "beginning"                   # a new forwarder: "beginning" | "now"
    facility   = 10                            # syslog facility (10: authpriv)
    lease      = 30                            # seconds a replica that died keeps this
                                               # destination before another replica takes over
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from proscribe.core.events import SEVERITIES
from proscribe.core.netaddr import is_loopback

KINDS = ("syslog", "webhook", "splunk-hec")
FORMATS = {
    "syslog": ("rfc5424", "cef"),
    "webhook": ("json", "slack", "teams", "ecs"),
    "splunk-hec": ("json", "ecs"),
}
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
MIN_SECRET_BYTES = 16


class ForwardProblem(ValueError):
    """A rule between a table's keys, broken; ``key`` is the one to fix."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


class ForwardFile(BaseModel):
    """One ``[[forward]]`` table."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    kind: Literal["syslog", "webhook", "splunk-hec"]
    url: str
    format: str = ""
    ca_file: str = ""
    secret_file: str = ""
    min_severity: Literal["low", "medium", "high", "critical"] = "low"
    batch_size: Annotated[int, Field(ge=1, le=500)] = 100
    rate: Annotated[float, Field(gt=0, le=1000)] = 5.0
    retry_max: Annotated[float, Field(ge=1, le=3600)] = 300.0
    timeout: Annotated[float, Field(gt=0, le=300)] = 10.0
    start: Literal["beginning", "now"] = "beginning"
    facility: Annotated[int, Field(ge=0, le=23)] = 10
    lease: Annotated[float, Field(ge=2, le=3600)] = 30.0

    @model_validator(mode="after")
    def _rules(self) -> ForwardFile:
        formats = FORMATS[self.kind]
        if self.format and self.format not in formats:
            raise ForwardProblem("format", f"{self.format!r} is not a format of kind {self.kind!r}")
        parts = urlsplit(self.url)
        schemes = ("tcp", "tls") if self.kind == "syslog" else ("https", "http")
        if parts.scheme not in schemes or not parts.hostname:
            raise ForwardProblem("url", f"must be {' or '.join(s + '://HOST' for s in schemes)}")
        try:
            port = parts.port
        except ValueError as err:
            raise ForwardProblem("url", f"bad port: {err}") from err
        if self.kind == "syslog" and (port is None or parts.path not in ("", "/")):
            raise ForwardProblem("url", "must be tcp://HOST:PORT or tls://HOST:PORT")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise ForwardProblem("url", "plain http:// is allowed to loopback only")
        if self.kind == "splunk-hec" and not self.secret_file:
            raise ForwardProblem("secret_file", "splunk-hec needs the HEC token in secret_file")
        if self.kind == "syslog" and self.secret_file:
            raise ForwardProblem("secret_file", "syslog has no secret (use tls:// and ca_file)")
        if self.ca_file and parts.scheme in ("tcp", "http"):
            raise ForwardProblem("ca_file", f"ca_file needs tls:// or https://, not {parts.scheme}")
        return self


_FIXES = {
    "name": "lower-case letters, digits, '-' and '_', unique among [[forward]] tables",
    "kind": 'one of "syslog", "webhook", "splunk-hec"',
    "url": "syslog: tcp://HOST:PORT or tls://HOST:PORT; webhook/splunk-hec: https://HOST/PATH",
    "format": "syslog: rfc5424|cef; webhook: json|slack|teams|ecs; splunk-hec: json|ecs",
    "secret_file": "a file (mode 0600) holding the HMAC key or HEC token, 16 bytes or more",
    "ca_file": "the PEM certificate(s) of the CA that signed the destination's certificate",
    "min_severity": f"one of {', '.join(SEVERITIES)}",
    "batch_size": "1 to 500",
    "rate": "requests per second, more than 0",
    "retry_max": "seconds, 1 to 3600",
    "timeout": "seconds, more than 0",
    "start": '"beginning" (send every stored event) or "now"',
    "facility": "0 to 23 (10: authpriv, 13: log audit, 16-23: local0-local7)",
    "lease": "seconds, 2 to 3600: how long a dead replica keeps the destination",
}


def fix_for(key: str) -> str:
    return _FIXES.get(key, "see docs/integrations.md")


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    """A checked ``[[forward]]`` table (the secret read, paths resolved)."""

    name: str
    kind: str
    url: str
    format: str
    ca_file: str | None = None
    secret: bytes | None = field(default=None, repr=False)
    min_severity: str = "low"
    batch_size: int = 100
    rate: float = 5.0
    retry_max: float = 300.0
    timeout: float = 10.0
    start: str = "beginning"
    facility: int = 10
    lease: float = 30.0

    @property
    def min_rank(self) -> int:
        return SEVERITIES.index(self.min_severity)


def default_format(kind: str) -> str:
    return FORMATS[kind][0]


def valid_name(name: str) -> bool:
    return re.match(NAME_PATTERN, name) is not None
