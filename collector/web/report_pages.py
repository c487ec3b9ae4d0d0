"""The report page (printable; ``@media print`` in the stylesheet) and its downloads."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from proscribe.collector.storage import to_us
from proscribe.collector.web import queries as webq
from proscribe.collector.web.pages import moment_us
from proscribe.collector.web.report import (
    MAX_HTML_ROWS,
    ComplianceReport,
    build_report,
    report_text,
)
from proscribe.collector.web.security import PageError
from proscribe.collector.web.site import Site, Viewer

DEFAULT_PERIOD_US = 30 * 86_400 * 1_000_000
MEDIA = {
    "html": "text/html; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
}


def register(router: APIRouter, site: Site) -> None:

    def period(request: Request, since: str, until: str | None) -> tuple[int, int, int]:
        state = site.state(request)
        now = state.clock()
        since_us = moment_us("since", since, now) or to_us(now) - DEFAULT_PERIOD_US
        until_us = moment_us("until", until, now) or to_us(now)
        if since_us >= until_us:
            raise PageError(400, "Bad period", "since must be before until.")
        return since_us, until_us, to_us(now)

    @router.get("/report", include_in_schema=False)
    async def report_page(
        request: Request,
        visitor: Viewer,
        since: Annotated[str, Query(max_length=64)] = "30d",
        until: Annotated[str | None, Query(max_length=64)] = None,
        serial: Annotated[int | None, Query(ge=0)] = None,
    ) -> Response:
        since_us, until_us, now_us = period(request, since, until)
        window = site.state(request).settings.heartbeat_window

        def work(conn: Connection) -> tuple[ComplianceReport, list[webq.PolicyRecord]]:
            report = build_report(
                conn,
                since_us=since_us,
                until_us=until_us,
                now_us=now_us,
                heartbeat_window_s=window,
                policy_serial=serial,
            )
            return report, webq.policy_history(conn)

        report, history = await site.read(request, work)
        if serial is not None and report.policy is None:
            raise PageError(404, "No such policy", f"No policy with serial {serial} is stored.")
        query = request.url.query
        return site.page(
            "report.html",
            visitor,
            "report",
            {
                "r": report,
                "history": history,
                "since": since,
                "until": until or "",
                "serial": serial,
                "max_rows": MAX_HTML_ROWS,
                "download_query": query,
            },
        )

    @router.get("/report/export.{fmt}", include_in_schema=False)
    async def report_download(
        request: Request,
        fmt: Annotated[str, Path(pattern="^(html|csv|json)$")],
        visitor: Viewer,
        since: Annotated[str, Query(max_length=64)] = "30d",
        until: Annotated[str | None, Query(max_length=64)] = None,
        serial: Annotated[int | None, Query(ge=0)] = None,
    ) -> Response:
        since_us, until_us, now_us = period(request, since, until)
        window = site.state(request).settings.heartbeat_window
        text = await site.read(
            request,
            lambda conn: report_text(
                conn,
                fmt=fmt,
                since_us=since_us,
                until_us=until_us,
                now_us=now_us,
                heartbeat_window_s=window,
                policy_serial=serial,
            ),
        )
        stamp = datetime.now(UTC).strftime("%Y%m%d")
        return Response(
            text,
            media_type=MEDIA[fmt],
            headers={
                "Content-Disposition": f'attachment; filename="compliance-report-{stamp}.{fmt}"'
            },
        )
