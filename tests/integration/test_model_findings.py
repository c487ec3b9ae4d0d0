"""Model findings from the agent's own code to the dashboard's host page and the report.

The events are made by the real model guard (agent/model_guard.py) judging a real GGUF file and a
real process that maps it (monitor mode: nothing is killed), then sent through the signed agent
API of the real collector app."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from proscribe.agent.enforce.kill import Killer
from proscribe.agent.evidence import Evidence, HostSection
from proscribe.agent.model_guard import ModelGuard
from proscribe.agent.sensors.enrich import Enricher
from proscribe.agent.sensors.users import UserNames
from proscribe.collector.web.report import report_text
from proscribe.core.events import Event
from proscribe.core.policy.loader import load_policy_file
from proscribe.core.policy.matchers import CompiledPolicy
from tests.support.dashboard_env import DashboardEnv, EnvTemplates, make_env
from tests.support.models import write_gguf

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
NAVY = Path(__file__).resolve().parents[2] / "policies" / "us-navy-deepseek-2025.toml"


class _Spool:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def append(self, event: Event) -> bool:
        self.events.append(event)
        return True

    def bump_count(self, event_id: str, n: int = 1) -> bool:
        return False


class _InForce:
    def __init__(self, compiled: CompiledPolicy) -> None:
        self.compiled = compiled

    def now(self) -> datetime:
        return datetime.now(UTC)


@pytest.fixture
def env(tmp_path: Path, env_templates: EnvTemplates) -> Iterator[DashboardEnv]:
    yield from make_env(tmp_path, env_templates)


def _agent_events(tmp_path: Path, procs: Any) -> tuple[list[Event], Path]:
    spool = _Spool()
    guard = ModelGuard(
        policy=_InForce(CompiledPolicy.compile(load_policy_file(NAVY))),  # type: ignore[arg-type]
        evidence=Evidence(spool, HostSection("ai-lab-01")),
        killer=Killer(Enricher()),
        users=UserNames(),
        mode="monitor",
        hostname="ai-lab-01",
    )
    model = write_gguf(
        tmp_path / "m" / "model.gguf", arch="qwen2", name="DeepSeek R1 Distill Qwen 7B"
    )
    guard.on_file(str(model), "sweep")
    mapper = procs.start(
        [sys.executable, "-c", "import mmap,sys,time;f=open(sys.argv[1],'rb');"
         "m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ);print('ok',flush=True);time.sleep(30)",
         str(model)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert mapper.stdout.readline() == b"ok\n"
    st = model.stat()
    guard.stop_loaders({(st.st_dev, st.st_ino): str(model)})  # monitor: reported, not killed
    assert mapper.poll() is None
    return spool.events, model


def test_host_page_and_report_show_model_findings(
    env: DashboardEnv, tmp_path: Path, procs: Any
) -> None:
    events, model = _agent_events(tmp_path, procs)
    assert [e["action"] for e in events] == ["reported", "would_block"]
    agent = env.enroll("ai-lab-01")
    env.post_events(agent, events)
    page = env.login("vera").get(f"/hosts/{agent[0]}").text
    assert "Local AI models (1)" in page
    assert "DeepSeek R1 Distill Qwen 7B" in page and str(model) in page
    assert "GGUF general.name = &#39;DeepSeek R1 Distill Qwen 7B&#39;" in page
    owner = pwd.getpwuid(os.getuid()).pw_name
    assert "would_block" in page and owner in page
    with env.db.read() as conn:
        now = int(datetime.now(UTC).timestamp() * 1_000_000)
        text = report_text(
            conn, fmt="json", since_us=now - 3600_000_000, until_us=now + 60_000_000,
            now_us=now, heartbeat_window_s=300,
        )  # fmt: skip
        html = report_text(
            conn, fmt="html", since_us=now - 3600_000_000, until_us=now + 60_000_000,
            now_us=now, heartbeat_window_s=300,
        )  # fmt: skip
    models = json.loads(text)["models"]
    assert len(models) == 1 and models[0]["path"] == str(model)
    assert models[0]["owner"] == owner and models[0]["actions"] == {
        "reported": 1,
        "would_block": 1,
    }
    assert "Local AI models (1)" in html


def test_report_html_lists_at_most_max_rows_models_and_json_all(
    env: DashboardEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like its other tables, the HTML report lists MAX_HTML_ROWS model findings and says how
    many more the JSON export has (2,849 findings were 1.8 MB of a fleet's 2.7 MB report)."""
    import proscribe.collector.web.report as report_module
    from tests.support.dashboard_env import event

    agent = env.enroll("ws-models")
    env.post_events(
        agent,
        [event(kind="model", rule="m", action="reported",
               file={"path": f"/models/m{i}.gguf", "model": {"name": f"model-{i}"}})
         for i in range(3)],
    )  # fmt: skip
    monkeypatch.setattr(report_module, "MAX_HTML_ROWS", 2)
    now = int(datetime.now(UTC).timestamp() * 1_000_000)
    period = {"since_us": now - 3600_000_000, "until_us": now + 60_000_000, "now_us": now,
              "heartbeat_window_s": 300}  # fmt: skip
    with env.db.read() as conn:
        html = report_text(conn, fmt="html", **period)
        data = json.loads(report_text(conn, fmt="json", **period))
    assert "Local AI models (3)" in html and "1 more: see the JSON export" in html
    section = html[html.index("Local AI models (3)") : html.index("<h2>Exemptions")]
    assert sum(f"/models/m{i}.gguf" in section for i in range(3)) == 2
    assert sorted(m["path"] for m in data["models"]) == [f"/models/m{i}.gguf" for i in range(3)]


def test_a_hostile_model_event_is_shown_inert(env: DashboardEnv) -> None:
    from tests.support.dashboard_env import event

    agent = env.enroll("ws-1")
    env.post_events(
        agent,
        [event(kind="model", rule="m", action="reported",
               file={"path": "/x/<script>alert(1)</script>.gguf",
                     "model": {"name": "<img src=x>", "evidence": ["<b>x</b>"]}})],
    )  # fmt: skip
    page = env.login("vera").get(f"/hosts/{agent[0]}").text
    assert "<script>alert(1)" not in page and "<img src=x>" not in page
    assert "&lt;img src=x&gt;" in page
