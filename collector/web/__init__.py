"""The compliance dashboard: server-rendered pages (Jinja2, autoescape, strict CSP, no
script), login with the collector's users, and the compliance report shared with
``proscribe collector report``."""

from __future__ import annotations

from proscribe.collector.web.report import REPORT_FORMATS, report_text
from proscribe.collector.web.router import Dashboard, build_dashboard

__all__ = ["REPORT_FORMATS", "Dashboard", "build_dashboard", "report_text"]
