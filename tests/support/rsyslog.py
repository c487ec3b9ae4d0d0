"""Debian's real ``rsyslogd`` receiving on loopback, for the syslog forwarding tests.

A config written to a temporary folder: ``imtcp`` on a free loopback port (octet-counted and
LF framing both accepted, as rsyslog does by default), every message written by ``omfile`` with
a template of tab-separated parsed fields, so a test sees what rsyslog understood, not just the
bytes. ``rsyslogd -n`` runs in the foreground as our child and is stopped by its pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.support.ports import free_tcp_port

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
FIELDS = ("pri", "timestamp", "hostname", "app", "procid", "msgid", "sd", "msg")
_TEMPLATE = "\\t".join(
    (
        "%pri%",
        "%timereported:::date-rfc3339%",
        "%hostname%",
        "%app-name%",
        "%procid%",
        "%msgid%",
        "%structured-data%",
        "%msg%",
    )
)


def available() -> bool:
    return Path(RSYSLOGD).is_file()


def tls_available() -> bool:
    """rsyslog's OpenSSL network driver (Debian package rsyslog-openssl)."""
    return Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_ossl.so").is_file() or any(
        Path("/usr/lib").glob("*/rsyslog/lmnsd_ossl.so")
    )


@dataclass(frozen=True)
class Received:
    pri: str
    timestamp: str
    hostname: str
    app: str
    procid: str
    msgid: str
    sd: str
    msg: str


class Rsyslog:
    def __init__(
        self, folder: Path, port: int | None = None, tls: tuple[Path, Path] | None = None
    ) -> None:
        """``tls``: (certificate, key) to receive TLS with rsyslog's OpenSSL driver."""
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_tcp_port()
        self.out = folder / "received.log"
        self.conf = folder / "rsyslog.conf"
        self.pidfile = folder / "rsyslogd.pid"
        self.log = folder / "rsyslogd.stderr"
        work = folder / "work"
        work.mkdir(exist_ok=True)
        driver = ""
        imtcp = 'module(load="imtcp")\n'
        if tls is not None:
            cert, key = tls
            driver = (
                f' defaultNetstreamDriver="ossl" defaultNetstreamDriverCAFile="{cert}"'
                f' defaultNetstreamDriverCertFile="{cert}" defaultNetstreamDriverKeyFile="{key}"'
            )
            imtcp = (
                'module(load="imtcp" streamDriver.name="ossl" streamDriver.mode="1" '
                'streamDriver.authMode="anon")\n'
            )
        self.conf.write_text(
            f'global(workDirectory="{work}" maxMessageSize="64k"{driver})\n'
            f"{imtcp}"
            f'template(name="fields" type="string" string="{_TEMPLATE}\\n")\n'
            'ruleset(name="in") {\n'
            f'  action(type="omfile" file="{self.out}" template="fields")\n'
            "}\n"
            f'input(type="imtcp" port="{self.port}" address="127.0.0.1" ruleset="in")\n',
            encoding="utf-8",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.pidfile.unlink(missing_ok=True)
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                stdout=err,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited: {self.log.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("rsyslogd did not listen in time")

    def stop(self) -> None:
        """SIGTERM by pid; rsyslogd writes what it has received before it exits."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def received(self) -> list[Received]:
        if not self.out.exists():
            return []
        lines = self.out.read_text(encoding="utf-8", errors="replace").splitlines()
        out = []
        for line in lines:
            parts = line.split("\t", len(FIELDS) - 1)
            if len(parts) == len(FIELDS):
                out.append(Received(*parts))
        return out

    def __enter__(self) -> Rsyslog:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def sd_params(sd: str) -> dict[str, str]:
    """Parse one RFC 5424 SD-ELEMENT ``[id k="v" …]`` (with its escapes) into a dict."""
    assert sd.startswith("[") and sd.endswith("]"), sd
    params: dict[str, str] = {}
    i = sd.index(" ") + 1 if " " in sd else len(sd) - 1
    while i < len(sd) - 1:
        eq = sd.index("=", i)
        name = sd[i:eq]
        assert sd[eq + 1] == '"', sd[eq:]
        j = eq + 2
        value = []
        while sd[j] != '"':
            if sd[j] == "\\" and sd[j + 1] in '"\\]':
                value.append(sd[j + 1])
                j += 2
            else:
                value.append(sd[j])
                j += 1
        params[name] = "".join(value)
        i = j + 1
        if sd[i] == " ":
            i += 1
    return params
