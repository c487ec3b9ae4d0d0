"""``kind = "splunk-hec"``: Splunk's HTTP Event Collector, event endpoint.

``url`` is the endpoint itself (``https://splunk.example:8088/services/collector/event``); the
token (``secret_file``) goes in ``Authorization: Splunk TOKEN``. A batch is the HEC's
concatenated JSON objects, one per event::

    {"time": 1738055643.12, "host": "host-1", "source": "proscribe",
     "sourcetype": "proscribe:event", "event": {…}}

``event`` is the stored event (``format = "json"``, sourcetype ``proscribe:event``) or its ECS
document (``format = "ecs"``, sourcetype ``proscribe:ecs``). HEC answers 400 (invalid data,
code 6) for content it refuses — retried one event at a time, then dead-lettered — and 401/403
for a bad token, which is retried with backoff (and shown as the last error), never
dead-lettered. Indexer acknowledgement (``X-Splunk-Request-Channel``) is not used: a 200 from
HEC counts as delivered (docs/limitations.md).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from proscribe.collector.forward.render import RenderError, epoch_seconds, section, to_ecs
from proscribe.collector.forward.settings import ForwardSettings
from proscribe.collector.forward.webhook import HttpPoster
from proscribe.core.events import Event


class SplunkHecDestination:
    def __init__(self, settings: ForwardSettings) -> None:
        self.settings = settings
        # The token is sent as a header, not an HMAC key.
        self.token = (settings.secret or b"").decode("utf-8", "replace")
        self.poster = HttpPoster(dataclasses.replace(settings, secret=None))

    def render(self, event: Event) -> str:
        ecs = self.settings.format == "ecs"
        wrapper: dict[str, Any] = {
            "time": round(epoch_seconds(event), 3),
            "host": section(event, "host").get("hostname") or "unknown",
            "source": "proscribe",
            "sourcetype": "proscribe:ecs" if ecs else "proscribe:event",
            "event": to_ecs(event) if ecs else event,
        }
        text = json.dumps(wrapper, ensure_ascii=False, separators=(",", ":"))
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise RenderError(f"not encodable as UTF-8: {err.reason}") from err
        return text

    def send(self, items: list[str]) -> None:
        self.poster.post(
            "\n".join(items).encode(),
            {"Authorization": f"Splunk {self.token}", "Content-Type": "application/json"},
        )

    def close(self) -> None:
        self.poster.close()
