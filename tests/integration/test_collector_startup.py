"""Starting the collector with a careless setup (issue 15, collector): every mistake is one line
naming the file or key and the fix, exit 2, before anything says it is listening — never a
traceback. And the evidence database is the collector user's alone (0600), beside the config
when the URL is relative, in a folder that must exist. The real ``proscribe`` command."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from proscribe.core.events import new_event
from tests.support.devserver import CollectorProcess
from tests.support.ports import free_tcp_port
from tests.support.simulate import SimulatedAgent
from tests.support.tls_files import self_signed

pytestmark = pytest.mark.slow

PROSCRIBE = [sys.executable, "-m", "proscribe.cli"]


def _run(verb: str, config: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PROSCRIBE, "collector", verb, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def _config(folder: Path, text: str) -> Path:
    path = folder / "collector.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _assert_one_line_exit_2(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert "listening" not in output
    assert result.stderr.count("\n") == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def _tls_config(tmp_path: Path, cert: Path, key: Path) -> Path:
    return _config(
        tmp_path,
        f'[server]\nlisten = "127.0.0.1:{free_tcp_port()}"\n'
        f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
        f'[database]\nurl = "sqlite:///{tmp_path / "c.db"}"\n',
    )


def test_tls_files_that_are_not_pem(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "good")
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not a certificate\n")
    junk.chmod(0o600)
    result = _run("serve", _tls_config(tmp_path, junk, key))
    _assert_one_line_exit_2(result, "server.tls_cert", "not a PEM certificate")
    result = _run("serve", _tls_config(tmp_path, cert, junk))
    _assert_one_line_exit_2(result, "server.tls_key", "not a PEM private key")


def test_a_key_that_is_not_the_certificates(tmp_path: Path) -> None:
    cert, _key = self_signed(tmp_path, "one")
    _cert, other_key = self_signed(tmp_path, "two")
    result = _run("serve", _tls_config(tmp_path, cert, other_key))
    _assert_one_line_exit_2(result, "does not belong to server.tls_cert")


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604])
def test_a_tls_key_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    cert, key = self_signed(tmp_path, "loose")
    key.chmod(mode)
    result = _run("serve", _tls_config(tmp_path, cert, key))
    _assert_one_line_exit_2(result, "server.tls_key", "readable by others", "chmod 600")


def test_a_sqlite_url_at_a_file_that_is_no_database(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list\n" * 100)
    notes.chmod(0o644)
    config = _config(tmp_path, f'[database]\nurl = "sqlite:///{notes}"\n')
    for verb in ("serve", "migrate"):
        _assert_one_line_exit_2(_run(verb, config), str(notes), "not a SQLite database")
    assert notes.read_text().startswith("shopping list")
    assert _mode(notes) == 0o644  # not ours: left as it was


def test_a_missing_folder_is_named_not_created(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir" / "collector.db"
    config = _config(tmp_path, f'[database]\nurl = "sqlite:///{target}"\n')
    _assert_one_line_exit_2(_run("migrate", config), str(target.parent), "does not exist")
    assert not (tmp_path / "no").exists()


def test_a_relative_sqlite_path_is_beside_the_config_not_the_working_directory(
    tmp_path: Path,
) -> None:
    etc = tmp_path / "etc"
    elsewhere = tmp_path / "elsewhere"
    etc.mkdir()
    elsewhere.mkdir()
    config = _config(etc, '[database]\nurl = "sqlite:///relcheck.db"\n')
    result = _run("migrate", config, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert (etc / "relcheck.db").is_file()
    assert not (elsewhere / "relcheck.db").exists()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_evidence_database_is_the_collector_users_alone(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a usual umask: without care SQLite would make 0644 files
    try:
        server = CollectorProcess(tmp_path / "srv")
        with server:
            db = tmp_path / "srv" / "collector.db"
            from proscribe.collector.storage import open_database
            from proscribe.collector.storage.agents import create_enroll_secret

            store = open_database(server.database_url)
            with store.write() as conn:
                secret = create_enroll_secret(conn, "perm", 0)[1]
            agent = SimulatedAgent(server.url)
            try:
                assert agent.enroll(secret).status == 200
                event = new_event("dns", rule="r", action="sinkholed", dns={"qname": "a.b"})
                assert agent.post_events([event]).status == 200
            finally:
                agent.close()
            files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
            assert all(f.exists() for f in files)  # WAL mode, the server holds it open
            assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
            store.dispose()
    finally:
        os.umask(old)


def test_an_existing_database_others_could_read_is_brought_to_0600(tmp_path: Path) -> None:
    db = tmp_path / "collector.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    db.chmod(0o644)
    config = _config(tmp_path, f'[database]\nurl = "sqlite:///{db}"\n')
    assert _run("migrate", config).returncode == 0
    assert _mode(db) == 0o600
