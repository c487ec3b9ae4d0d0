"""``kind = "syslog"``: RFC 5424 messages over TCP or TLS, octet-counted (RFC 6587 §3.4.1).

One message per event::

    <PRI>1 TIMESTAMP HOSTNAME proscribe - KIND [proscribe@32473 id="…" rule="…" …] SUMMARY

PRI is ``facility * 8 + severity`` (critical → 2 crit, high → 3 err, medium → 4 warning,
low → 5 notice). The structured-data element carries the event's fields (``SD-PARAM`` names in
docs/integrations.md); values escape ``"``, ``\\`` and ``]`` with a backslash (RFC 5424 §6.3.3).
32473 is the example enterprise number of RFC 5612, since Proscribe has no IANA number of its
own. ``format = "cef"`` puts an ArcSight CEF line in MSG instead (and no structured data).

Delivery: TCP syslog has no acknowledgement. A batch counts as sent when the receiving host's
TCP stack has acknowledged every byte (the socket's unacknowledged send queue, ``TIOCOUTQ``,
drained to 0 on Linux) — not when the receiver wrote it to disk. A receiver that crashes with
received bytes unwritten loses them (RELP would close that gap; see docs/limitations.md).
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import ssl
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from proscribe.collector.forward.base import Unavailable
from proscribe.collector.forward.render import (
    RenderError,
    epoch_seconds,
    joined,
    model_of,
    section,
    summary,
)
from proscribe.collector.forward.settings import ForwardSettings
from proscribe.core import __version__
from proscribe.core.events import Event

SD_ID = "proscribe@32473"
APP_NAME = "proscribe"
SYSLOG_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5}
CEF_SEVERITY = {"critical": 10, "high": 8, "medium": 5, "low": 3}
MAX_MESSAGE = 8192  # rsyslog's default maxMessageSize; longer values are cut to fit
_VALUE_CAPS = (2048, 256, 64)


def _printable(text: str, limit: int) -> str:
    """RFC 5424 header fields are 1*PRINTUSASCII (33-126); others become ``_``."""
    if text and text.isascii() and text.isprintable() and " " not in text:
        return text[:limit]
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in text)[:limit]
    return cleaned or "-"


def _sd_escape(value: str) -> str:
    if "\\" not in value and '"' not in value and "]" not in value:
        return value
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _sd_params(event: Event) -> list[tuple[str, str]]:
    """The event's fields as (SD-PARAM name, value), in a fixed order."""
    host = section(event, "host")
    policy = section(event, "policy")
    process = section(event, "process")
    dns = section(event, "dns")
    file = section(event, "file")
    model = model_of(event)
    cmdline = process.get("cmdline")
    if cmdline is not None and not isinstance(cmdline, list):
        raise RenderError("process.cmdline is not a list")
    pairs: list[tuple[str, Any]] = [
        ("id", event.get("id")),
        ("time", event.get("time")),
        ("kind", event.get("kind")),
        ("rule", event.get("rule")),
        ("action", event.get("action")),
        ("severity", event.get("severity")),
        ("count", event.get("count", 1)),
        ("policy_id", policy.get("id")),
        ("policy_serial", policy.get("serial")),
        ("policy_sha256", policy.get("sha256")),
        ("agent_id", host.get("agent_id")),
        ("hostname", host.get("hostname")),
        ("os", host.get("os")),
        ("pid", process.get("pid")),
        ("ppid", process.get("ppid")),
        ("process_name", process.get("name")),
        ("argv0", process.get("argv0")),
        ("start_time", process.get("start_time")),
        ("exe", process.get("exe")),
        ("cmdline", " ".join(str(a) for a in cmdline) if cmdline else None),
        ("user", process.get("user")),
        ("uid", process.get("uid")),
        ("euid", process.get("euid")),
        ("sha256", process.get("sha256")),
        ("qname", dns.get("qname")),
        ("qtype", dns.get("qtype")),
        ("resolver", dns.get("resolver")),
        ("file_path", file.get("path")),
        ("file_sha256", file.get("sha256")),
        ("file_owner", file.get("owner")),
        ("file_uid", file.get("uid")),
        ("file_size", file.get("size")),
        ("file_mtime", file.get("mtime")),
        ("model_format", model.get("format")),
        ("model_name", model.get("name")),
        ("model_evidence", joined(model.get("evidence"), "; ")),
        ("model_digests", joined(model.get("digests"))),
        ("quarantine", file.get("quarantine")),
        ("detail", event.get("detail")),
    ]
    return [(name, str(value)) for name, value in pairs if value is not None and value != ""]


_RFC5424_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")


def _timestamp(event: Event) -> str:
    """The event's time as RFC 5424 wants it (UTC, at most 6 fractional digits). Stored times
    were checked at ingest; the agent's own ``…sss.mmmZ`` form is already right."""
    from datetime import UTC, datetime

    given = event.get("time")
    if isinstance(given, str) and _RFC5424_TIME.fullmatch(given):
        return given

    moment = datetime.fromtimestamp(epoch_seconds(event), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}Z"


def _header(event: Event, facility: int) -> str:
    severity = SYSLOG_SEVERITY.get(str(event.get("severity")), 5)
    host = section(event, "host")
    return (
        f"<{facility * 8 + severity}>1 {_timestamp(event)} "
        f"{_printable(str(host.get('hostname') or ''), 255)} {APP_NAME} - "
        f"{_printable(str(event.get('kind') or ''), 32)}"
    )


def rfc5424(event: Event, facility: int = 10, max_bytes: int = MAX_MESSAGE) -> bytes:
    """One RFC 5424 message (without the octet count); RenderError if it cannot be made."""
    header = _header(event, facility)
    params = _sd_params(event)
    for cap in _VALUE_CAPS:
        sd = " ".join(
            f'{name}="{_sd_escape(value if len(value) <= cap else value[: cap - 1] + "…")}"'
            for name, value in params
        )
        text = f"{header} [{SD_ID} {sd}] {summary(event)}"
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise RenderError(f"not encodable as UTF-8: {err.reason}") from err
        if len(data) <= max_bytes:
            return data
    raise RenderError(f"longer than {max_bytes} bytes even with values cut")


def _cef_header(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _cef_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("=", "\\=").replace("\n", "\\n").replace("\r", "\\r")


def _millis(epoch: Any) -> int | None:
    if epoch is None:
        return None
    try:
        return int(float(epoch) * 1000)
    except (TypeError, ValueError, OverflowError) as err:
        raise RenderError(f"process.start_time: {err}") from err


def cef_extension(event: Event) -> list[tuple[str, str]]:
    """The CEF extension pairs (the mapping docs/integrations.md shows)."""
    host = section(event, "host")
    policy = section(event, "policy")
    process = section(event, "process")
    dns = section(event, "dns")
    file = section(event, "file")
    model = model_of(event)
    cmdline = process.get("cmdline")
    pairs: list[tuple[str, Any]] = [
        ("rt", int(epoch_seconds(event) * 1000)),
        ("externalId", event.get("id")),
        ("cat", event.get("kind")),
        ("act", event.get("action")),
        ("cs1Label", "rule"),
        ("cs1", event.get("rule")),
        ("cs2Label", "policyId"),
        ("cs2", policy.get("id")),
        ("cn1Label", "policySerial"),
        ("cn1", policy.get("serial")),
        ("flexString2Label", "policySha256"),
        ("flexString2", policy.get("sha256")),
        ("deviceExternalId", host.get("agent_id")),
        ("dvchost", host.get("hostname")),
        ("cs4Label", "os"),
        ("cs4", host.get("os")),
        ("spid", process.get("pid")),
        ("cn2Label", "ppid"),
        ("cn2", process.get("ppid")),
        ("sproc", process.get("name")),
        ("dproc", process.get("argv0")),
        ("flexDate1Label", "processStart"),
        ("flexDate1", _millis(process.get("start_time"))),
        ("cs5Label", "exe"),
        ("cs5", process.get("exe")),
        ("cs6Label", "cmdline"),
        ("cs6", " ".join(str(a) for a in cmdline) if isinstance(cmdline, list) else cmdline),
        ("suser", process.get("user")),
        ("suid", process.get("uid")),
        ("cn3Label", "euid"),
        ("cn3", process.get("euid")),
        ("cs3Label", "processSha256"),
        ("cs3", process.get("sha256")),
        ("fileHash", file.get("sha256")),
        ("fsize", file.get("size")),
        ("fileModificationTime", file.get("mtime")),
        ("proscribeFileOwner", file.get("owner")),
        ("proscribeFileUid", file.get("uid")),
        ("proscribeModelFormat", model.get("format")),
        ("proscribeModelName", model.get("name")),
        ("proscribeModelEvidence", joined(model.get("evidence"), "; ")),
        ("proscribeModelDigests", joined(model.get("digests"))),
        ("proscribeQuarantineId", file.get("quarantine")),
        ("dhost", dns.get("qname")),
        ("flexString1Label", "qtype"),
        ("flexString1", dns.get("qtype")),
        ("dst", dns.get("resolver")),
        ("filePath", file.get("path")),
        ("msg", event.get("detail")),
        ("cnt", event.get("count", 1)),
    ]
    out = [(k, str(v)) for k, v in pairs if v is not None and v != ""]
    # a label without its value is noise
    keys = {k for k, _ in out}
    return [(k, v) for k, v in out if not (k.endswith("Label") and k[: -len("Label")] not in keys)]


def cef(event: Event, facility: int = 10, max_bytes: int = MAX_MESSAGE) -> bytes:
    """An RFC 5424 message whose MSG is a CEF:0 line."""
    rule = str(event.get("rule") or event.get("kind") or "-")
    severity = CEF_SEVERITY.get(str(event.get("severity")), 5)
    head = (
        f"CEF:0|Proscribe|Proscribe|{_cef_header(__version__)}|{_cef_header(rule[:1023])}|"
        f"{_cef_header(summary(event, 512))}|{severity}|"
    )
    pairs = cef_extension(event)
    for cap in _VALUE_CAPS:
        ext = " ".join(
            f"{k}={_cef_value(v if len(v) <= cap else v[: cap - 1] + '…')}" for k, v in pairs
        )
        text = f"{_header(event, facility)} - {head}{ext}"
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise RenderError(f"not encodable as UTF-8: {err.reason}") from err
        if len(data) <= max_bytes:
            return data
    raise RenderError(f"longer than {max_bytes} bytes even with values cut")


def frame(message: bytes) -> bytes:
    """Octet-counting framing (RFC 6587 §3.4.1): ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode() + b" " + message


def _unacknowledged(sock: socket.socket) -> int:
    """Bytes sent but not yet acknowledged by the peer (Linux ``SIOCOUTQ``); 0 elsewhere."""
    if not sys.platform.startswith("linux"):
        return 0
    import fcntl
    import struct
    import termios

    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


class SyslogDestination:
    def __init__(self, settings: ForwardSettings) -> None:
        parts = urlsplit(settings.url)
        self.host = parts.hostname or ""
        self.port = int(parts.port or 0)
        self.tls = parts.scheme == "tls"
        self.settings = settings
        self._render = cef if settings.format == "cef" else rfc5424
        self._sock: socket.socket | None = None
        self._context: ssl.SSLContext | None = None
        if self.tls:
            self._context = ssl.create_default_context(cafile=settings.ca_file)

    def render(self, event: Event) -> bytes:
        return frame(self._render(event, self.settings.facility))

    def _connect(self) -> socket.socket:
        sock = self._sock
        if sock is not None:
            if self._alive(sock):
                return sock
            self.close()
        raw = socket.create_connection((self.host, self.port), timeout=self.settings.timeout)
        if self._context is not None:
            try:
                raw = self._context.wrap_socket(raw, server_hostname=self.host)
            except (OSError, ssl.SSLError):
                raw.close()
                raise
        self._sock = raw
        return raw

    def _alive(self, sock: socket.socket) -> bool:
        """A syslog receiver sends no data: a readable socket has been closed or reset (which
        the next send would find out only after losing a batch) — or, over TLS 1.3, holds
        the server's session tickets, which a non-blocking read consumes."""
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return True
        sock.setblocking(False)
        try:
            return bool(sock.recv(4096))
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(self.settings.timeout)

    def send(self, items: list[bytes]) -> None:
        try:
            sock = self._connect()
            sock.sendall(b"".join(items))
            deadline = time.monotonic() + self.settings.timeout
            while _unacknowledged(sock) > 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("the receiver did not acknowledge the bytes sent")
                time.sleep(0.005)
        except (OSError, ssl.SSLError) as err:
            self.close()
            raise Unavailable(f"syslog {self.host}:{self.port}: {err}") from err

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
