"""The report page (printable; ``@media print`` in the stylesheet) and its downloads."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from proscribe.collector.api.deps import ReadConn, StateDep
from proscribe.collector.api.state import CollectorState
from proscribe.collector.filters import FilterError, parse_period
from proscribe.collector.web import queries as webq
from proscribe.collector.web.report import (
    MAX_HTML_ROWS,
    build_report,
    listed_rows,
    report_chunks,
    stream_report_events,
)
from proscribe.collector.web.security import PageError
from proscribe.collector.web.site import Site, Viewer

DEFAULT_PERIOD_S = 30 * 86_400
MEDIA = {
    "html": "text/html; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
}
Moment = Annotated[str | None, Query(max_length=64)]


def report_period(state: CollectorState, since: str | None, until: str | None) -> tuple[int, int]:
    """``(since_us, until_us)`` through the shared filter parser: an empty ``since`` is the
    last 30 days, an empty ``until`` is now; a bad or reversed period is a 400 page."""
    try:
        flt = parse_period(
            {"since": since, "until": until}, state.clock(), default_since_s=DEFAULT_PERIOD_S
        )
    except FilterError as err:
        raise PageError(400, "Bad period", str(err)) from err
    assert flt.since_us is not None and flt.until_us is not None
    return flt.since_us, flt.until_us


def register(router: APIRouter, site: Site) -> None:

    @router.get("/report", include_in_schema=False)
    def report_page(
        request: Request,
        visitor: Viewer,
        state: StateDep,
        conn: ReadConn,
        since: Moment = "30d",
        until: Moment = None,
        serial: Annotated[int | None, Query(ge=0)] = None,
    ) -> Response:
        since_us, until_us = report_period(state, since, until)
        report = build_report(
            conn,
            since_us=since_us,
            until_us=until_us,
            now_us=state.now_us(),
            heartbeat_window_s=state.settings.heartbeat_window,
            policy_serial=serial,
            db=state.db,
        )
        if serial is not None and report.policy is None:
            raise PageError(404, "No such policy", f"No policy with serial {serial} is stored.")
        return site.page(
            "report.html",
            visitor,
            "report",
            {
                "r": report,
                "history": webq.policy_history(conn),
                "since": since or "",
                "until": until or "",
                "serial": serial,
                "max_rows": MAX_HTML_ROWS,
                "download_query": request.url.query,
            },
        )

    @router.get("/report/export.{fmt}", include_in_schema=False)
    def report_download(
        fmt: Annotated[str, Path(pattern="^(html|csv|json)$")],
        visitor: Viewer,
        state: StateDep,
        conn: ReadConn,
        since: Moment = "30d",
        until: Moment = None,
        serial: Annotated[int | None, Query(ge=0)] = None,
    ) -> Response:
        """The report built before the answer starts (a failure is still an error page), then
        its violations streamed on a connection of their own as they are read."""
        since_us, until_us = report_period(state, since, until)
        report = build_report(
            conn,
            since_us=since_us,
            until_us=until_us,
            now_us=state.now_us(),
            heartbeat_window_s=state.settings.heartbeat_window,
            policy_serial=serial,
            max_rows=listed_rows(fmt),
            db=state.db,
        )
        violations = stream_report_events(state.db, report) if fmt != "html" else iter(())
        body = (chunk.encode("utf-8") for chunk in report_chunks(report, fmt, violations))
        stamp = datetime.now(UTC).strftime("%Y%m%d")
        return StreamingResponse(
            body,
            media_type=MEDIA[fmt],
            headers={
                "Content-Disposition": f'attachment; filename="compliance-report-{stamp}.{fmt}"'
            },
        )
