"""``proscribe collector report --since 30d --format html|json|csv``.

``html`` is the dashboard's printable compliance report (cover page with directive, period,
policy serials and coverage; violations, blocks, exemptions, stale hosts), self-contained in
one file. ``json`` and ``csv`` are every violation of the period (optionally filtered by host
or rule), the rows auditors load into a spreadsheet. Renderers are a registry (``FORMATS``).

``--since/--until/--host/--rule`` go through the same filter parser as the API and the
dashboard (:mod:`proscribe.collector.filters`): a bad value is one line naming the option, exit
2. The escaping is every export's (formula-safe, visible control characters; ASCII JSON).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from proscribe.cli.collector.common import add_config_argument, open_migrated, settings_from_args
from proscribe.core.errors import UsageError

DEFAULT_PERIOD_S = 30 * 86_400
Renderer = Callable[[Iterable[dict[str, Any]], dict[str, Any]], str]


def _json(events: Iterable[dict[str, Any]], meta: dict[str, Any]) -> str:
    from proscribe.collector.literal import safe_json

    return safe_json({**meta, "violations": list(events)}, indent=1) + "\n"


def _csv(events: Iterable[dict[str, Any]], _meta: dict[str, Any]) -> str:
    from proscribe.collector.csvexport import violations_csv

    return violations_csv(events)


FORMATS: dict[str, Renderer] = {"json": _json, "csv": _csv}


def register(verbs: Any) -> None:
    parser = verbs.add_parser(
        "report", help="compliance report (html) or violations (json, csv) over a period"
    )
    parser.add_argument("--since", default="30d", help="e.g. 30d, 12h, or an RFC 3339 time")
    parser.add_argument("--until", default=None)
    parser.add_argument("--format", default="json", help="html (the printable report) | json | csv")
    parser.add_argument("--host", default=None)
    parser.add_argument("--rule", default=None)
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
    if args.format == "html" and (args.host or args.rule):
        raise UsageError(
            "--host/--rule filter the json and csv exports; the html report covers the whole "
            "fleet (fix: drop --host/--rule, or use --format csv)"
        )
    from proscribe.collector.filters import FilterError, parse_period

    now = time.time()
    values = {"since": args.since, "until": args.until, "host": args.host, "rule": args.rule}
    try:
        # As the dashboard's report: an empty --since is the last 30 days, --until now.
        flt = parse_period(values, now, default_since_s=DEFAULT_PERIOD_S)
    except FilterError as err:
        raise UsageError(f"--{err.param}: {err.reason}") from err
    assert flt.since_us is not None and flt.until_us is not None
    since, until = flt.since_us / 1e6, flt.until_us / 1e6
    settings = settings_from_args(args)
    db = open_migrated(settings)
    meta = {"since": since, "until": until, "generated": now}
    try:
        with db.read() as conn:
            if renderer is None:  # html: the dashboard's report, rendered to one file
                from proscribe.collector.web.report import report_text

                text = report_text(
                    conn,
                    fmt="html",
                    since_us=flt.since_us,
                    until_us=flt.until_us,
                    now_us=to_us(now),
                    heartbeat_window_s=settings.heartbeat_window,
                )
            else:
                text = renderer(queries.iter_violations(conn, flt), meta)
    finally:
        db.dispose()
    if args.output == "-":
        sys.stdout.write(text)
    else:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as err:
            raise UsageError(f"--output {args.output}: {err.strerror}") from err
    return 0
