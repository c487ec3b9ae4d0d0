"""Evidence an auditor can sign (issue 13), against the real collector app in-process on SQLite
and PostgreSQL, with agents that sign their requests as the real agent does — including a
hostile one that signs correct requests around forged bodies."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from proscribe.cli import main
from proscribe.collector.compliance import fleet
from proscribe.collector.storage.hosts import host_history_entries
from proscribe.collector.storage.tables import events
from proscribe.collector.web.report import build_report
from tests.support.dashboard_env import DashboardEnv, EnvTemplates, event, make_env


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(
    request: pytest.FixtureRequest, tmp_path: Path, env_templates: EnvTemplates
) -> Iterator[DashboardEnv]:
    yield from make_env(tmp_path, env_templates, request.param)


def _report(env: DashboardEnv) -> object:
    """The last hour's report as the dashboard builds it (the events read on a connection of
    their own beside the hosts), checked equal to the same report built on one connection."""
    now_us = int(env.clock.now * 1e6)
    period: dict[str, Any] = {"since_us": now_us - 3600 * 1_000_000, "until_us": now_us + 1,
                              "now_us": now_us, "heartbeat_window_s": 180}  # fmt: skip
    with env.db.read() as conn:
        apart = build_report(conn, db=env.db, **period)
        together = build_report(conn, **period)
    assert apart == together
    return apart


# --- host identity (item 5) ----------------------------------------------------------------


def test_forged_hostname_in_event_bodies_is_filed_under_the_signing_agents_host(
    env: DashboardEnv,
) -> None:
    """One hostile agent signs correct requests whose bodies claim other hosts: every event is
    stored under its own host record, the claim kept only as ``claimed_hostname``."""
    hostile = env.enroll("ws-mallory")
    ceo = env.enroll("ceo-laptop")
    forged = []
    for claim in ("ceo-laptop", "cfo-laptop", "ws-mallory", None):
        ev = event(when=env.clock.now - 10)
        if claim is not None:
            ev["host"] = {"hostname": claim, "agent_id": ceo[0], "os": "linux"}
        forged.append(ev)
    env.post_events(hostile, forged)
    with env.db.read() as conn:
        rows = conn.execute(select(events.c.agent_id, events.c.hostname, events.c.body)).all()
    assert {(r.agent_id, r.hostname) for r in rows} == {(hostile[0], "ws-mallory")}
    claims = sorted(json.loads(r.body)["host"].get("claimed_hostname", "") for r in rows)
    assert claims == ["", "", "ceo-laptop", "cfo-laptop"]
    assert all(json.loads(r.body)["host"]["hostname"] == "ws-mallory" for r in rows)

    viewer = env.login("vera")
    for claim in ("ceo-laptop", "cfo-laptop"):
        found = viewer.get("/violations/export.json", params={"host": claim})
        assert found.status_code == 200, found.text
        assert json.loads(found.text)["violations"] == [], claim
    mine = json.loads(viewer.get("/violations/export.json", params={"host": "ws-mallory"}).text)
    assert len(mine["violations"]) == 4

    report = _report(env)
    assert report.by_host == [("ws-mallory", 4)]


def test_hostname_changes_only_through_heartbeats_and_is_recorded(env: DashboardEnv) -> None:
    agent = env.enroll("ws-old")
    env.heartbeat(agent)
    env.post_events(agent, [event(when=env.clock.now - 5)])
    env.heartbeat(agent, hostname="ws-new")
    env.post_events(agent, [event(when=env.clock.now - 4)])
    # A re-enrollment of the same key with another name does not rename it either.
    env.enroll_agent(env.secret, "ceo-laptop", agent[1])
    env.post_events(agent, [event(when=env.clock.now - 3)])
    with env.db.read() as conn:
        names = [
            r.hostname for r in conn.execute(select(events.c.hostname).order_by(events.c.time_us))
        ]
        history = host_history_entries(conn, agent[0])
    assert names == ["ws-old", "ws-new", "ws-new"]
    changed = [h.detail for h in history if h.kind == "changed"]
    assert {"hostname": ["ws-old", "ws-new"]} in [
        {k: v for k, v in d.items() if k == "hostname"} for d in changed
    ]
    # The report groups by agent: one host, named as it is now, with all three events.
    assert _report(env).by_host == [("ws-new", 3)]


# --- health, goodbye and the compliance state (items 1, 2) -------------------------------


def _health(**over: object) -> dict[str, object]:
    health: dict[str, object] = {
        "guard": "netlink",
        "drops": {"spool.full": 0, "spool.folded": 0},
        "fail_open": {"timeouts": 0, "overloads": 0},
        "sensors": {
            "process": {"state": "running", "alive": True},
            "dns": {"state": "off", "alive": False},
        },
        "policy_rejections": 0,
        "last_policy_rejection": None,
    }
    health.update(over)
    return health


def _state(env: DashboardEnv, agent_id: str) -> tuple[str, list[str]]:
    with env.db.read() as conn:
        found = fleet(conn, now_us=int(env.clock.now * 1e6), window_us=180_000_000)
    (host,) = [h for h in found.hosts if h.agent_id == agent_id]
    return host.state.state, list(host.state.reasons)


def test_monitor_mode_with_sensors_off_is_not_enforcing(env: DashboardEnv) -> None:
    """Measured on main: shown as "covered" and counted as reporting."""
    agent = env.enroll("ws-monitor")
    off = _health(sensors={"process": {"state": "off", "alive": False}})
    env.heartbeat(agent, mode="monitor", sensors={"process": "off", "dns": "off"}, health=off)
    assert _state(env, agent[0]) == ("monitoring", ["mode monitor"])
    env.heartbeat(agent, sensors={"process": "off", "dns": "off"}, health=off)
    state, reasons = _state(env, agent[0])
    assert state == "degraded"
    assert reasons == ["process sensor not running (off)"]


def test_enforcing_needs_current_serial_live_sensor_and_no_failures(env: DashboardEnv) -> None:
    agent = env.enroll("ws-good")
    env.heartbeat(agent, serial=None, health=_health())
    assert _state(env, agent[0]) == ("degraded", ["no policy in force"])
    env.heartbeat(agent, health=_health())
    assert _state(env, agent[0]) == ("enforcing", [])
    # A thread died: the state string still says running, the liveness does not.
    dead = _health(sensors={"process": {"state": "running", "alive": False}})
    env.heartbeat(agent, health=dead)
    assert _state(env, agent[0])[0] == "degraded"
    env.heartbeat(agent, health=_health())
    assert _state(env, agent[0]) == ("enforcing", [])
    # Folded repeats lose nothing; a full spool and fail-open decisions do.
    env.heartbeat(agent, health=_health(drops={"spool.folded": 40}))
    assert _state(env, agent[0]) == ("enforcing", [])
    env.heartbeat(
        agent,
        health=_health(drops={"spool.full": 3, "spool.folded": 40}, fail_open={"timeouts": 2}),
    )
    state, reasons = _state(env, agent[0])
    assert state == "degraded"
    assert reasons == ["within the window: 3 dropped (spool.full), 2 failed open (timeouts)"]
    # Unchanged counters after the window: enforcing again (the failure is in the history).
    env.clock.advance(200)
    env.heartbeat(
        agent,
        health=_health(drops={"spool.full": 3, "spool.folded": 40}, fail_open={"timeouts": 2}),
    )
    assert _state(env, agent[0]) == ("enforcing", [])
    with env.db.read() as conn:
        kinds = [h.kind for h in host_history_entries(conn, agent[0])]
    assert kinds.count("failures") == 1
    # Summed in the report (folded repeats lose nothing and are left out).
    assert _report(env).health_totals == {  # type: ignore[attr-defined]
        "drops": {"spool.full": 3},
        "fail_open": {"timeouts": 2},
    }


def test_goodbye_shows_stopped_with_who_not_reporting(env: DashboardEnv) -> None:
    agent = env.enroll("ws-bye")
    env.heartbeat(agent, health=_health())
    env.heartbeat(agent, health=_health(), goodbye={"by": "SIGTERM from systemd"})
    assert _state(env, agent[0]) == ("stopped", ["stopped cleanly: SIGTERM from systemd"])
    env.clock.advance(30)  # restarted within the window
    env.heartbeat(agent, health=_health())
    assert _state(env, agent[0]) == ("enforcing", [])
    with env.db.read() as conn:
        kinds = [h.kind for h in host_history_entries(conn, agent[0])]
    assert kinds[:2] == ["started", "stopped"]


def test_stale_and_never_enrolled(env: DashboardEnv) -> None:
    agent = env.enroll("ws-quiet")
    never = env.enroll("ws-never-beat")
    env.heartbeat(agent, health=_health())
    env.clock.advance(181)
    assert _state(env, agent[0])[0] == "stale"
    assert _state(env, never[0]) == ("stale", ["enrolled, never sent a heartbeat"])


# --- the report: coverage over the period, one generator (items 6, 9) ----------------------


def test_report_headline_counts_continuous_enforcement_from_history(env: DashboardEnv) -> None:
    steady, stopped, monitor = env.enroll("ws-a"), env.enroll("ws-b"), env.enroll("ws-c")
    since_us = int(env.clock.now * 1e6)
    for step in range(10):
        env.heartbeat(steady, health=_health())
        if step == 2:
            env.heartbeat(stopped, health=_health(), goodbye={"by": "SIGTERM"})
        elif step < 2 or step >= 6:
            env.heartbeat(stopped, health=_health())
        env.heartbeat(monitor, mode="monitor", health=_health())
        env.clock.advance(60)
    now_us = int(env.clock.now * 1e6)
    with env.db.read() as conn:
        report = build_report(
            conn, since_us=since_us, until_us=now_us, now_us=now_us, heartbeat_window_s=180
        )
    assert report.period is not None
    gaps = {h.hostname: [g.reason for g in h.gaps] for h in report.period.hosts}
    assert gaps["ws-a"] == []
    assert gaps["ws-b"] == ["stopped: SIGTERM", "silent"] or sorted(gaps["ws-b"]) == sorted(
        ["stopped: SIGTERM", "silent"]
    )
    assert gaps["ws-c"] == ["mode monitor"]
    assert report.headline.startswith("1 of 3 in-scope hosts enforcing any policy continuously")
    stop = next(g for h in report.period.hosts if h.hostname == "ws-b" for g in h.gaps)
    assert stop.end_us - stop.start_us == 240 * 1_000_000


def test_cli_report_is_the_dashboards_report_and_refuses_a_reversed_period(
    env: DashboardEnv, cli: Callable[..., CliRun]
) -> None:
    agent = env.enroll("ws-cli")
    since = datetime.fromtimestamp(env.clock.now, UTC).isoformat()
    env.heartbeat(agent, health=_health())
    env.post_events(agent, [event(when=env.clock.now)])
    env.clock.advance(1)
    done = cli("report", "--format", "json", "--since", since)
    assert done.returncode == 0, done.stderr
    from_cli = json.loads(done.stdout)
    viewer = env.login("vera")
    from_web = json.loads(viewer.get("/report/export.json", params={"since": since}).text)
    assert set(from_cli) == set(from_web)
    assert from_cli["headline"].startswith("1 of 1 in-scope hosts")
    assert from_cli["period"]["since"].endswith("Z") and "T" in from_cli["period"]["since"]
    assert [v["id"] for v in from_cli["violations"]] == [v["id"] for v in from_web["violations"]]
    reversed_ = cli("report", "--since", "2026-01-02T00:00:00Z", "--until", "2026-01-01T00:00:00Z")
    assert reversed_.returncode == 2
    assert reversed_.stdout == ""
    assert len(reversed_.stderr.strip().splitlines()) == 1, reversed_.stderr
    assert "--until" in reversed_.stderr
    page = viewer.get(
        "/report/export.json", params={"since": "2026-01-02T00:00:00Z", "until": "2026-01-01"}
    )
    assert page.status_code == 400


def test_report_exports_stream_every_violation_in_pieces(
    env: DashboardEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Callable[..., CliRun]
) -> None:
    """The JSON and CSV exports write the violations a few at a time as they are read (an
    export of millions is never one string), and what they write is the whole report: the
    same as the report's data with every violation listed at once; the download streams the
    same, and the command writes its file whole (an old file replaced, nothing left beside)."""
    import csv
    import io

    from proscribe.collector.literal import safe_json
    from proscribe.collector.web import report as report_module

    monkeypatch.setattr(report_module, "EXPORT_CHUNK", 4)
    agent = env.enroll("ws-export")
    env.heartbeat(agent, health=_health())
    env.post_events(agent, [event(when=env.clock.now - i, rule=f"r-{i}") for i in range(11)])
    env.clock.advance(1)
    now_us = int(env.clock.now * 1e6)
    period: dict[str, Any] = {"since_us": now_us - 3600 * 1_000_000, "until_us": now_us,
                              "now_us": now_us, "heartbeat_window_s": 180}  # fmt: skip
    with env.db.read() as conn:
        report = build_report(conn, max_rows=0, **period)
        listed = list(report_module.report_events(conn, report))
        pieces = {
            fmt: list(
                report_module.report_chunks(report, fmt, report_module.report_events(conn, report))
            )
            for fmt in ("json", "csv")
        }
    assert len(listed) == 11
    assert len(pieces["json"]) >= 3 and len(pieces["csv"]) >= 3  # 11 events, 4 at a time
    whole = json.loads("".join(pieces["json"]))
    assert whole == json.loads(safe_json(report_module.report_data(report, listed)))
    rows = list(csv.DictReader(io.StringIO("".join(pieces["csv"]))))
    assert [r["id"] for r in rows] == [v["id"] for v in listed]

    viewer = env.login("vera")
    for fmt in ("json", "csv"):
        got = viewer.get(f"/report/export.{fmt}", params={"since": "1h"})
        assert got.status_code == 200
        ids = (
            [v["id"] for v in json.loads(got.text)["violations"]]
            if fmt == "json"
            else [r["id"] for r in csv.DictReader(io.StringIO(got.text))]
        )
        assert ids == [v["id"] for v in listed], fmt

    out = tmp_path / "report.json"
    out.write_text("the last report")
    for extra in ([], ["--host", "ws-export"]):
        done = cli("report", "--format", "json", "--since", "1d", "--output", str(out), *extra)
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        written = json.loads(out.read_text())
        assert sorted(v["id"] for v in written["violations"]) == sorted(v["id"] for v in listed)
        assert [p.name for p in tmp_path.iterdir() if "report" in p.name] == ["report.json"]
    missing = cli(
        "report", "--format", "csv", "--since", "1d", "--output", str(tmp_path / "no" / "r.csv")
    )
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "--output" in missing.stderr


# --- revocation that sticks, enroll secret limits (item 4) ---------------------------------

MACHINE = "0123456789abcdef0123456789abcdef"


def _enroll_reply(
    env: DashboardEnv, secret: str, hostname: str, key: Ed25519PrivateKey, **over: object
) -> Any:
    from proscribe.core.policy.keys import public_key_string

    body = {
        "secret": secret,
        "hostname": hostname,
        "os": "linux",
        "agent_version": "0.1.0",
        "public_key": public_key_string(key.public_key()),
        **over,
    }
    return env.client.post("/api/v1/enroll", json=body)


def test_revoked_key_is_never_accepted_again_and_the_machine_is_banned(env: DashboardEnv) -> None:
    from proscribe.collector.storage import admin_actions

    old_key = Ed25519PrivateKey.generate()
    agent_id, _ = env.enroll_agent(env.secret, "ws-rogue", old_key, machine_id=MACHINE)
    with env.db.write() as conn:
        assert admin_actions.revoke_agent(
            conn, agent_id, actor="adam", via="test", now_us=int(env.clock.now * 1e6)
        )
    refused = env.signed(agent_id, old_key, "POST", "/api/v1/heartbeat", b"{}")
    assert refused.status_code == 401 and refused.json()["error"] == "revoked_agent"
    again = _enroll_reply(env, env.secret, "ws-rogue", old_key, machine_id=MACHINE)
    assert again.status_code == 403 and again.json()["error"] == "revoked_key"
    new_key = Ed25519PrivateKey.generate()
    banned = _enroll_reply(env, env.secret, "ws-rogue", new_key, machine_id=MACHINE)
    assert banned.status_code == 403 and banned.json()["error"] == "machine_banned"
    # Without a machine id the old key still cannot come back.
    bare = _enroll_reply(env, env.secret, "ws-rogue", old_key)
    assert bare.status_code == 403
    # An innocent look-alike: another machine enrolls as usual.
    other = _enroll_reply(env, env.secret, "ws-other", new_key, machine_id="f" * 32)
    assert other.status_code == 200
    with env.db.write() as conn:
        assert admin_actions.lift_ban(
            conn, MACHINE, actor="adam", via="test", now_us=int(env.clock.now * 1e6)
        )
    lifted = _enroll_reply(
        env, env.secret, "ws-rogue", Ed25519PrivateKey.generate(), machine_id=MACHINE
    )
    assert lifted.status_code == 200
    still = _enroll_reply(env, env.secret, "ws-rogue", old_key, machine_id=MACHINE)
    assert still.status_code == 403


def test_enroll_secret_limits_uses_expiry_and_host_pattern(env: DashboardEnv) -> None:
    from proscribe.collector.storage import admin_actions
    from proscribe.collector.storage.agents import SecretLimits

    now_us = int(env.clock.now * 1e6)
    with env.db.write() as conn:
        _id, limited = admin_actions.create_enroll_secret(
            conn,
            "two laptops",
            actor="adam",
            via="test",
            now_us=now_us,
            limits=SecretLimits(max_uses=2, expires_us=now_us + 60_000_000, host_pattern="WS-*"),
        )
    key = Ed25519PrivateKey.generate()
    wrong_host = _enroll_reply(env, limited, "ceo-laptop", Ed25519PrivateKey.generate())
    assert wrong_host.status_code == 403
    assert wrong_host.json()["error"] == "host_not_allowed"
    assert _enroll_reply(env, limited, "ws-1", key).status_code == 200
    # The same key enrolling again is a renewal, not a second use.
    assert _enroll_reply(env, limited, "ws-1", key).status_code == 200
    second = _enroll_reply(env, limited, "ws-2", Ed25519PrivateKey.generate())
    assert second.status_code == 200
    third = _enroll_reply(env, limited, "ws-3", Ed25519PrivateKey.generate())
    assert third.status_code == 401 and "used up" in third.json()["detail"]
    with env.db.write() as conn:
        _id, expiring = admin_actions.create_enroll_secret(
            conn,
            "soon",
            actor="adam",
            via="test",
            now_us=now_us,
            limits=SecretLimits(expires_us=now_us + 60_000_000),
        )
    env.clock.advance(61)
    late = _enroll_reply(env, expiring, "ws-4", Ed25519PrivateKey.generate())
    assert late.status_code == 401 and "expired" in late.json()["detail"]


# --- inventory and signers by name (items 7, 8) --------------------------------------------


@dataclass(frozen=True)
class CliRun:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(
    env: DashboardEnv,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., CliRun]:
    """``proscribe collector ARGS --config FILE`` (a config naming the env's database) through
    the CLI's own ``main`` in this process (a new interpreter importing the collector was most
    of these tests' time; tests/integration/test_cli_every_verb.py runs every verb as a real
    process), ``stdin`` as its standard input."""
    config = tmp_path / "collector.toml"
    config.write_text(f'[database]\nurl = "{env.db_url}"\n')

    def run(*args: str, stdin: str | None = None) -> CliRun:
        capsys.readouterr()
        stream = io.TextIOWrapper(io.BytesIO((stdin or "").encode()), encoding="utf-8")
        monkeypatch.setattr(sys, "stdin", stream)
        try:
            code = main(["collector", *args, "--config", str(config)])
        except SystemExit as stop:  # argparse's own usage errors
            code = stop.code if isinstance(stop.code, int) else 2
        out, err = capsys.readouterr()
        return CliRun(code, out, err)

    return run


INVENTORY = """hostname,asset_id,owner,group,machine_id
ws-a,A-1,alice,finance,
ws-renamed,A-2,bob,finance,{machine}
ws-gone,A-3,carol,legal,
"""


def test_inventory_import_matches_by_machine_id_or_hostname_and_scopes_reports(
    env: DashboardEnv, cli: Callable[..., CliRun]
) -> None:
    by_name = env.enroll("WS-A")  # hostname matches case-insensitively
    by_machine = env.enroll_agent(env.secret, "laptop-77", machine_id=MACHINE)
    outsider = env.enroll("ws-outside")
    for agent in (by_name, by_machine, outsider):
        env.heartbeat(agent, health=_health())
    bad = cli("inventory", "import", "-", stdin="host,owner\nx,y\n")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "hostname" in bad.stderr and "fix:" in bad.stderr
    dup_rows = INVENTORY.format(machine=MACHINE) + "WS-A,A-9,x,y,\n"
    dup = cli("inventory", "import", "-", stdin=dup_rows)
    assert dup.returncode == 2 and "<stdin>:5" in dup.stderr
    done = cli("inventory", "import", "-", stdin=INVENTORY.format(machine=MACHINE))
    assert done.returncode == 0, done.stderr
    listed = json.loads(cli("inventory", "list", "--json").stdout)
    rows = {r["hostname"]: r for r in listed}
    assert rows["WS-A"]["matched_by"] == "hostname"
    assert rows["laptop-77"]["matched_by"] == "machine id"
    assert rows["laptop-77"]["inventory"]["asset_id"] == "A-2"
    assert rows["ws-gone"]["state"] == "never_enrolled" and rows["ws-gone"]["agent_id"] is None
    assert rows["ws-outside"]["inventory"] is None  # enrolled, not in the inventory
    env.clock.advance(1)
    now_us = int(env.clock.now * 1e6)
    with env.db.read() as conn:
        everyone = build_report(
            conn, since_us=now_us - 500_000, until_us=now_us, now_us=now_us, heartbeat_window_s=180
        )
        finance = build_report(
            conn,
            since_us=now_us - 500_000,
            until_us=now_us,
            now_us=now_us,
            heartbeat_window_s=180,
            group="finance",
        )
    assert everyone.period is not None and finance.period is not None
    assert everyone.period.in_scope == 3  # the inventory, not the enrolled agents
    assert everyone.headline.startswith("2 of 3 in-scope hosts enforcing")
    assert {h.hostname for h in finance.period.hosts} == {"WS-A", "laptop-77"}
    assert finance.headline.startswith("2 of 2 in-scope hosts in group finance")
    never = next(h for h in everyone.period.hosts if h.hostname == "ws-gone")
    assert [g.reason for g in never.gaps] == ["never enrolled"]


def test_signers_are_named_on_the_report_cover(
    env: DashboardEnv, cli: Callable[..., CliRun]
) -> None:
    from proscribe.core.policy.keys import key_id, public_key_string
    from tests.support.sample import store_sample_policies

    key = Ed25519PrivateKey.generate()
    store_sample_policies(env.db, env.clock.now, key)
    text = public_key_string(key.public_key())
    added = cli("signer", "add", text, "--name", "Vera Lind", "--role", "CISO")
    assert added.returncode == 0, added.stderr
    again = cli("signer", "add", text, "--name", "Someone Else")
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    # Agents hear the names in the heartbeat's answer (for `agent status`).
    agent = env.enroll("ws-named")
    reply = env.signed(*agent, "POST", "/api/v1/heartbeat", b"{}")
    assert reply.json()["signers"] == {key_id(key.public_key()): "Vera Lind (CISO)"}
    viewer = env.login("vera")
    page = viewer.get("/report").text
    assert "Vera Lind (CISO)" in page
    data = json.loads(viewer.get("/report/export.json").text)
    assert data["policy"]["signers"] == [
        {"keyid": key_id(key.public_key()), "name": "Vera Lind", "role": "CISO", "retired": False}
    ]
    assert cli("signer", "retire", key_id(key.public_key())).returncode == 0
    assert "Vera Lind (CISO), retired" in viewer.get("/policy").text


def test_inventory_and_signers_through_the_people_api(env: DashboardEnv) -> None:
    from proscribe.collector.storage import admin_actions
    from proscribe.core.policy.keys import public_key_string

    with env.db.write() as conn:
        _pw, token = admin_actions.add_user(
            conn, "apiadmin", "admin", actor="test", via="test", now_us=int(env.clock.now * 1e6)
        )
    auth = {"Authorization": f"Bearer {token}"}
    bad = env.client.put("/api/v1/inventory", json={"csv": "hostname\nws 1\n"}, headers=auth)
    assert bad.status_code == 422 and "csv:" in bad.json()["detail"]
    good = env.client.put(
        "/api/v1/inventory", json={"csv": INVENTORY.format(machine=MACHINE)}, headers=auth
    )
    assert good.status_code == 200 and good.json() == {"imported": 3}
    listed = env.client.get("/api/v1/inventory", headers=auth).json()
    assert {h["hostname"] for h in listed["inventory"]} == {"ws-a", "ws-renamed", "ws-gone"}
    assert all(h["compliance"]["state"] == "never_enrolled" for h in listed["inventory"])
    key = public_key_string(Ed25519PrivateKey.generate().public_key())
    made = env.client.post("/api/v1/signers", json={"public_key": key, "name": "V"}, headers=auth)
    assert made.status_code == 200, made.text
    dup = env.client.post("/api/v1/signers", json={"public_key": key, "name": "W"}, headers=auth)
    assert dup.status_code == 409
    junk = env.client.post("/api/v1/signers", json={"public_key": "x", "name": "W"}, headers=auth)
    assert junk.status_code == 422
    keyid = made.json()["keyid"]
    assert env.client.delete(f"/api/v1/signers/{keyid}", headers=auth).status_code == 200
    assert env.client.delete(f"/api/v1/signers/{keyid}", headers=auth).status_code == 404


def test_dashboard_imports_the_inventory_and_shows_never_enrolled(env: DashboardEnv) -> None:
    env.enroll("ws-a")
    viewer = env.login("vera")
    refused = viewer.post("/admin/inventory", data={"csv": "x", "csrf": env.csrf("/")})
    assert refused.status_code == 403  # viewers cannot
    env.login("adam")
    bad = env.client.post(
        "/admin/inventory", data={"csv": "hostname,asset_id\nws-a,1\n", "csrf": env.csrf("/admin")}
    )
    assert bad.status_code == 400 and "owner, group" in bad.text
    done = env.client.post(
        "/admin/inventory",
        data={"csv": INVENTORY.format(machine=MACHINE), "csrf": env.csrf("/admin")},
        follow_redirects=False,
    )
    assert done.status_code == 303
    page = env.client.get("/hosts").text
    assert "never enrolled" in page and "ws-gone" in page and "A-1" in page
    assert "matched by hostname" in page


def test_period_coverage_of_a_fleet_larger_than_a_query_can_bind(env: DashboardEnv) -> None:
    """100,000 hosts in scope (more than PostgreSQL's 65,535 and SQLite's 32,766 bind
    parameters a query): the coverage is computed in slices, every host in it, the real ones
    with their history; the report of a 100k fleet answered 500 before."""
    from proscribe.collector.compliance import period_coverage

    real = env.enroll("ws-real")
    env.heartbeat(real)
    scope = [(real[0], "ws-real")] + [(f"{i:032x}", f"ws-{i:06d}") for i in range(100_000)]
    now_us = int(env.clock.now * 1e6)
    period = {
        "since_us": now_us - 3600 * 1_000_000,
        "until_us": now_us + 1,
        "now_us": now_us,
        "window_us": 180_000_000,
        "directive": None,
    }
    with env.db.read() as conn:
        cover = period_coverage(conn, scope=scope, **period)
        alone = period_coverage(conn, scope=scope[:1], **period)
    assert len(cover.hosts) == 100_001
    assert cover.hosts[0] == alone.hosts[0]  # the real host's history and last heartbeat
    assert all(h.gaps for h in cover.hosts[1:])  # never heard from: a gap over the period


def _oracle(conn: Any, agent_id: str, **period: Any) -> list[Any]:
    """One host's gaps as the coverage computed them before its reads were batched: its own
    history and last heartbeat, read alone, replayed by host_period."""
    from proscribe.collector.compliance import _json_dict, host_period
    from proscribe.collector.storage.tables import host_history, hosts

    rows = [
        (int(r.time_us), r.kind, _json_dict(r.detail))
        for r in conn.execute(
            select(host_history.c.time_us, host_history.c.kind, host_history.c.detail)
            .where(host_history.c.agent_id == agent_id)
            .where(host_history.c.time_us < period["until_us"])
            .order_by(host_history.c.time_us, host_history.c.seq)
        )
    ]
    seen = conn.execute(select(hosts.c.last_seen_us).where(hosts.c.agent_id == agent_id)).scalar()
    return host_period(
        rows,
        since_us=period["since_us"],
        until_us=min(period["until_us"], period["now_us"]),
        last_seen_us=None if seen is None else int(seen),
        window_us=period["window_us"],
        directive=period["directive"],
    )


def test_period_coverage_read_in_bulk_equals_each_host_replayed_alone(
    env: DashboardEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Varied timelines — steady, a goodbye and a restart, a silence and a resume, monitor
    then enforce, a sensor down then up, another policy, drops, enrolled mid-period, never
    heard from, and a host outside the scope — give the same gaps whether the scope is read
    by IN lists or whole (a large scope: every row read, the scope's kept), and the same as
    each host's own history replayed alone, for periods cut anywhere in the timelines."""
    from proscribe.collector import compliance

    names = ("steady", "restart", "silent", "monitor", "sensor", "policy", "drops", "late")
    hosts = {name: env.enroll(f"ws-{name}") for name in names}
    never, outside = env.enroll("ws-never"), env.enroll("ws-outside")
    dns_down = _health(sensors={"process": {"state": "running", "alive": False}})
    start = env.clock.now
    for step in range(12):
        for name, agent in hosts.items():
            if name == "late" and step < 5:
                continue
            if name == "silent" and 3 <= step < 8:
                continue
            changes: dict[str, Any] = {"health": _health()}
            if name == "restart" and step == 4:
                changes["goodbye"] = {"by": "SIGTERM from systemd"}
            if name == "monitor" and step < 6:
                changes["mode"] = "monitor"
            if name == "sensor" and 2 <= step < 7:
                changes["health"] = dns_down
            if name == "policy" and step >= 7:
                changes["policy"] = {"id": "another-policy", "serial": 3, "sha256": "cd" * 32}
            if name == "drops" and step >= 9:
                changes["health"] = _health(drops={"spool.full": step, "spool.folded": 0})
            env.heartbeat(agent, **changes)
        env.heartbeat(outside, mode="monitor", health=_health())
        env.clock.advance(60)
    now_us = int(env.clock.now * 1e6)
    start_us = int(start * 1e6)
    scope: list[tuple[str | None, str]] = [(a[0], f"ws-{n}") for n, a in hosts.items()]
    scope.append((never[0], "ws-never"))
    scope.append((None, "ws-in-inventory-only"))
    for since_us, until_us, directive in (
        (start_us - 3_600_000_000, now_us + 1, None),  # before the first heartbeat
        (start_us + 150_000_000, now_us - 200_000_000, None),  # cut inside the timelines
        (start_us + 301_000_000, now_us + 1, "us-navy-deepseek-2025"),
        (start_us + 420_000_000, start_us + 421_000_000, None),  # one second
    ):
        period: dict[str, Any] = {"since_us": since_us, "until_us": until_us, "now_us": now_us,
                  "window_us": 180_000_000, "directive": directive}  # fmt: skip
        with env.db.read() as conn:
            by_lists = compliance.period_coverage(conn, scope=scope, **period)
            monkeypatch.setattr(compliance, "IN_SLICE", 1)  # every scope is "large"
            whole = compliance.period_coverage(conn, scope=scope, **period)
            monkeypatch.undo()
            now = compliance.fleet(conn, now_us=now_us, window_us=180_000_000)
            seen = {h.host.agent_id: h.host.last_seen_us for h in now.hosts if h.host}
            told = compliance.period_coverage(conn, scope=scope, last_seen=seen, **period)
            alone = {a: _oracle(conn, a, **period) for a, _h in scope if a is not None}
        assert by_lists == whole == told  # told: the last heartbeats the report's fleet read
        assert [h.hostname for h in whole.hosts] == [h for _a, h in scope]  # no ws-outside
        for h in whole.hosts:
            if h.agent_id is not None:
                assert list(h.gaps) == alone[h.agent_id], h.hostname
        reasons = {h.hostname: {g.reason for g in h.gaps} for h in whole.hosts}
        if since_us > start_us:  # a test that can fail: a steady host has no gap
            assert reasons["ws-steady"] == set()
        else:
            assert "not reporting yet (first heartbeat)" in reasons["ws-late"]
        assert reasons["ws-never"] == {"never reported"}
        assert reasons["ws-in-inventory-only"] == {"never enrolled"}


def test_report_html_lists_the_hosts_to_look_at_capped_and_json_lists_every_host(
    env: DashboardEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTML names the hosts with a gap or not enforcing now, at most MAX_HTML_ROWS of them
    with an "N more" line; the enforcing, continuous ones are counted, not listed; the JSON
    export still lists every host."""
    import proscribe.collector.web.report as report_module
    from proscribe.collector.web.report import report_html, report_text

    since_us = int(env.clock.now * 1e6)
    good = [env.enroll(f"ws-good-{i}") for i in range(3)]
    bad = [env.enroll(f"ws-mon-{i}") for i in range(4)]
    for _step in range(3):
        for agent in good:
            env.heartbeat(agent, health=_health())
        for agent in bad:
            env.heartbeat(agent, mode="monitor", health=_health())
        env.clock.advance(60)
    now_us = int(env.clock.now * 1e6)
    monkeypatch.setattr(report_module, "MAX_HTML_ROWS", 2)
    with env.db.read() as conn:
        report = build_report(
            conn, since_us=since_us, until_us=now_us, now_us=now_us, heartbeat_window_s=180
        )
        text = report_text(
            conn, fmt="json", since_us=since_us, until_us=now_us, now_us=now_us,
            heartbeat_window_s=180,
        )  # fmt: skip
    review = report.review(2)
    assert review.to_review == 4 and review.more == 2
    assert [h.hostname for h, _st in review.listed] == ["ws-mon-0", "ws-mon-1"]
    html = report_html(report)
    assert "ws-mon-0" in html and "ws-mon-1" in html and "ws-mon-2" not in html
    assert "ws-good-0" not in html  # enforcing, no gap: counted, not listed
    assert "2 more: see the JSON export" in html
    assert "3 enforcing now with no gap in the period (not listed), 4 with a gap" in html
    data = json.loads(text)
    assert {h["hostname"] for h in data["period_coverage"]} == {
        *(f"ws-good-{i}" for i in range(3)),
        *(f"ws-mon-{i}" for i in range(4)),
    }


def test_a_report_pauses_the_garbage_collector_and_restores_it(
    env: DashboardEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cyclic collector is paused while a report builds (nested and concurrent builds
    share the pause) and left as it was found: enabled after, or still disabled if it was."""
    import gc
    import threading

    from proscribe.collector.web import report as report_module

    seen: list[bool] = []
    real = report_module.fleet

    def watching(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    assert gc.isenabled()
    monkeypatch.setattr(report_module, "fleet", watching)
    _report(env)
    assert seen and not any(seen) and gc.isenabled()
    entered, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with report_module._gc_paused():
            entered.set()
            leave.wait(10)

    other = threading.Thread(target=hold)
    other.start()
    assert entered.wait(10)
    _report(env)  # ends while the other still holds the pause
    assert not gc.isenabled()
    leave.set()
    other.join(10)
    assert gc.isenabled()
    gc.disable()
    try:
        _report(env)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_at_most_two_reports_at_once_read_on_a_second_connection(
    env: DashboardEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report waits for its second connection while holding its first: past APART_AT_ONCE
    reports at once, the others read on their one connection (a burst could otherwise hold
    the whole pool waiting for itself) and build the same report."""
    from proscribe.collector.web import report as report_module

    apart: list[int] = []
    real = report_module._read_apart

    def counting(*args: Any) -> Any:
        apart.append(1)
        return real(*args)

    monkeypatch.setattr(report_module, "_read_apart", counting)
    env.heartbeat(env.enroll("ws-burst"), health=_health())
    _report(env)
    assert len(apart) == 1
    held = [
        report_module._apart.acquire(blocking=False) for _ in range(report_module.APART_AT_ONCE)
    ]
    try:
        assert all(held)
        _report(env)  # both halves on the request's connection, the same report
        assert len(apart) == 1
    finally:
        for _ in held:
            report_module._apart.release()
    _report(env)
    assert len(apart) == 2


def test_report_reads_the_first_max_rows_stale_hosts_and_counts_them_all(
    env: DashboardEnv,
) -> None:
    """The HTML lists max_rows stale hosts (read with a limit: a fleet that stopped reporting
    is 100,000 of them) and counts every one; an export lists them all."""
    from proscribe.collector.web.report import report_html

    silent = [env.enroll(f"ws-quiet-{i}") for i in range(4)]
    for agent in silent:
        env.heartbeat(agent, health=_health())
    live = env.enroll("ws-live")
    env.clock.advance(600)
    env.heartbeat(live, health=_health())
    now_us = int(env.clock.now * 1e6)
    period: dict[str, Any] = {"since_us": now_us - 3600 * 1_000_000, "until_us": now_us,
                              "now_us": now_us, "heartbeat_window_s": 180}  # fmt: skip
    with env.db.read() as conn:
        capped = build_report(conn, max_rows=2, **period)
        export = build_report(conn, max_rows=0, **period)
    assert [a.hostname for a in capped.stale_hosts] == ["ws-quiet-0", "ws-quiet-1"]
    assert capped.stale_total == export.stale_total == 4
    assert [a.hostname for a in export.stale_hosts] == [f"ws-quiet-{i}" for i in range(4)]
    html = report_html(capped)
    assert "Stale hosts (4)" in html
    assert "ws-quiet-1" in html.split("Stale hosts (4)")[1]
    assert "ws-quiet-2" not in html.split("Stale hosts (4)")[1]
    assert "2 more: see the JSON export" in html.split("Stale hosts (4)")[1]
