"""``proscribe collector report --since 30d --format html|json|csv``.

One generator (:func:`proscribe.collector.web.report.build_report`) behind the dashboard's
report page, its downloads and this command: ``html`` is the printable report (self-contained
file), ``json`` the same report as data (headline, every host's compliance state, coverage over
the period with its gaps, policy and signers, every violation; ISO 8601 times), ``csv`` every
violation of the report. ``--group`` scopes it to an inventory group. With ``--host``/``--rule``
the json and csv are a filtered violations export instead (``FORMATS``).

``--since/--until/--host/--rule`` go through the same filter parser as the API and the
dashboard (:mod:`proscribe.collector.filters`): a bad value is one line naming the option, exit
2. The escaping is every export's (formula-safe, visible control characters; ASCII JSON).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from proscribe.cli.collector.common import add_config_argument, open_migrated, settings_from_args
from proscribe.core.errors import UsageError

DEFAULT_PERIOD_S = 30 * 86_400
Renderer = Callable[[Iterable[dict[str, Any]], dict[str, Any]], Iterator[str]]


def _json(events: Iterable[dict[str, Any]], meta: dict[str, Any]) -> Iterator[str]:
    from proscribe.collector.literal import safe_json_stream

    return safe_json_stream({**meta, "violations": None}, "violations", events, indent=1)


def _csv(events: Iterable[dict[str, Any]], _meta: dict[str, Any]) -> Iterator[str]:
    from proscribe.collector.csvexport import iter_violations_csv

    return iter_violations_csv(events)


FORMATS: dict[str, Renderer] = {"json": _json, "csv": _csv}


def register(verbs: Any) -> None:
    parser = verbs.add_parser(
        "report", help="compliance report (html) or violations (json, csv) over a period"
    )
    parser.add_argument("--since", default="30d", help="e.g. 30d, 12h, or an RFC 3339 time")
    parser.add_argument("--until", default=None)
    parser.add_argument("--format", default="json", help="html (the printable report) | json | csv")
    parser.add_argument("--host", default=None, help="json/csv: only this host's violations")
    parser.add_argument("--rule", default=None, help="json/csv: only this rule's violations")
    parser.add_argument("--group", default=None, help="scope the report to an inventory group")
    parser.add_argument("--serial", type=int, default=None, help="report on this policy serial")
    parser.add_argument("--output", "-o", default="-", help="file to write (default: stdout)")
    add_config_argument(parser)
    parser.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from proscribe.collector.storage import queries, to_us

    renderer = FORMATS.get(args.format)
    if renderer is None and args.format != "html":
        raise UsageError(
            f"--format {args.format!r} is not available "
            f"(fix: use one of html, {', '.join(FORMATS)})"
        )
    filtered = bool(args.host or args.rule)
    if args.format == "html" and filtered:
        raise UsageError(
            "--host/--rule filter the json and csv exports; the html report covers the whole "
            "fleet (fix: drop --host/--rule, or use --format csv)"
        )
    if filtered and args.group:
        raise UsageError(
            "--group scopes the report; --host/--rule filter the violations export "
            "(fix: use one or the other)"
        )
    from proscribe.collector.filters import FilterError, parse_period

    now = time.time()
    values = {"since": args.since, "until": args.until, "host": args.host, "rule": args.rule}
    try:
        # As the dashboard's report: an empty --since is the last 30 days, --until now; an
        # empty or reversed period is refused.
        flt = parse_period(values, now, default_since_s=DEFAULT_PERIOD_S)
    except FilterError as err:
        raise UsageError(f"--{err.param}: {err.reason}") from err
    assert flt.since_us is not None and flt.until_us is not None
    settings = settings_from_args(args)
    db = open_migrated(settings)
    meta = {"since": _iso(flt.since_us), "until": _iso(flt.until_us), "generated": _iso(to_us(now))}
    try:
        with db.read() as conn, _output(args.output) as out:
            # Written as it is read (millions of events stay in flat memory): the report is
            # built first, then its violations go out a page at a time.
            chunks: Iterator[str]
            if not filtered:  # the report: the very builder and renderers of the dashboard
                from proscribe.collector.web.report import (
                    build_report,
                    listed_rows,
                    report_chunks,
                    report_events,
                )

                report = build_report(
                    conn,
                    since_us=flt.since_us,
                    until_us=flt.until_us,
                    now_us=to_us(now),
                    heartbeat_window_s=settings.heartbeat_window,
                    policy_serial=args.serial,
                    max_rows=listed_rows(args.format),
                    group=args.group,
                    db=db,
                )
                chunks = report_chunks(report, args.format, report_events(conn, report))
            else:
                assert renderer is not None
                chunks = renderer(queries.iter_violations(conn, flt), meta)
            for chunk in chunks:
                out.write(chunk)
    finally:
        db.dispose()
    return 0


@contextmanager
def _output(path: str) -> Iterator[TextIO]:
    """Standard output, or ``path`` written whole or not at all: into a temporary file beside
    it, renamed over it once everything is written (a failure halfway leaves no half a
    report where the last one was)."""
    if path == "-":
        yield sys.stdout
        return
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    try:
        handle = partial.open("w", encoding="utf-8")
    except OSError as err:
        raise UsageError(f"--output {path}: {err.strerror}") from err
    try:
        with handle:
            yield handle
        os.replace(partial, target)
    except OSError as err:
        raise UsageError(f"--output {path}: {err.strerror}") from err
    finally:
        partial.unlink(missing_ok=True)


def _iso(us: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")
