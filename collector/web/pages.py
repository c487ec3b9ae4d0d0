"""The read-only pages (viewer role): overview, violations and their export, hosts, a host,
policy. Each page does bounded work: the overview reads the violation counts kept at ingest
plus aggregates over the host table; the violations page is one keyset page through an index."""

from __future__ import annotations

import urllib.parse
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from proscribe.collector.api.deps import ReadConn, StateDep
from proscribe.collector.compliance import LABELS, STATES, fleet, state_of
from proscribe.collector.filters import FILTER_KEYS, FilterError, normalise, parse_violation_filter
from proscribe.collector.storage import agents as agent_store
from proscribe.collector.storage import queries, to_us
from proscribe.collector.storage.hosts import host_history_entries
from proscribe.collector.storage.policies import highest_serial
from proscribe.collector.web import queries as webq
from proscribe.collector.web import rollup
from proscribe.collector.web.chart import violations_chart
from proscribe.collector.web.export import stream_csv, stream_json
from proscribe.collector.web.models import model_findings
from proscribe.collector.web.report import load_policy_view
from proscribe.collector.web.rollup import DAY_US, PeriodCounts
from proscribe.collector.web.security import PageError
from proscribe.collector.web.site import Site, Viewer
from proscribe.core.events import EVENT_ACTIONS, KINDS, SEVERITIES

PERIODS = {"7d": 7, "30d": 30, "90d": 90}
PAGE_SIZES = (25, 50, 100, 200)


@dataclass(frozen=True, slots=True)
class FilterForm:
    """The violations filter as typed (to refill the form and build links) and as a query,
    or the one-line reason it cannot be used."""

    values: dict[str, str]
    flt: queries.ViolationFilter
    error: str = ""

    def query(self, **extra: str) -> str:
        params = {k: v for k, v in self.values.items() if v}
        params.update({k: v for k, v in extra.items() if v})
        return urllib.parse.urlencode(params)


def filter_form(request: Request, now: float, default_since: str = "7d") -> FilterForm:
    """The shared filter parser (:mod:`proscribe.collector.filters`) over the query string.
    An absent ``since`` is ``default_since``; present and empty, no bound."""
    raw: dict[str, str | None] = {key: request.query_params.get(key) for key in FILTER_KEYS}
    if raw["since"] is None:
        raw["since"] = default_since
    values = normalise(raw)
    try:
        return FilterForm(values, parse_violation_filter(values, now))
    except FilterError as err:
        return FilterForm(values, queries.ViolationFilter(), str(err))


def fetch_page(
    conn: Connection,
    flt: queries.ViolationFilter,
    cursor: str | None,
    limit: int,
    now_us: int,
) -> queries.ViolationPage:
    """One page of violations. A filter led by an indexed column (host, user, rule, agent)
    is one index range scan; one on kind/action/severity alone reads only the days the
    rollup says hold a match (those columns have no index of their own)."""
    indexed = flt.host or flt.user or flt.rule or flt.agent_id
    low_cardinality = flt.kind or flt.action or flt.severity
    if indexed or not low_cardinality or flt.kind == "health":
        return queries.list_violations(conn, flt, cursor=cursor or None, limit=limit)
    first = None if flt.since_us is None else flt.since_us // DAY_US
    last = None if flt.until_us is None else flt.until_us // DAY_US
    days = rollup.days_with(conn, flt.kind, flt.action, flt.severity, first, last)
    return webq.violations_in_days(conn, flt, days, cursor=cursor or None, limit=limit)


@dataclass(frozen=True, slots=True)
class Overview:
    counts: PeriodCounts
    coverage: webq.Coverage
    current_serial: int | None


def register(router: APIRouter, site: Site) -> None:

    @router.get("/", include_in_schema=False)
    def overview(
        visitor: Viewer,
        state: StateDep,
        conn: ReadConn,
        period: Annotated[str, Query(max_length=8)] = "30d",
    ) -> Response:
        days = PERIODS.get(period)
        if days is None:
            raise PageError(400, "Bad period", f"period must be one of {', '.join(PERIODS)}")
        now_us = state.now_us()
        today = now_us // DAY_US
        counts = rollup.period(conn, today - days + 1, today)
        current = highest_serial(conn)
        cover = webq.coverage(
            conn,
            now_us=now_us,
            window_us=to_us(state.settings.heartbeat_window),
            current_serial=current,
        )
        data = Overview(counts, cover, current)
        series: list[tuple[int, Counter[str]]] = sorted(data.counts.per_day.items())
        chart = violations_chart(series, title=f"Violations per day, last {days} days (UTC)")
        return site.page(
            "overview.html",
            visitor,
            "overview",
            {
                "period": period,
                "periods": PERIODS,
                "counts": data.counts,
                "coverage": data.coverage,
                "current_serial": data.current_serial,
                "chart": chart,
                "top_rules": data.counts.rules.most_common(10),
                "top_hosts": data.counts.hosts.most_common(10),
                "top_users": data.counts.users.most_common(10),
                "window": state.settings.heartbeat_window,
            },
        )

    @router.get("/violations", include_in_schema=False)
    def violations(
        request: Request,
        visitor: Viewer,
        state: StateDep,
        conn: ReadConn,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        limit: int = 50,
    ) -> Response:
        form = filter_form(request, state.clock())
        if limit not in PAGE_SIZES:
            limit = 50
        context: dict[str, Any] = {
            "form": form,
            "items": [],
            "next_link": None,
            "first_link": None,
            "export_query": form.query(),
            "hints": {"hosts": [], "users": [], "rules": []},
            "kinds": KINDS,
            "actions": EVENT_ACTIONS,
            "severities": SEVERITIES,
            "limit": limit,
            "page_sizes": PAGE_SIZES,
        }
        if form.error:  # the form again, as typed, with the reason above it
            return site.page("violations.html", visitor, "violations", context, status=400)
        context["hints"] = {name: rollup.known(conn, name) for name in context["hints"]}
        try:
            page = fetch_page(conn, form.flt, cursor, limit, state.now_us())
        except queries.BadCursor as err:
            raise PageError(400, "Bad page link", "The page cursor is not valid.") from err
        context["items"] = page.items
        if page.next_cursor:
            more = form.query(cursor=page.next_cursor, limit=str(limit))
            context["next_link"] = f"/violations?{more}"
        if cursor:
            context["first_link"] = f"/violations?{form.query(limit=str(limit))}"
        return site.page("violations.html", visitor, "violations", context)

    @router.get("/violations/export.{fmt}", include_in_schema=False)
    def export(
        request: Request,
        fmt: Annotated[str, Path(pattern="^(csv|json)$")],
        visitor: Viewer,
        state: StateDep,
    ) -> Response:
        form = filter_form(request, state.clock())
        if form.error:
            raise PageError(400, "Bad filter", form.error)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        if fmt == "csv":
            body, media = stream_csv(state.db, form.flt), "text/csv; charset=utf-8"
        else:
            body, media = stream_json(state.db, form.flt), "application/json"
        return StreamingResponse(
            body,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="violations-{stamp}.{fmt}"'},
        )

    @router.get("/hosts", include_in_schema=False)
    def hosts(
        visitor: Viewer,
        state: StateDep,
        conn: ReadConn,
        show: Annotated[str, Query(max_length=16)] = "all",
    ) -> Response:
        now_us = state.now_us()
        window_us = to_us(state.settings.heartbeat_window)
        found = fleet(conn, now_us=now_us, window_us=window_us)
        rows = [f for f in found.hosts if not f.revoked]
        if show == "problems":
            rows = [f for f in rows if not f.state.enforcing]
        order = {name: i for i, name in enumerate(reversed(STATES))}
        rows.sort(key=lambda f: (order[f.state.state], f.hostname.lower()))
        return site.page(
            "hosts.html",
            visitor,
            "hosts",
            {
                "rows": rows,
                "fleet": found,
                "counts": found.counts(),
                "labels": LABELS,
                "show": show,
                "now_us": now_us,
                "window": state.settings.heartbeat_window,
            },
        )

    @router.get("/hosts/{agent_id}", include_in_schema=False)
    def host(
        agent_id: Annotated[str, Path(max_length=64)],
        visitor: Viewer,
        state: StateDep,
        conn: ReadConn,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> Response:
        now_us = state.now_us()
        window_us = to_us(state.settings.heartbeat_window)
        flt = queries.ViolationFilter(agent_id=agent_id, include_health=True)
        try:
            page = queries.list_violations(conn, flt, cursor=cursor or None, limit=50)
        except queries.BadCursor as err:
            raise PageError(400, "Bad page link", "The page cursor is not valid.") from err
        detail = webq.host_detail(conn, agent_id, now_us=now_us, window_us=window_us)
        agent = agent_store.get_agent(conn, agent_id)
        if detail is None and agent is None:
            raise PageError(404, "No such host", "No agent with that id has enrolled.")
        next_link = (
            f"/hosts/{urllib.parse.quote(agent_id)}?cursor={page.next_cursor}"
            if page.next_cursor
            else None
        )
        return site.page(
            "host.html",
            visitor,
            "hosts",
            {
                "host": detail,
                "agent": agent,
                "items": page.items,
                "next_link": next_link,
                "current": highest_serial(conn),
                "history": host_history_entries(conn, agent_id, limit=100),
                "state": state_of(
                    conn,
                    detail,
                    revoked=agent is not None and agent.revoked_us is not None,
                    now_us=now_us,
                    window_us=window_us,
                ),
                "models": model_findings(conn, agent_id=agent_id),
                "now_us": now_us,
                "window": state.settings.heartbeat_window,
            },
        )

    @router.get("/policy", include_in_schema=False)
    def policy(visitor: Viewer, state: StateDep, conn: ReadConn) -> Response:
        now = datetime.fromtimestamp(state.clock(), UTC)
        view, history = load_policy_view(conn), webq.policy_history(conn)
        active, expired = view.exemptions(now) if view else ([], [])
        return site.page(
            "policy.html",
            visitor,
            "policy",
            {
                "view": view,
                "history": history,
                "active": active,
                "expired": expired,
                "now": now,
            },
        )
