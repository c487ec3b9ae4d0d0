"""A real loopback HTTP(S) server playing the collector's agent API (docs: notes/apis.md).

It verifies request signatures with the same code the collector uses, deduplicates events by id
(counting duplicate sends), and can be told to misbehave: 413 above a batch size, scripted
statuses (400, 503 + Retry-After, …), a lost acknowledgement, forgetting or revoking agents.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from proscribe.core.policy.keys import parse_public_key
from proscribe.core.wire.auth import H_AGENT, AuthFailure, verify_request


@dataclass
class Logged:
    method: str
    path: str
    status: int
    n_events: int = 0
    gzip: bool = False
    at: float = field(default_factory=time.monotonic)
    headers: dict[str, str] = field(default_factory=dict)


class CollectorDouble:
    def __init__(self, secret: str = "s3cret", tls: ssl.SSLContext | None = None) -> None:
        self.secret = secret
        self.tls = tls
        self.lock = threading.Lock()
        self.agents: dict[str, Ed25519PublicKey] = {}
        self.public_keys: list[str] = []
        self.revoked: set[str] = set()
        self.events: dict[str, dict[str, Any]] = {}
        self.store_count: dict[str, int] = {}
        self.duplicates = 0
        self.log: list[Logged] = []
        self.heartbeats: list[dict[str, Any]] = []
        # What the heartbeat answer names as the interval (None: absent, an older collector's).
        self.heartbeat_interval: object = None
        self.max_batch: int | None = None
        self.too_large_ids: set[str] = set()
        self.reject_ids: set[str] = set()
        self.script: dict[str, list[tuple[int, dict[str, str], dict[str, Any]]]] = {}
        self.lose_ack_once = False
        self.policy: tuple[bytes, bytes] | None = None
        # When set: an events batch is stored, then the answer waits for ``release_events``.
        self.hold_events = False
        self.events_received = threading.Event()
        self.release_events = threading.Event()
        self.handled = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifetime -------------------------------------------------------------------------

    def start(self, port: int = 0) -> CollectorDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                double._handle(self, "GET")

            def do_POST(self) -> None:
                double._handle(self, "POST")

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def event_posts(self) -> list[Logged]:
        with self.lock:
            return [entry for entry in self.log if entry.path == "/api/v1/events"]

    # -- request handling -------------------------------------------------------------------

    def _reply(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        h.send_response(status)
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        with self.lock:
            self.handled += 1
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        zipped = h.headers.get("Content-Encoding") == "gzip"
        body = gzip.decompress(raw) if zipped else raw
        entry = Logged(method, h.path, 0, gzip=zipped, headers=dict(h.headers.items()))
        status, payload, headers = self._route(h, method, raw, body, entry)
        entry.status = status
        with self.lock:
            self.log.append(entry)
        if status == -1:  # a lost acknowledgement: the connection just drops
            h.close_connection = True
            return
        self._reply(h, status, payload, headers)

    def _route(
        self, h: BaseHTTPRequestHandler, method: str, raw: bytes, body: bytes, entry: Logged
    ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        path = h.path
        with self.lock:
            queue = self.script.get(path)
            if queue:  # scripted answers: (status, headers, body)
                status, headers, payload = queue.pop(0)
                return status, payload, headers
        if path == "/api/v1/enroll" and method == "POST":
            doc = json.loads(body)
            if doc.get("secret") != self.secret:
                return 401, {"error": "bad_secret"}, {}
            agent_id = str(uuid.uuid4())
            with self.lock:
                self.agents[agent_id] = parse_public_key(doc["public_key"])
                self.public_keys.append(doc["public_key"])
            return 200, {"agent_id": agent_id}, {}
        agent_id = h.headers.get(H_AGENT, "")
        with self.lock:
            if agent_id in self.revoked:
                return 401, {"error": "revoked_agent"}, {}
            key = self.agents.get(agent_id)
        if key is None:
            return 401, {"error": "unknown_agent"}, {}
        try:
            verify_request(key, dict(h.headers.items()), method, path, raw)
        except AuthFailure as err:
            return 401, {"error": "bad_signature", "detail": str(err)}, {}
        if path == "/api/v1/events" and method == "POST":
            return self._events(json.loads(body)["events"], entry)
        if path == "/api/v1/heartbeat" and method == "POST":
            with self.lock:
                self.heartbeats.append(json.loads(body))
            sha = hashlib.sha256(self.policy[0]).hexdigest() if self.policy else None
            answer: dict[str, Any] = {
                "server_time": "now",
                "policy": {"serial": None, "sha256": sha},
            }
            if self.heartbeat_interval is not None:
                answer["heartbeat_interval"] = self.heartbeat_interval
            return 200, answer, {}
        if path == "/api/v1/policy" and method == "GET":
            if self.policy is None:
                return 404, {"error": "no_policy"}, {}
            data, sig = self.policy
            sha = hashlib.sha256(data).hexdigest()
            if h.headers.get("If-None-Match") == f'"{sha}"':
                return 304, None, {"ETag": f'"{sha}"'}
            doc = {
                "policy": base64.b64encode(data).decode(),
                "signature": base64.b64encode(sig).decode(),
                "serial": 1,
                "sha256": sha,
            }
            return 200, doc, {"ETag": f'"{sha}"'}
        return 404, {"error": "not_found"}, {}

    def _events(
        self, events: list[dict[str, Any]], entry: Logged
    ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        entry.n_events = len(events)
        ids = [e["id"] for e in events]
        if (self.max_batch is not None and len(events) > self.max_batch) or (
            self.too_large_ids & set(ids)
        ):
            return 413, {"error": "too_large"}, {}
        results = []
        with self.lock:
            for event in events:
                eid = event["id"]
                if eid in self.reject_ids:
                    results.append({"id": eid, "status": "rejected", "error": "bad field"})
                elif eid in self.events:
                    self.duplicates += 1
                    results.append({"id": eid, "status": "duplicate", "error": None})
                else:
                    self.events[eid] = event
                    results.append({"id": eid, "status": "stored", "error": None})
            if self.lose_ack_once:
                self.lose_ack_once = False
                return -1, None, {}
            hold = self.hold_events
        if hold:
            self.events_received.set()
            self.release_events.wait(30)
        return 200, {"results": results}, {}
