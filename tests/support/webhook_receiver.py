"""A real HTTPS server on loopback receiving the collector's webhook and Splunk HEC requests.

It checks what a real receiver checks, written here from docs/integrations.md and not with the
collector's own code: the ``X-Proscribe-Signature`` HMAC (webhook) or the ``Authorization:
Splunk TOKEN`` header (HEC). Tests script its answers (``script``: status codes to give, in
order, before answering 2xx) and make it refuse bodies containing ``refuse_marker`` with 400,
as a receiver refuses content it cannot take.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.tls_files import self_signed


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it arrived
    status: int
    signature_ok: bool | None


@dataclass
class Behaviour:
    secret: bytes | None = None  # webhook HMAC key to verify
    hec_token: str | None = None  # HEC token to require
    script: list[int] = field(default_factory=list)  # statuses to answer first, in order
    retry_after: str | None = None
    refuse_marker: bytes | None = None


def signature_valid(secret: bytes, body: bytes, header: str, tolerance: float = 300) -> bool:
    """The receiver's check, as docs/integrations.md describes it."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    if not parts.get("t", "").isdigit() or abs(time.time() - int(parts["t"])) > tolerance:
        return False
    mac = hmac.new(secret, parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, parts.get("v1", ""))


class WebhookReceiver:
    def __init__(self, folder: Path, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.requests: list[Request] = []
        self.cert, key = self_signed(folder, "webhook-receiver")
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                status, signature_ok, extra = receiver._answer(self.headers, body)
                with receiver._lock:
                    receiver.requests.append(
                        Request(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            time.monotonic(),
                            status,
                            signature_ok,
                        )
                    )
                reply = json.dumps(extra).encode()
                self.send_response(status)
                if status == 429 and receiver.behaviour.retry_after:
                    self.send_header("Retry-After", receiver.behaviour.retry_after)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/hook"

    def _answer(self, headers: Any, body: bytes) -> tuple[int, bool | None, dict[str, Any]]:
        b = self.behaviour
        signature_ok = None
        if b.secret is not None:
            signature_ok = signature_valid(b.secret, body, headers.get("X-Proscribe-Signature", ""))
            if not signature_ok:
                return 401, False, {"error": "bad signature"}
        if b.hec_token is not None and headers.get("Authorization") != f"Splunk {b.hec_token}":
            return 403, None, {"text": "Invalid token", "code": 4}
        with self._lock:
            scripted = b.script.pop(0) if b.script else None
        if scripted is not None:
            return scripted, signature_ok, {"error": "scripted"}
        if b.refuse_marker is not None and b.refuse_marker in body:
            return 400, signature_ok, {"text": "Invalid data format", "code": 6}
        return 200, signature_ok, {"text": "Success", "code": 0}

    def accepted(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.status == 200]

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
