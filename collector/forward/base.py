"""What a destination is to the runner: render one event, send a batch, close.

``send`` either returns (the destination acknowledged every item: the cursor moves past them),
raises :class:`Unavailable` (nothing is settled; retried with backoff, the batch resent whole),
or raises :class:`Refused` (the destination refuses this content for good: the runner retries
the batch one event at a time and dead-letters the event refused alone).
"""

from __future__ import annotations

from typing import Any, Protocol

from proscribe.core.events import Event


class Unavailable(Exception):
    """The destination cannot take anything now (down, timeout, 5xx, 429)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Refused(Exception):
    """The destination refused the content for good (a 4xx other than 408/429)."""


class Destination(Protocol):
    def render(self, event: Event) -> Any:
        """The event in this destination's format; RenderError if it cannot be."""

    def send(self, items: list[Any]) -> None:
        """Deliver rendered items, in order; see the module docstring for the outcomes."""

    def close(self) -> None: ...


def redact_url(url: str) -> str:
    """``scheme://host:port`` only: webhook URLs (Slack's, Teams') carry their secret in the
    path, so paths and queries are never shown on pages, metrics or logs."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"
