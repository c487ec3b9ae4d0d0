"""Forwarding throughput: stored events drained by a forwarder to Debian's rsyslogd (syslog over
TCP, RFC 5424) and to a local HTTPS webhook receiver (signed JSON batches), events per second.

Peers measured in the same run: the same rsyslogd fed pre-rendered frames over one socket
(no database, no rendering: the transport's ceiling), and the forwarder's database reads plus
rendering alone (destination that discards). Medians of 3 runs of 20,000 events, SQLite,
batch_size 500, rate unlimited (1000/s).

Run: ``.venv/bin/python -m bench.forward``
"""

from __future__ import annotations

import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from proscribe.collector.config import settings_from_mapping
from proscribe.collector.forward.render import parse_body
from proscribe.collector.forward.runner import Forwarder
from proscribe.collector.forward.syslog import SyslogDestination
from proscribe.collector.storage import open_database, upgrade
from proscribe.collector.storage.events import insert_events
from tests.support.clock import ManualClock
from tests.support.forward_env import event_rows
from tests.support.rsyslog import Rsyslog
from tests.support.webhook_receiver import Behaviour, WebhookReceiver

N = 20_000
RUNS = 3


class Discard:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def render(self, event: Any) -> Any:
        return self.inner.render(event)

    def send(self, items: list[Any]) -> None:
        pass

    def close(self) -> None:
        pass


def drain(db: Any, table: dict[str, Any], name: str, discard: bool = False) -> float:
    settings = settings_from_mapping({"forward": [{**table, "name": name}]}).forwards[0]
    forwarder = Forwarder(db, settings, owner="bench", clock=ManualClock())
    if discard:
        forwarder.destination = Discard(forwarder.destination)
    start = time.perf_counter()
    while forwarder.run_round() == 0.0:
        pass
    elapsed = time.perf_counter() - start
    forwarder.destination.close()
    assert forwarder.store.cursor() >= N, "not drained"
    return N / elapsed


def raw_send(port: int, bodies: list[str]) -> float:
    dest = SyslogDestination(
        settings_from_mapping(
            {"forward": [{"name": "raw", "kind": "syslog", "url": f"tcp://127.0.0.1:{port}"}]}
        ).forwards[0]
    )
    frames = [dest.render(parse_body(b)) for b in bodies]
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for i in range(0, len(frames), 500):
            sock.sendall(b"".join(frames[i : i + 500]))
    return len(frames) / (time.perf_counter() - start)


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-forward-"))
    db = open_database(f"sqlite:///{folder / 'c.db'}")
    upgrade(db)
    rows = event_rows(N)
    with db.write() as conn:
        insert_events(conn, rows)
    bodies = [r["body"] for r in rows]
    results: dict[str, list[float]] = {}
    with Rsyslog(folder / "rsyslog") as receiver:
        syslog = {
            "kind": "syslog",
            "url": f"tcp://127.0.0.1:{receiver.port}",
            "batch_size": 500,
            "rate": 1000.0,
        }
        for run in range(RUNS):
            results.setdefault("forwarder -> rsyslog", []).append(drain(db, syslog, f"s{run}"))
            results.setdefault("read + render only (discard)", []).append(
                drain(db, syslog, f"d{run}", discard=True)
            )
            results.setdefault("pre-rendered frames -> rsyslog (peer)", []).append(
                raw_send(receiver.port, bodies)
            )
    secret = folder / "hook.key"
    secret.write_bytes(b"bench-secret-0123456789")
    os.chmod(secret, 0o600)
    with WebhookReceiver(folder, Behaviour(secret=b"bench-secret-0123456789")) as hook:
        table = {
            "kind": "webhook",
            "url": hook.url,
            "ca_file": str(hook.cert),
            "secret_file": str(secret),
            "batch_size": 500,
            "rate": 1000.0,
        }
        for run in range(RUNS):
            results.setdefault("forwarder -> HTTPS webhook (json, signed)", []).append(
                drain(db, table, f"w{run}")
            )
    db.dispose()
    print(f"forwarding {N} stored events (SQLite, batch 500), events/s, median of {RUNS}:")
    peer = statistics.median(results["pre-rendered frames -> rsyslog (peer)"])
    for label, values in results.items():
        median = statistics.median(values)
        print(f"  {label:45} {median:10,.0f}   {median / peer:5.2f}x peer")
    print(f"  (load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
