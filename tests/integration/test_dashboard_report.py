"""The compliance report and the overview's numbers against what was actually stored.

Policies are the shipped US Navy pack uploaded as serials 1 and 2 (with one active and one
expired exemption); hosts enroll, heartbeat and report through the real signed API."""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, func, select

from proscribe.collector.storage import counts, queries
from proscribe.collector.storage.events import purge_chunk
from proscribe.collector.storage.policies import current_policy
from proscribe.collector.storage.tables import (
    audit_log,
    events,
    violation_blocks,
    violation_counts,
)
from proscribe.collector.web import rollup
from proscribe.collector.web.chart import nice_ceiling, violations_chart
from proscribe.collector.web.pages import fetch_page
from proscribe.collector.web.report import _conditions as report_conditions
from proscribe.collector.web.report import _totals as report_totals
from proscribe.collector.web.report import build_report, report_text
from proscribe.collector.web.rollup import DAY_US
from proscribe.core.policy.envelope import parse_envelope
from tests.support.dashboard_env import JSON, DashboardEnv, EnvTemplates, event, make_env
from tests.support.sample import store_sample_policies


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(
    request: pytest.FixtureRequest, tmp_path: Path, env_templates: EnvTemplates
) -> Iterator[DashboardEnv]:
    yield from make_env(tmp_path, env_templates, request.param)


def populate(env: DashboardEnv) -> dict[str, tuple[str, object]]:
    store_sample_policies(env.db, env.clock.now)
    lab = env.enroll("ai-lab-01")
    old = env.enroll("ws-old")
    silent = env.enroll("ws-silent")
    env.heartbeat(lab, serial=2)
    env.heartbeat(old, serial=1)
    now = env.clock.now
    env.post_events(
        lab,
        [
            event(when=now - 60, action="killed"),
            event(when=now - 120, action="reported", rule="deepseek-model-argument"),
            event(
                when=now - 180,
                kind="dns",
                rule="deepseek-web",
                action="exempted",
                dns={"qname": "chat.deepseek.com"},
                process={"user": "alice"},
            ),
            event(when=now - 2 * 86400, kind="tamper", rule=None, action="reported"),
            event(when=now - 240, rule="some-other-policys-rule", action="reported"),
            event(when=now - 40 * 86400, action="killed"),  # outside a 30-day report
        ],
    )
    env.post_events(
        old,
        [
            event(
                when=now - 300,
                kind="dns",
                rule="deepseek-web",
                action="sinkholed",
                dns={"qname": "deepseek.com"},
            )
        ],
    )
    return {"lab": lab, "old": old, "silent": silent}  # type: ignore[dict-item]


def test_report_covers_the_policy_and_the_period(env: DashboardEnv) -> None:
    agents = populate(env)
    now_us = int(env.clock.now * 1e6)
    with env.db.read() as conn:
        report = build_report(
            conn,
            since_us=now_us - 30 * DAY_US,
            until_us=now_us,
            now_us=now_us,
            heartbeat_window_s=180,
        )
    assert report.policy is not None and report.policy.record.serial == 2
    assert [s.serial for s in report.serials] == [1, 2]
    assert report.total == 5  # the other policy's rule and the 40-day-old event are out
    assert report.totals == {"blocked": 2, "reported": 2, "exempted": 1}
    assert report.blocks_total == 2 and len(report.blocks) == 2
    assert dict(report.by_rule)["deepseek-web"] == 2
    assert "some-other-policys-rule" not in dict(report.by_rule)
    assert [e.id for e in report.exemptions_active] == ["red-team-eval"]
    assert [e.id for e in report.exemptions_expired] == ["procurement-review"]
    assert report.coverage.enrolled == 3
    assert report.coverage.reporting == 2
    assert report.coverage.stale == 1
    assert report.coverage.old_serial == 1
    assert [a.agent_id for a in report.stale_hosts] == [agents["silent"][0]]
    with env.db.read() as conn:
        stored = current_policy(conn)
        assert stored is not None
        keyids = [s.keyid for s in parse_envelope(stored.signature).signatures]
    assert list(report.policy.signers) == keyids


def test_encrypted_dns_connections_count_with_every_policy(env: DashboardEnv) -> None:
    agents = populate(env)
    env.post_events(
        agents["lab"],
        [
            event(
                when=env.clock.now - 30,
                kind="dns",
                rule="encrypted-dns",
                action="reported",
                dns={"qname": "Cloudflare", "qtype": "DoH", "resolver": "1.1.1.1:443"},
                process={"pid": 9, "name": "firefox", "user": "alice"},
            )
        ],
    )
    now_us = int(env.clock.now * 1e6)
    with env.db.read() as conn:
        report = build_report(
            conn, since_us=now_us - 30 * DAY_US, until_us=now_us, now_us=now_us,
            heartbeat_window_s=180,
        )  # fmt: skip
    assert report.total == 6  # the five of the policy's rules, and the DoH connection
    assert dict(report.by_rule)["encrypted-dns"] == 1
    assert "some-other-policys-rule" not in dict(report.by_rule)


def test_command_line_formats_carry_the_same_content(env: DashboardEnv) -> None:
    populate(env)
    now_us = int(env.clock.now * 1e6)
    args = {"since_us": now_us - 30 * DAY_US, "until_us": now_us, "now_us": now_us,
            "heartbeat_window_s": 180.0}  # fmt: skip
    with env.db.read() as conn:
        html = report_text(conn, fmt="html", **args)
        data = json.loads(report_text(conn, fmt="json", **args))
        rows = list(csv.DictReader(io.StringIO(report_text(conn, fmt="csv", **args))))
    # A self-contained file: the stylesheet inlined, nothing fetched from anywhere.
    assert "<style>" in html and "@media print" in html
    assert 'href="/static' not in html and "<script" not in html
    assert "Navy guidance: refrain from downloading" in html
    assert "red-team-eval" in html and "procurement-review" in html
    assert data["totals"] == {"violations": 5, "blocked": 2, "reported": 2, "exempted": 1}
    assert [s["serial"] for s in data["serials_in_force"]] == [1, 2]
    assert data["policy"]["directives"][0]["id"] == "us-navy-2025-01-24"
    assert len(data["violations"]) == 5
    assert data["coverage"]["stale"] == 1
    assert len(rows) == 5
    assert {r["rule"] for r in rows} == {
        "deepseek-desktop", "deepseek-model-argument", "deepseek-web", ""
    }  # fmt: skip


def test_report_page_and_policy_page(env: DashboardEnv) -> None:
    populate(env)
    env.login("vera")
    page = env.client.get("/report?since=30d").text
    assert "Serials in force" in page and "#1" in page and "#2" in page
    assert re.search(r'class="value">5</div><div class="muted">violations', page)
    policy = env.client.get("/policy").text
    assert "us-navy-deepseek-2025" in policy and "#2" in policy
    assert "Active exemptions (1)" in policy and "Expired exemptions (1)" in policy
    assert "Red-team evaluation" in policy
    with env.db.read() as conn:
        stored = current_policy(conn)
        assert stored is not None
        keyid = parse_envelope(stored.signature).signatures[0].keyid
    assert keyid in policy


def test_overview_numbers_match_the_database_and_follow_new_events(env: DashboardEnv) -> None:
    agents = populate(env)
    env.login("vera")
    page = env.client.get("/?period=90d").text
    with env.db.read() as conn:
        stored = conn.execute(
            select(func.count()).select_from(events).where(events.c.kind != "health")
        ).scalar_one()
    assert f"{stored:,} in total" in page
    lab = agents["lab"]
    env.post_events(lab, [event(when=env.clock.now - 5, action="denied")])  # type: ignore[arg-type]
    page = env.client.get("/?period=90d").text
    assert f"{stored + 1:,} in total" in page
    assert "blocked 4" in page


def truth(conn: Connection) -> dict[tuple[object, ...], int]:
    """The counts table's rows recomputed from the events themselves."""
    found: dict[tuple[object, ...], int] = {}
    for row in conn.execute(select(events)).mappings():
        key = counts.key_of(dict(row))
        if key is not None:
            found[key] = found.get(key, 0) + 1
    return found


def table(conn: Connection) -> dict[tuple[object, ...], int]:
    vc = violation_counts
    cols = (vc.c.day, vc.c.kind, vc.c.action, vc.c.severity, vc.c.rule, vc.c.hostname)
    more = (vc.c.username, vc.c.agent_id, vc.c.n)
    return {tuple(r[:-1]): int(r[-1]) for r in conn.execute(select(*cols, *more))}


def blocks_table(conn: Connection) -> dict[tuple[object, ...], int]:
    return {tuple(r[:-1]): int(r[-1]) for r in conn.execute(select(violation_blocks))}


def kept(conn: Connection) -> bool:
    """The daily counts and their blocks both equal what the events themselves give."""
    found = truth(conn)
    return table(conn) == found and blocks_table(conn) == dict(
        counts.blocks_of(Counter(found))  # type: ignore[arg-type]
    )


def test_counts_are_kept_at_ingest_skip_duplicates_and_follow_a_purge(env: DashboardEnv) -> None:
    populate(env)
    today = int(env.clock.now * 1e6) // DAY_US
    with env.db.read() as conn:
        assert kept(conn) and counts.total(conn) == 7
        assert rollup.period(conn, today - 89, today).total == 7
        assert rollup.period(conn, today - 29, today).rules["deepseek-web"] == 2
    # A batch sent again (a lost acknowledgement) stores nothing and counts nothing; a long
    # rule is counted under its first KEY_CHARS characters.
    lab = env.enroll("ws-dup")
    batch = [event(when=env.clock.now - 60, rule="r" * 1000), event(when=env.clock.now - 61)]
    env.post_events(lab, batch)  # type: ignore[arg-type]
    again = json.dumps({"events": batch}).encode()
    reply = env.signed(*lab, "POST", "/api/v1/events", again, headers=JSON)
    assert [r["status"] for r in reply.json()["results"]] == ["duplicate", "duplicate"]
    with env.db.read() as conn:
        assert kept(conn) and counts.total(conn) == 9
    # Violations on every few days of the last 80 (two agents, two rules, blocked and not):
    # whole blocks of days hold some, so the totals below read them from the blocks.
    spread = [
        event(when=env.clock.now - day * 86400 - 7, action=("killed", "reported")[day % 2],
              rule=("deepseek-web", "deepseek-desktop")[day % 3 == 0])
        for day in range(1, 80, 3)
    ]  # fmt: skip
    env.post_events(lab, spread[::2])  # type: ignore[arg-type]
    env.post_events(env.enroll("ws-spread"), spread[1::2])  # type: ignore[arg-type]
    with env.db.read() as conn:
        assert kept(conn) and counts.total(conn) == 9 + len(spread)
    # Report totals: whole blocks and days from the counts, the partial days at the edges
    # from the events; the same as grouping the events, for periods cut anywhere.
    now_us = int(env.clock.now * 1e6)
    block_start = today // counts.BLOCK_DAYS * counts.BLOCK_DAYS * DAY_US
    block_us = counts.BLOCK_DAYS * DAY_US
    with env.db.read() as conn:
        for since_us, until_us in (
            (now_us - 45 * DAY_US - 3_600_000_000, now_us),
            (now_us - 3 * DAY_US + 123, now_us - 2 * DAY_US + 456),
            (now_us - 50 * DAY_US, now_us - 30 * DAY_US),
            (today * DAY_US - 30 * DAY_US, (today + 1) * DAY_US),
            # Whole blocks of days inside, cut at block edges and anywhere in a block.
            (block_start - 3 * block_us, block_start + 5 * DAY_US + 7),
            (block_start - 4 * block_us, block_start),
            (block_start - 2 * block_us - DAY_US, block_start - block_us + DAY_US),
            (block_start - 2 * block_us + 1, block_start - 1),
            (now_us - 89 * DAY_US - 1234, now_us),
        ):
            for rule_ids in (None, ("deepseek-web", "deepseek-desktop")):
                got = report_totals(conn, since_us, until_us, rule_ids)
                by_action, by_rule = got.by_action, got.by_rule
                where = report_conditions(since_us, until_us, rule_ids)
                grouped = conn.execute(
                    select(events.c.action, events.c.rule, func.count())
                    .where(*where)
                    .group_by(events.c.action, events.c.rule)
                ).all()
                by_agent = conn.execute(
                    select(events.c.agent_id, func.count())
                    .where(*where)
                    .group_by(events.c.agent_id)
                ).all()
                assert +got.by_agent == Counter({a: n for a, n in by_agent})
                assert +by_action == Counter(
                    {a: sum(n for a2, _r, n in grouped if a2 == a) for a, _r, _n in grouped}
                )
                assert +by_rule == Counter(
                    {
                        (r or "")[: counts.KEY_CHARS]: sum(n for _a, r2, n in grouped if r2 == r)
                        for _a, r, _n in grouped
                    }
                )
    # The purge takes off what it deletes, in its own transaction.
    cutoff = int((env.clock.now - 20 * 86400) * 1e6)
    with env.db.write() as conn:
        before = conn.execute(
            select(func.count()).select_from(events).where(events.c.time_us < cutoff)
        ).scalar_one()
        assert before > 0
        purge_chunk(conn, cutoff)
    with env.db.read() as conn:
        assert kept(conn)
        assert counts.total(conn) == rollup.period(conn, today - 89, today + 1).total
        assert all(n > 0 for n in table(conn).values())


def test_blocks_an_older_collector_left_short_are_rebuilt_at_start_and_recount_restores_all(
    env: DashboardEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A collector older than migration 0009 still storing events after another replica
    migrated the database counts them by day only: the blocks then disagree with the days and
    a long report would read them short. The next collector to start finds the blocks that
    disagree and rebuilds them; ``collector recount`` rebuilds the days too, from the events
    (here after an old purge took days off without their blocks)."""
    from fastapi.testclient import TestClient
    from sqlalchemy import insert

    from proscribe.cli import main
    from proscribe.collector.app import create_app
    from proscribe.collector.config import settings_from_mapping
    from proscribe.collector.storage.dialect import dialect_insert
    from tests.support.clock import ManualClock
    from tests.support.sample import event_row

    populate(env)
    now = env.clock.now
    lab = env.enroll("ws-old-version")
    env.post_events(lab, [event(when=now - d * 86400) for d in (9, 17, 30)])  # type: ignore[arg-type]
    with env.db.read() as conn:
        assert kept(conn) and counts.disagreeing_blocks(conn) == []
    # What the older collector did: the events and their daily counts, no blocks.
    rows = []
    for days in (10, 18, 41):
        body = event(when=now - days * 86400, rule="old-version")
        body["host"] = {"hostname": "ws-old-version", "agent_id": lab[0]}
        rows.append(event_row(body, int((now - days * 86400) * 1e6)))
    with env.db.write() as conn:
        conn.execute(insert(events), rows)
        daily = counts.tally(rows)
        stmt = dialect_insert(conn, violation_counts)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(counts._COLUMNS),
            set_={"n": violation_counts.c.n + stmt.excluded.n},
        )
        conn.execute(stmt, [{**dict(zip(counts._COLUMNS, k, strict=True)), "n": n}
                            for k, n in daily.items()])  # fmt: skip
    since_us, until_us = int((now - 60 * 86400) * 1e6), int(now * 1e6)
    with env.db.read() as conn:
        assert table(conn) == truth(conn) and not kept(conn)
        short = sum(report_totals(conn, since_us, until_us, None).by_action.values())
        stored = conn.execute(
            select(func.count()).where(*report_conditions(since_us, until_us, None))
        ).scalar_one()
        assert short < stored  # what a report would say before the repair
        assert counts.disagreeing_blocks(conn)
    settings = settings_from_mapping({"database": {"url": env.db_url}}, base=tmp_path)
    with caplog.at_level("WARNING"), TestClient(create_app(settings, clock=ManualClock())):
        pass  # a collector starting on the database
    assert "violation_blocks disagreed with violation_counts" in caplog.text
    with env.db.read() as conn:
        assert kept(conn) and counts.disagreeing_blocks(conn) == []
        assert sum(report_totals(conn, since_us, until_us, None).by_action.values()) == stored
    # An old purge: the events and their days gone, their blocks left.
    with env.db.write() as conn:
        conn.execute(events.delete().where(events.c.rule == "old-version"))
        conn.execute(violation_counts.delete().where(violation_counts.c.rule == "old-version"))
        conn.execute(
            violation_counts.delete().where(violation_counts.c.day < int(now) // 86400 - 20)
        )
    with env.db.read() as conn:
        assert table(conn) != truth(conn)
    config = tmp_path / "collector.toml"
    config.write_text(f'[database]\nurl = "{env.db_url}"\n')
    assert main(["collector", "recount", "--config", str(config)]) == 0
    with env.db.read() as conn:
        assert kept(conn) and counts.disagreeing_blocks(conn) == []
        assert (
            conn.execute(
                select(func.count())
                .select_from(audit_log)
                .where(audit_log.c.action == "counts.recount")
            ).scalar_one()
            == 1
        )


def test_chart_is_plain_svg() -> None:
    assert [nice_ceiling(v) for v in (0, 1, 3, 7, 11, 180, 501)] == [1, 1, 5, 10, 20, 200, 1000]
    from collections import Counter

    svg = str(violations_chart([(20000, Counter(blocked=3, reported=2)), (20001, Counter())],
                               title="<t>"))  # fmt: skip
    assert svg.startswith("<svg") and "&lt;t&gt;" in svg
    assert "style=" not in svg and "<script" not in svg
    assert svg.count('class="bar-blocked"') == 2  # one bar and the legend swatch


def test_kind_and_action_filters_read_only_matching_days_with_the_same_answer(
    env: DashboardEnv,
) -> None:
    populate(env)
    lab = env.enroll("ws-many")
    now = env.clock.now
    env.post_events(
        lab,
        [
            event(when=now - i * 3 * 3600, action=("denied" if i % 4 else "failed"))
            for i in range(40)
        ],
    )
    now_us = int(now * 1e6)
    with env.db.read() as conn:
        for kind, action, severity in (
            ("process", "failed", None),
            (None, "denied", None),
            ("dns", None, None),
            (None, "exempted", "high"),
            (None, None, "critical"),
        ):
            flt = queries.ViolationFilter(
                since_us=now_us - 30 * DAY_US, kind=kind, action=action, severity=severity
            )
            expected, got = [], []
            cursor = None
            while True:
                page = queries.list_violations(conn, flt, cursor=cursor, limit=3)
                expected += [e["id"] for e in page.items]
                if not (cursor := page.next_cursor):
                    break
            cursor = None
            while True:
                page = fetch_page(conn, flt, cursor, 3, now_us)
                got += [e["id"] for e in page.items]
                if not (cursor := page.next_cursor):
                    break
            assert got == expected, (kind, action, severity)
        nothing = queries.ViolationFilter(since_us=now_us - 30 * DAY_US, action="would_block")
        assert rollup.days_with(conn, None, "would_block", None, None, None) == []
        assert rollup.days_with(conn, "process", "failed", "high", None, None) != []
        assert fetch_page(conn, nothing, None, 50, now_us).items == []
