"""collector.toml validation and the storage schema: migrations agree with tables.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proscribe.collector.config import load_collector_config, settings_from_mapping
from proscribe.collector.storage import open_database, upgrade
from proscribe.collector.storage.tables import metadata
from proscribe.core.errors import ConfigError
from proscribe.core.policy.keys import public_key_string
from tests.support.tls_files import self_signed

_PUB = public_key_string(Ed25519PrivateKey.generate().public_key())


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_loopback_http_and_sqlite_beside_the_config(tmp_path: Path) -> None:
    settings = load_collector_config(_write(tmp_path, ""))
    assert (settings.host, settings.port) == ("127.0.0.1", 8443)
    assert not settings.tls
    assert settings.database_url == f"sqlite:///{(tmp_path / 'collector.db').resolve()}"


def test_full_config(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "c")
    assert key.stat().st_mode & 0o077 == 0
    pub = public_key_string(Ed25519PrivateKey.generate().public_key())
    settings = load_collector_config(
        _write(
            tmp_path,
            f'[server]\nlisten = "0.0.0.0:9443"\ntls_cert = "c.crt"\ntls_key = "c.key"\n'
            f"heartbeat_window = 90\n"
            f'[database]\nurl = "postgresql+psycopg://u@db/proscribe"\n'
            f'[policy]\ntrusted_keys = ["{pub}"]\nthreshold = 1\n',
        )
    )
    assert settings.tls
    assert (settings.tls_cert, settings.tls_key) == (cert, key)
    assert settings.heartbeat_window == 90
    assert settings.trusted_keys == (pub,)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('[server]\nlisten = "0.0.0.0:8443"\n', "server.listen"),
        ('[server]\nlisten = "10.1.2.3:8443"\n', "behind_proxy"),
        ('[server]\nlisten = "nohost"\n', "server.listen"),
        ('[server]\nlisten = "127.0.0.1:99999"\n', "server.listen"),
        ('[server]\ntls_cert = "missing.pem"\n', "server.tls_cert"),
        ("[server]\nheartbeat_window = -1\n", "server.heartbeat_window"),
        ("[server]\nheartbeat_window = true\n", "server.heartbeat_window"),
        ('[server]\nlisen = "x"\n', "server.lisen"),
        ("[srv]\n", "[srv]"),
        ('[database]\nurl = "mysql://x"\n', "database.url"),
        ('[policy]\ntrusted_keys = ["ed25519:AAAA"]\n', "policy.trusted_keys"),
        (f'[policy]\ntrusted_keys = ["{_PUB}"]\nthreshold = 2\n', "policy.threshold"),
        ("not toml at all [", "TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_collector_config(_write(tmp_path, text))
    message = str(info.value)
    assert names in message
    assert "\n" not in message


def test_behind_proxy_allows_plain_http_off_loopback() -> None:
    settings = settings_from_mapping({"server": {"listen": "10.0.0.5:8080", "behind_proxy": True}})
    assert settings.behind_proxy
    assert not settings.tls


def test_missing_config_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_collector_config(tmp_path / "absent.toml")


def test_unreachable_database_is_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot connect"):
        open_database("postgresql+psycopg://nobody@127.0.0.1:1/none")


def test_migrations_create_exactly_the_declared_schema(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'm.db'}")
    assert upgrade(db) == "0003"
    assert upgrade(db) == "0003"  # idempotent
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    db.dispose()
    assert diff == []


@pytest.mark.postgres
def test_migrations_on_postgresql_match_the_declared_schema() -> None:
    import uuid

    import psycopg

    admin = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    name = f"proscribe_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        db = open_database(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
        assert upgrade(db) == "0003"
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        db.dispose()
        assert diff == []
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_session_key_file(tmp_path: Path) -> None:
    key = tmp_path / "session.key"
    key.write_text("k" * 64 + "\n")
    key.chmod(0o600)
    settings = load_collector_config(_write(tmp_path, '[server]\nsession_key_file = "session.key"'))
    assert settings.session_key == b"k" * 64
    assert "kkkk" not in repr(settings)  # never printed with the settings

    key.chmod(0o644)
    with pytest.raises(ConfigError, match=r"session_key_file.*readable by others.*chmod 600"):
        load_collector_config(tmp_path / "collector.toml")
    key.write_text("short")
    key.chmod(0o600)
    with pytest.raises(ConfigError, match=r"5 bytes; at least 32.*/dev/urandom"):
        load_collector_config(tmp_path / "collector.toml")
    key.unlink()
    with pytest.raises(ConfigError, match=r"session_key_file = 'session.key'.*create it"):
        load_collector_config(tmp_path / "collector.toml")
