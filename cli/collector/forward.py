"""``proscribe collector forward status``: each ``[[forward]]`` destination's cursor, lag,
counts, last error and which replica forwards it, read from the shared database.
``forward test NAME``: send one synthetic event to a destination now, to check its address,
trust, secret and format before relying on it (nothing is stored, no cursor moves)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from proscribe.cli.collector.common import add_config_argument, open_migrated, settings_from_args
from proscribe.core.errors import ProscribeError, UsageError


class DeliveryFailed(ProscribeError):
    """The destination did not take the test event."""

    exit_code = 1


def register(verbs: Any) -> None:
    forward = verbs.add_parser("forward", help="forwarding to syslog, webhooks and Splunk HEC")
    actions = forward.add_subparsers(dest="action", metavar="ACTION")
    status = actions.add_parser(
        "status", help="lag, counts, last error and recent dead letters of each destination"
    )
    status.add_argument("--json", action="store_true")
    add_config_argument(status)
    status.set_defaults(func=forward_status)
    test = actions.add_parser(
        "test", help="send one synthetic event to a destination now (nothing stored)"
    )
    test.add_argument("name", help="the [[forward]] table's name")
    add_config_argument(test)
    test.set_defaults(func=forward_test)

    def usage(_args: argparse.Namespace) -> int:
        forward.print_help(sys.stderr)
        return 2

    forward.set_defaults(func=usage)


def _when(us: int | None) -> str:
    if not us:
        return "never"
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def forward_status(args: argparse.Namespace) -> int:
    from proscribe.collector.forward.status import forward_status as read_status
    from proscribe.collector.forward.status import recent_dead_letters

    settings = settings_from_args(args)
    db = open_migrated(settings)
    with db.read() as conn:
        statuses = read_status(conn, settings.forwards, int(time.time() * 1e6))
        dead = recent_dead_letters(conn, 10)
    db.dispose()
    if args.json:
        print(json.dumps({"forwarders": [s.as_dict() for s in statuses], "dead_letters": dead}))
        return 0
    if not statuses:
        print(f"no [[forward]] tables in {settings.source}")
        return 0
    for s in statuses:
        state = "failing" if s.last_error else ("not started" if not s.started else "ok")
        print(f"{s.name} ({s.kind}, {s.format}) -> {s.destination}: {state}")
        if not s.configured:
            print("  no longer in the config: its cursor is kept, nothing is sent")
        print(
            f"  lag {s.lag_events} events ({s.lag_seconds:.0f} s); sent {s.sent}, "
            f"skipped {s.skipped}, dead letters {s.dead_letters}; cursor seq {s.cursor_seq}"
        )
        print(
            f"  last sent {_when(s.last_sent_us)}; forwarded by {s.lease_owner or 'no replica now'}"
        )
        if s.last_error:
            print(f"  last error at {_when(s.last_error_us)}: {s.last_error}")
    if dead:
        print("recent dead letters:")
        for d in dead:
            print(f"  {_when(d['time_us'])} {d['forwarder']} event {d['event_id']}: {d['reason']}")
    return 0


def forward_test(args: argparse.Namespace) -> int:
    from proscribe.collector.forward.base import Refused, Unavailable, redact_url
    from proscribe.collector.forward.runner import make_destination
    from proscribe.core.events import new_event

    settings = settings_from_args(args)
    chosen = [f for f in settings.forwards if f.name == args.name]
    if not chosen:
        names = ", ".join(f.name for f in settings.forwards) or "none"
        raise UsageError(
            f"{settings.source}: no [[forward]] table named {args.name!r} (fix: one of {names})"
        )
    forward = chosen[0]
    event = new_event(
        "health",
        rule=None,
        action="reported",
        severity="critical",  # above any min_severity
        host={"agent_id": "forward-test", "hostname": "proscribe-collector", "os": "linux"},
        detail=f"proscribe collector forward test {forward.name}: ignore",
    )
    destination = make_destination(forward)
    try:
        destination.send([destination.render(event)])
    except (Unavailable, Refused) as err:
        raise DeliveryFailed(f"forward test {forward.name}: {err}") from err
    finally:
        destination.close()
    print(
        f"sent a test event (id {event['id']}) to {forward.name} "
        f"({forward.kind}, {forward.format}) at {redact_url(forward.url)}"
    )
    return 0
