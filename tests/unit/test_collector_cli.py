"""``proscribe collector …`` verbs, in-process through the real ``proscribe`` entry point."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from sqlalchemy import insert

from proscribe.cli import main
from proscribe.collector.storage import open_database
from proscribe.collector.storage.tables import events
from proscribe.collector.storage.users import principal_for_token


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "c.db"}"\n', encoding="utf-8")
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_secret_lifecycle(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(
        capsys, "collector", "enroll-secret", "create", "--label", "l1", "--config", str(config)
    )
    assert code == 0
    secret = out.strip()
    assert secret.startswith("pse_")
    secret_id = err.split("secret id ")[1].split(";")[0]
    code, out, _ = _run(
        capsys, "collector", "enroll-secret", "list", "--json", "--config", str(config)
    )
    listed = json.loads(out)
    assert [s["id"] for s in listed] == [secret_id]
    assert secret not in out
    assert (
        _run(capsys, "collector", "enroll-secret", "revoke", secret_id, "--config", str(config))[0]
        == 0
    )
    code, _, err = _run(
        capsys, "collector", "enroll-secret", "revoke", secret_id, "--config", str(config)
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1


def test_user_add_prints_a_working_token_once(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(
        capsys, "collector", "user", "add", "olivia", "--role", "viewer", "--config", str(config)
    )
    assert code == 0
    token = out.split("api token:")[1].strip()
    db = open_database(f"sqlite:///{config.parent / 'c.db'}")
    with db.read() as conn:
        principal = principal_for_token(conn, token)
        dump = " ".join(str(r) for r in conn.exec_driver_sql("SELECT * FROM api_tokens"))
    db.dispose()
    assert principal is not None
    assert principal.role == "viewer"
    assert token not in dump
    code, _, err = _run(
        capsys, "collector", "user", "add", "olivia", "--role", "admin", "--config", str(config)
    )
    assert code == 2
    assert "already exists" in err


def test_audit_verify_detects_tampering(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a", "b", "c"):
        _run(capsys, "collector", "user", "add", name, "--role", "admin", "--config", str(config))
    assert _run(capsys, "collector", "audit", "verify", "--config", str(config))[0] == 0
    db = open_database(f"sqlite:///{config.parent / 'c.db'}")
    with db.write() as conn:
        conn.exec_driver_sql("UPDATE audit_log SET target = 'mallory' WHERE seq = 2")
    db.dispose()
    code, _, err = _run(capsys, "collector", "audit", "verify", "--config", str(config))
    assert code == 1
    assert "entry 2" in err


def test_report_csv_and_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, "collector", "migrate", "--config", str(config))[0] == 0
    db = open_database(f"sqlite:///{config.parent / 'c.db'}")
    import time

    now_us = int(time.time() * 1e6)
    body = {
        "id": "x",
        "time": "t",
        "kind": "dns",
        "rule": "=HYPERLINK()",
        "action": "sinkholed",
        "severity": "high",
        "host": {"hostname": "ws-1", "agent_id": "a"},
    }
    with db.write() as conn:
        conn.execute(
            insert(events).values(
                event_id="x",
                agent_id="a",
                time_us=now_us,
                received_us=now_us,
                hostname="ws-1",
                username=None,
                rule="=HYPERLINK()",
                kind="dns",
                action="sinkholed",
                severity="high",
                body=json.dumps(body),
            )
        )
    db.dispose()
    code, out, _ = _run(
        capsys, "collector", "report", "--since", "1d", "--format", "csv", "--config", str(config)
    )
    assert code == 0
    (row,) = list(csv.DictReader(io.StringIO(out)))
    assert row["rule"] == "'=HYPERLINK()"
    code, out, _ = _run(capsys, "collector", "report", "--format", "json", "--config", str(config))
    assert [v["id"] for v in json.loads(out)["violations"]] == ["x"]
    code, out, _ = _run(capsys, "collector", "report", "--format", "html", "--config", str(config))
    assert code == 0
    assert out.lstrip().lower().startswith("<!doctype html>") and "Compliance report" in out
    assert "<script" not in out.lower()
    code, _, err = _run(
        capsys, "collector", "report", "--format", "html", "--host", "ws-1", "--config", str(config)
    )
    assert code == 2 and "--host/--rule" in err
    code, _, err = _run(capsys, "collector", "report", "--format", "pdf", "--config", str(config))
    assert code == 2
    assert "--format" in err
    code, _, err = _run(capsys, "collector", "report", "--since", "soon", "--config", str(config))
    assert code == 2
    assert "--since" in err


def test_bad_config_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nlisten = "0.0.0.0:8443"\n', encoding="utf-8")
    for verb in (["serve"], ["migrate"], ["agent", "list"]):
        code, _, err = _run(capsys, "collector", *verb, "--config", str(bad))
        assert code == 2
        assert "server.listen" in err
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def test_nonce_commits_do_not_leave_sqlite_relaxed(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'd.db'}")
    with db.write(durable=False) as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 1  # NORMAL
    for _ in range(3):  # whichever pooled connection comes back
        with db.write() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2  # FULL
    db.dispose()


def test_user_list_reset_and_disable(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--config", str(config))
    _code, out, _ = _run(capsys, "collector", "user", "add", "olivia", "--role", "viewer", *args)
    first = out.split("api token:")[1].strip()
    code, out, err = _run(capsys, "collector", "user", "reset", "olivia", *args)
    assert code == 0 and "older tokens are revoked" in err
    second = out.split("api token:")[1].strip()
    assert second != first and "password:" in out
    db = open_database(f"sqlite:///{config.parent / 'c.db'}")
    with db.read() as conn:
        assert principal_for_token(conn, first) is None
        assert principal_for_token(conn, second) is not None
    code, out, _ = _run(capsys, "collector", "user", "list", "--json", *args)
    assert [
        (u["name"], u["role"], u["active_tokens"], u["disabled_us"]) for u in json.loads(out)
    ] == [("olivia", "viewer", 1, None)]
    code, out, _ = _run(capsys, "collector", "user", "disable", "olivia", *args)
    assert code == 0 and "1 API token(s) revoked" in out
    with db.read() as conn:
        assert principal_for_token(conn, second) is None
        actions = [r[0] for r in conn.exec_driver_sql("SELECT action FROM audit_log ORDER BY seq")]
    db.dispose()
    assert actions == ["user.add", "user.reset", "user.disable"]
    code, out, _ = _run(capsys, "collector", "user", "list", *args)
    assert "olivia" in out and out.splitlines()[1].split()[-1] == "0"
    for verb in ("disable", "reset"):  # disabled (or unknown): one line, exit 2
        code, _, err = _run(capsys, "collector", "user", verb, "olivia", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "user list" in err
    assert _run(capsys, "collector", "audit", "verify", *args)[0] == 0


def test_purge_deletes_only_what_is_older_in_chunks_and_is_audited(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from proscribe.collector.storage import events as event_store
    from proscribe.collector.storage.tables import host_history

    args = ("--config", str(config))
    assert _run(capsys, "collector", "migrate", *args)[0] == 0
    now_us = int(time.time() * 1e6)
    day = 86_400 * 10**6
    ages = [500, 450, 401, 399, 10, 0]  # days
    db = open_database(f"sqlite:///{config.parent / 'c.db'}")
    with db.write() as conn:
        for i, age in enumerate(ages):
            conn.execute(
                insert(events).values(
                    event_id=f"e{i}", agent_id="a", time_us=now_us - age * day,
                    received_us=now_us, hostname="ws", username=None, rule="r", kind="dns",
                    action="reported", severity="high", body="{}",
                )
            )  # fmt: skip
            conn.execute(
                insert(host_history).values(
                    agent_id="a", time_us=now_us - age * day, kind="changed", detail="{}"
                )
            )
    monkeypatch.setattr(event_store, "PURGE_CHUNK", 2)  # several chunks, several commits
    code, out, _ = _run(capsys, "collector", "purge", "--older-than", "400d", "--dry-run", *args)
    assert code == 0 and "would delete 3 events and 3 host history rows" in out
    with db.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM events").scalar() == 6
    code, out, _ = _run(capsys, "collector", "purge", "--older-than", "400d", *args)
    assert code == 0 and "deleted 3 events and 3 host history rows" in out
    with db.read() as conn:
        left = sorted(r[0] for r in conn.exec_driver_sql("SELECT event_id FROM events"))
        history = conn.exec_driver_sql("SELECT count(*) FROM host_history").scalar()
        audit = conn.exec_driver_sql("SELECT action, detail FROM audit_log").all()
    db.dispose()
    assert left == ["e3", "e4", "e5"] and history == 3
    assert audit[-1][0] == "events.purge"
    assert json.loads(audit[-1][1]) == {"events": 3, "host_history": 3}
    for bad, why in (("12m", "minutes"), ("soon", "is not a time"), ("2h", "last day")):
        code, _, err = _run(capsys, "collector", "purge", "--older-than", bad, *args)
        assert code == 2 and why in err and len(err.strip().splitlines()) == 1, err
