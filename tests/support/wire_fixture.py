"""Record what an agent of this version sends the collector, for the upgrade tests.

``python -m tests.support.wire_fixture tests/data/wire/agent-VERSION.json`` runs the agent's
real transport (``agent/reporter/transport.py``: its JSON encoding, gzip and signing) against a
loopback server that only records, and writes the requests byte for byte: enroll, an event
batch of every kind (gzip), a heartbeat and a policy fetch, signed at a fixed time with a key
made for the recording (only its public half is kept). ``tests/integration/test_upgrade_wire.py``
replays every such file against the current collector on a clock set to the recording time.
Record one file per release, before changing the wire format.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proscribe.agent.reporter.reporter import EVENTS_PATH, HEARTBEAT_PATH, POLICY_PATH
from proscribe.agent.reporter.transport import Transport
from proscribe.core import __version__
from proscribe.core.events import new_event
from proscribe.core.policy.keys import public_key_string
from proscribe.core.wire.auth import sign_request

RECORDED_AT = 1_764_750_000.0  # 2025-12-03T08:20:00Z
AGENT_ID = "0123456789abcdef0123456789abcdef"
SECRET = "wire-fixture-enroll-secret"
KEPT_HEADERS = ("content-type", "content-encoding", "if-none-match")


def _events() -> list[dict[str, Any]]:
    host = {"agent_id": AGENT_ID, "hostname": "ws-old", "os": "linux"}
    policy = {"id": "us-navy-deepseek-2025", "serial": 2, "sha256": "ab" * 32}
    common: dict[str, Any] = {"policy": policy, "host": host}
    from datetime import UTC, datetime

    now = datetime.fromtimestamp(RECORDED_AT - 60, UTC)
    return [
        new_event(
            "process",
            rule="deepseek-desktop",
            action="killed",
            process={
                "pid": 4242,
                "ppid": 1,
                "name": "deepseek",
                "exe": "/opt/deepseek/deepseek",
                "cmdline": ["deepseek", "--chat"],
                "user": "alice",
                "uid": 1000,
                "euid": 1000,
                "sha256": "cd" * 32,
            },
            now=now,
            **common,
        ),
        new_event(
            "dns",
            rule="deepseek-web",
            action="sinkholed",
            dns={"qname": "chat.deepseek.com", "qtype": "A", "resolver": "127.0.0.53"},
            now=now,
            **common,
        ),
        new_event(
            "file",
            rule="deepseek-files",
            action="reported",
            severity="medium",
            file={"path": "/home/alice/DeepSeek.AppImage"},
            now=now,
            **common,
        ),
        new_event(
            "model",
            rule="deepseek-weights",
            action="quarantined",
            file={
                "path": "/home/alice/models/deepseek-r1.gguf",
                "owner": "alice",
                "uid": 1000,
                "size": 4_920_000_000,
                "mtime": "2025-12-01T10:00:00Z",
                "sha256": "ef" * 32,
                "model": {
                    "format": "gguf",
                    "name": "DeepSeek-R1-Distill-Qwen-7B",
                    "evidence": ["GGUF general.name = DeepSeek-R1-Distill-Qwen-7B"],
                    "digests": ["sha256:" + "ef" * 32],
                },
                "quarantine": "q-20251203-0001",
            },
            now=now,
            **common,
        ),
        new_event("tamper", rule=None, action="reported", detail="policy file edited", now=now),
        new_event("health", rule=None, action="failed", severity="low", detail="x", now=now),
    ]


def record(out: Path) -> None:
    key = Ed25519PrivateKey.generate()
    requests: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _record(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() in KEPT_HEADERS or k.lower().startswith("x-proscribe")
            }
            requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": headers,
                    "body_b64": base64.b64encode(body).decode(),
                }
            )
            reply = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_GET = _record
        do_POST = _record

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        transport = Transport(f"http://127.0.0.1:{server.server_address[1]}")

        def signer(method: str, path: str, body: bytes) -> dict[str, str]:
            return sign_request(key, AGENT_ID, method, path, body, now=RECORDED_AT)

        transport.post_json(
            "/api/v1/enroll",
            {
                "secret": SECRET,
                "hostname": "ws-old",
                "os": "linux",
                "agent_version": __version__,
                "public_key": public_key_string(key.public_key()),
            },
        )
        transport.post_json(EVENTS_PATH, {"events": _events()}, signer=signer, compress=True)
        # the payload agent/heartbeat.py builds (its keys and shapes)
        transport.post_json(
            HEARTBEAT_PATH,
            {
                "agent_version": __version__,
                "hostname": "ws-old",
                "os": "linux",
                "mode": "enforce",
                "policy": {
                    "id": "us-navy-deepseek-2025",
                    "serial": 2,
                    "sha256": "ab" * 32,
                    "expires": None,
                    "stale": False,
                },
                "sensors": {"process": "netlink", "dns": "capture"},
                "spool": {"depth": 0, "bytes": 0, "dropped": 0},
                "time": "2025-12-03T08:20:00+00:00",
            },
            signer=signer,
        )
        transport.get(POLICY_PATH, signer=signer)
        transport.close()
    finally:
        server.shutdown()
        server.server_close()
    fixture = {
        "agent_version": __version__,
        "recorded_at": RECORDED_AT,
        "agent_id": AGENT_ID,
        "public_key": public_key_string(key.public_key()),
        "enroll_secret": SECRET,
        "requests": requests,
    }
    out.write_text(json.dumps(fixture, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    record(Path(sys.argv[1]))
