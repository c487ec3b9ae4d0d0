"""The collector's heartbeat path in-process, without HTTP: signed heartbeats handed straight to
the ASGI app (its real middlewares, route and PostgreSQL flusher), ``--concurrency`` at a time.
Prints the process's CPU per heartbeat (ms, median of rounds), and the same with each of the
collector's own middlewares taken out, to show what each costs (or, for the heartbeat
fast path, saves).

    .venv/bin/python -m bench.heartbeat_asgi [--agents 500] [--rounds 5] [--concurrency 1,20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
import uuid
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import insert

from proscribe.collector.app import create_app
from proscribe.collector.config import settings_from_mapping
from proscribe.collector.storage import open_database, upgrade
from proscribe.collector.storage.tables import agents
from proscribe.core.policy.keys import public_key_string
from proscribe.core.wire.auth import sign_request
from tests.support.postgres import throwaway_database
from tests.support.simulate import heartbeat_body

PATH = "/api/v1/heartbeat"
VARIANTS = (
    "all",
    "-HeartbeatFastPath",
    "-ResponseGuard",
    "-_NoncePurgeMiddleware",
    "-MetricsMiddleware",
)


def _fleet(url: str, n: int) -> list[tuple[str, Ed25519PrivateKey]]:
    db = open_database(url)
    upgrade(db)
    fleet = [(uuid.uuid4().hex, Ed25519PrivateKey.generate()) for _ in range(n)]
    with db.write() as conn:
        conn.execute(
            insert(agents),
            [
                {
                    "agent_id": a,
                    "public_key": public_key_string(k.public_key()),
                    "hostname": f"ws-{i}",
                    "os": "linux",
                    "agent_version": "0.1.0",
                    "enrolled_us": 0,
                }
                for i, (a, k) in enumerate(fleet)
            ],
        )
    db.dispose()
    return fleet


async def _call(app: Any, agent_id: str, key: Ed25519PrivateKey, body: bytes) -> int:
    signed = sign_request(key, agent_id, "POST", PATH, body)
    headers = [(k.lower().encode(), v.encode()) for k, v in signed.items()]
    headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": PATH, "raw_path": PATH.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8080), "app": app,
    }  # fmt: skip
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(scope, receive, send)
    return status


async def _measure(
    url: str, fleet: list[tuple[str, Ed25519PrivateKey]], rounds: int, width: int
) -> dict[str, float]:
    """Every variant's app at once, their passes interleaved round by round (so the machine's
    load and the tables' growth fall on all alike); the median CPU per heartbeat of each."""
    settings = settings_from_mapping({"database": {"url": url}})
    bodies = [json.dumps(heartbeat_body(f"ws-{i}")).encode() for i in range(len(fleet))]
    apps: dict[str, Any] = {}
    for variant in VARIANTS:
        app = create_app(settings, migrate=False)
        if variant != "all":
            app.user_middleware = [
                m for m in app.user_middleware if getattr(m.cls, "__name__", "") != variant[1:]
            ]
        apps[variant] = app

    async def pass_over(app: Any) -> None:
        for start in range(0, len(fleet), width):
            chunk = range(start, min(start + width, len(fleet)))
            codes = await asyncio.gather(
                *(_call(app, fleet[i][0], fleet[i][1], bodies[i]) for i in chunk)
            )
            assert set(codes) == {200}, codes

    per: dict[str, list[float]] = {v: [] for v in VARIANTS}
    async with contextlib.AsyncExitStack() as stack:
        for app in apps.values():
            await stack.enter_async_context(app.router.lifespan_context(app))
            await pass_over(app)  # warm: keys cached, host rows exist, statements prepared
        for _ in range(rounds):
            for variant, app in apps.items():
                cpu = time.process_time()
                await pass_over(app)
                per[variant].append((time.process_time() - cpu) / len(fleet) * 1000)
    return {v: statistics.median(ms) for v, ms in per.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,20")
    args = parser.parse_args()
    with throwaway_database("proscribe_hbasgi") as url:
        fleet = _fleet(url, args.agents)
        for width in (int(c) for c in args.concurrency.split(",")):
            medians = asyncio.run(_measure(url, fleet, args.rounds, width))
            base = medians["all"]
            for variant, ms in medians.items():
                print(
                    f"concurrency {width:3d}, middlewares {variant:24s}: "
                    f"{ms:.3f} ms CPU/heartbeat ({ms / base:.2f}x)"
                )


if __name__ == "__main__":
    main()
