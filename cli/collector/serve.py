"""``proscribe collector serve`` and ``proscribe collector migrate``."""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys
from typing import Any

from proscribe.cli.collector.common import add_config_argument, open_migrated, settings_from_args
from proscribe.collector.config import CollectorSettings
from proscribe.core.errors import ConfigError

log = logging.getLogger(__name__)


def register(verbs: Any) -> None:
    serve = verbs.add_parser("serve", help="run the collector (uvicorn; TLS when configured)")
    add_config_argument(serve)
    serve.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    serve.set_defaults(func=run_serve)

    migrate = verbs.add_parser("migrate", help="apply database migrations and exit")
    add_config_argument(migrate)
    migrate.set_defaults(func=run_migrate)


def bind_listener(settings: CollectorSettings) -> socket.socket:
    """Bind before uvicorn does, so 'port in use' is one clear line (exit 2), not a traceback."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"{settings.source}: server.listen {settings.host}:{settings.port}: port already "
                "in use (fix: stop the other process or choose another port)"
            ) from err
        raise ConfigError(
            f"{settings.source}: server.listen {settings.host}:{settings.port}: cannot bind: "
            f"{err.strerror} (fix: use a local address and a free port)"
        ) from err
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


# An idle connection's life, in seconds. Behind a proxy that reuses its replica connections
# (haproxy's http-reuse), the replica must not be the one to close an idle connection: a request
# the proxy sends on it at that moment is lost (a 502; seen once in the fleet bench's 1,000
# ingest batches with uvicorn's 5 s). The proxy closes idle connections long before this
# (haproxy purges its idle pool every pool-purge-delay, 5 s by default). Agents that connect
# directly keep uvicorn's 5 s.
PROXY_KEEP_ALIVE_S = 300
DIRECT_KEEP_ALIVE_S = 5


def keep_alive_seconds(behind_proxy: bool) -> int:
    return PROXY_KEEP_ALIVE_S if behind_proxy else DIRECT_KEEP_ALIVE_S


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from proscribe.collector.app import create_app

    settings = settings_from_args(args)
    db = open_migrated(settings)
    sock = bind_listener(settings)
    app = create_app(settings, database=db, migrate=False)
    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        proxy_headers=settings.behind_proxy,
        forwarded_allow_ips="127.0.0.1,::1" if settings.behind_proxy else None,
        server_header=False,
        access_log=args.log_level == "debug",
        timeout_graceful_shutdown=10,
        timeout_keep_alive=keep_alive_seconds(settings.behind_proxy),
    )
    server = uvicorn.Server(config)
    scheme = "https" if settings.tls else "http"
    print(
        f"proscribe collector listening on {scheme}://{settings.host}:{settings.port} "
        f"({db.dialect})",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        db.dispose()
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    from proscribe.collector.storage.migrate import head_revision

    settings = settings_from_args(args)
    db = open_migrated(settings)
    db.dispose()
    print(f"database at revision {head_revision()}")
    return 0
