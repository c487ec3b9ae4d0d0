"""Backup and restore of the evidence database, as docs/operations.md tells an operator:
SQLite with ``proscribe collector backup`` while the collector takes events, PostgreSQL with
``pg_dump``/``pg_restore``; after a restore every event is there byte for byte, the audit chain
verifies, and a collector starts on it."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from proscribe.collector.storage import open_database
from proscribe.collector.storage.tables import events
from tests.support.forward_env import ForwardEnv, forwarding_collector
from tests.support.forward_env import events as make_events
from tests.support.postgres import throwaway_database


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proscribe.cli", "collector", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _bodies(url: str) -> dict[str, str]:
    db = open_database(url)
    try:
        with db.read() as conn:
            return {
                r.event_id: r.body for r in conn.execute(select(events.c.event_id, events.c.body))
            }
    finally:
        db.dispose()


def _config(folder: Path, url: str) -> Path:
    path = folder / "collector.toml"
    path.write_text(f'[database]\nurl = "{url}"\n')
    return path


def _audit_something(env: ForwardEnv) -> None:
    from proscribe.collector.storage import admin_actions

    with env.db.write() as conn:
        admin_actions.create_enroll_secret(conn, "before backup", actor="test", via="cli", now_us=1)


def test_sqlite_online_backup_while_events_arrive(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    with forwarding_collector(live, []) as env:
        _audit_something(env)
        env.post(make_events(300))
        before = _bodies(f"sqlite:///{live / 'collector.db'}")
        stop = threading.Event()

        def keep_posting() -> None:  # the collector keeps taking events during the backup
            start = 300
            while not stop.is_set():
                env.post(make_events(20, start=start))
                start += 20

        writer = threading.Thread(target=keep_posting)
        writer.start()
        try:
            result = _cli(
                "backup",
                "--to",
                str(tmp_path / "backup.db"),
                "--config",
                str(_config(live, f"sqlite:///{live / 'collector.db'}")),
            )
        finally:
            stop.set()
            writer.join()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("backed up ") and "integrity_check ok" in result.stdout
    backup = tmp_path / "backup.db"
    assert backup.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(backup) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # restore: the file becomes a collector's database
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copyfile(backup, restored / "collector.db")
    (restored / "collector.db").chmod(0o600)
    url = f"sqlite:///{restored / 'collector.db'}"
    after = _bodies(url)
    assert {k: after[k] for k in before} == before  # every event from before, byte for byte
    config = _config(restored, url)
    verify = _cli("audit", "verify", "--config", str(config))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # a second backup to the same name is refused in one line, nothing overwritten
    again = _cli("backup", "--to", str(backup), "--config", str(config))
    assert (
        again.returncode == 2 and "exists" in again.stderr and len(again.stderr.splitlines()) == 1
    )


def test_backup_of_postgresql_points_at_pg_dump(tmp_path: Path) -> None:
    config = _config(tmp_path, "postgresql+psycopg://nobody@127.0.0.1:1/none")
    result = _cli("backup", "--to", str(tmp_path / "b.db"), "--config", str(config))
    assert result.returncode == 2
    assert "cannot connect" in result.stderr or "pg_dump" in result.stderr


@pytest.mark.postgres
def test_postgresql_pg_dump_and_pg_restore(tmp_path: Path) -> None:
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.fail("pg_dump/pg_restore missing (apt-get install postgresql-client)")
    with (
        throwaway_database("proscribe_bk") as source_url,
        throwaway_database("proscribe_rs") as target_url,
    ):
        with forwarding_collector(tmp_path, [], database_url=source_url) as env:
            _audit_something(env)
            env.post(make_events(250))
        pg_backup = _cli(
            "backup", "--to", str(tmp_path / "x.db"), "--config", str(_config(tmp_path, source_url))
        )
        assert pg_backup.returncode == 2 and "pg_dump" in pg_backup.stderr
        plain = source_url.replace("postgresql+psycopg://", "postgresql://")
        dump = tmp_path / "collector.dump"
        subprocess.run(
            ["pg_dump", "--format=custom", f"--file={dump}", plain], check=True, timeout=120
        )
        target_plain = target_url.replace("postgresql+psycopg://", "postgresql://")
        subprocess.run(
            ["pg_restore", "--no-owner", f"--dbname={target_plain}", str(dump)],
            check=True,
            timeout=120,
        )
        before = _bodies(source_url)
        after = _bodies(target_url)
        assert len(after) == 250 and after == before
        restored = tmp_path / "restored"
        restored.mkdir()
        config = _config(restored, target_url)
        assert _cli("migrate", "--config", str(config)).returncode == 0
        verify = _cli("audit", "verify", "--config", str(config))
        assert verify.returncode == 0, verify.stdout + verify.stderr
        # the restored database takes new events: its sequence was restored too
        with forwarding_collector(restored, [], database_url=target_url) as env:
            env.post(make_events(5, start=250))
        assert len(_bodies(target_url)) == 255
        assert json.loads(next(iter(after.values())))["kind"] == "process"
