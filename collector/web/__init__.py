"""The compliance dashboard: server-rendered pages (Jinja2, autoescape, strict CSP, no
script), login with the collector's users, and the compliance report shared with
``proscribe collector report``."""

from __future__ import annotations

from proscribe.collector.web.report import REPORT_FORMATS, report_text
from proscribe.collector.web.router import build_dashboard_router

__all__ = ["REPORT_FORMATS", "build_dashboard_router", "report_text"]
