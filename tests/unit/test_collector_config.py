"""collector.toml validation and the storage schema: migrations agree with tables.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proscribe.collector.config import load_collector_config, settings_from_mapping
from proscribe.collector.storage import open_database, upgrade
from proscribe.collector.storage.migrate import head_revision
from proscribe.collector.storage.tables import metadata
from proscribe.core.errors import ConfigError
from proscribe.core.policy.keys import public_key_string
from tests.support.postgres import throwaway_database
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


def test_heartbeat_interval_for_a_large_fleet_with_a_window_above_it() -> None:
    settings = settings_from_mapping(
        {"server": {"heartbeat_interval": 300, "heartbeat_window": 900}}
    )
    assert (settings.heartbeat_interval, settings.heartbeat_window) == (300, 900)
    assert settings_from_mapping({}).heartbeat_interval == 60


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
    assert upgrade(db) == head_revision()
    assert upgrade(db) == head_revision()  # idempotent
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    db.dispose()
    assert diff == []


@pytest.mark.postgres
def test_migrations_on_postgresql_match_the_declared_schema() -> None:
    with throwaway_database() as url:
        db = open_database(url)
        assert upgrade(db) == head_revision()
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        db.dispose()
        assert diff == []


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


@pytest.mark.parametrize(
    ("text", "names", "problem"),
    [
        # unknown keys, in every section, and unknown sections: a typo never passes silently
        ('[server]\nlisten_addr = "x"\n', "server.listen_addr", "use one of"),
        ('[database]\nuri = "sqlite://"\n', "database.uri", "use one of"),
        ("[policy]\nthreshhold = 1\n", "policy.threshhold", "use one of"),
        ("[enroll]\nburst = 1\n", "enroll.burst", "use one of"),
        ('[metrics]\ntoken = "x"\n', "metrics.token", "use one of"),
        ("[prometheus]\n", "[prometheus]", "use one of"),
        ("server = 5\n", "[server]", "must be a table"),
        # wrong types: strict, no coercion
        ("[server]\nlisten = 8443\n", "server.listen", "valid string"),
        ('[server]\nbehind_proxy = "yes"\n', "server.behind_proxy", "valid boolean"),
        ("[server]\napi_docs = 1\n", "server.api_docs", "valid boolean"),
        ('[server]\nheartbeat_window = "180"\n', "server.heartbeat_window", "valid number"),
        ("[server]\nheartbeat_window = 0\n", "server.heartbeat_window", "greater than 0"),
        ("[server]\nheartbeat_interval = 5\n", "server.heartbeat_interval", "15"),
        ("[server]\nheartbeat_interval = 7200\n", "server.heartbeat_interval", "3600"),
        ('[server]\nheartbeat_interval = "60"\n', "server.heartbeat_interval", "valid number"),
        # hosts would turn stale between two heartbeats
        ("[server]\nheartbeat_interval = 300\n", "server.heartbeat_interval", "at least 450"),
        ('[database]\nurl = ["sqlite://"]\n', "database.url", "valid string"),
        ('[policy]\nthreshold = "1"\n', "policy.threshold", "valid integer"),
        ("[policy]\nthreshold = 1.5\n", "policy.threshold", "valid integer"),
        ("[policy]\nthreshold = 0\n", "policy.threshold", "greater than or equal to 1"),
        (f'[policy]\ntrusted_keys = "{_PUB}"\n', "policy.trusted_keys", "valid tuple"),
        ("[policy]\ntrusted_keys = [1]\n", "policy.trusted_keys", "valid string"),
        ('[enroll]\nper_ip_rate = "fast"\n', "enroll.per_ip_rate", "valid number"),
        ("[enroll]\nglobal_burst = -1\n", "enroll.global_burst", "greater than or equal to 0"),
        ('[metrics]\naccess = "everyone"\n', "metrics.access", "'loopback', 'token' or 'open'"),
        ('[metrics]\naccess = "token"\n', "metrics.token_file", 'access = "token"'),
        ('[metrics]\ntoken_file = "m.token"\n', "metrics.token_file", "only then"),
    ],
)
def test_unknown_keys_and_wrong_types_are_one_line_naming_key_and_fix(
    tmp_path: Path, text: str, names: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_collector_config(_write(tmp_path, text))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'collector.toml'}: ")
    assert names in message and problem in message, message
    assert "(fix: " in message
    assert "\n" not in message


def test_a_relative_sqlite_url_is_resolved_beside_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")
    settings = load_collector_config(_write(tmp_path, '[database]\nurl = "sqlite:///rel.db"\n'))
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'rel.db'}"
    absolute = load_collector_config(_write(tmp_path, '[database]\nurl = "sqlite:////srv/c.db"\n'))
    assert absolute.database_url == "sqlite:////srv/c.db"
    memory = load_collector_config(_write(tmp_path, '[database]\nurl = "sqlite://"\n'))
    assert memory.database_url == "sqlite://"


def test_metrics_token_file_is_a_secret(tmp_path: Path) -> None:
    token = tmp_path / "m.token"
    token.write_text("s" * 32)
    token.chmod(0o600)
    text = '[metrics]\naccess = "token"\ntoken_file = "m.token"\n'
    settings = load_collector_config(_write(tmp_path, text))
    assert settings.metrics.access == "token"
    assert settings.metrics.token == b"s" * 32
    assert "ssss" not in repr(settings)
    token.chmod(0o644)
    with pytest.raises(ConfigError, match=r"metrics.token_file.*readable by others.*chmod 600"):
        load_collector_config(tmp_path / "collector.toml")
    token.write_text("short")
    token.chmod(0o600)
    with pytest.raises(ConfigError, match=r"5 bytes; at least 16"):
        load_collector_config(tmp_path / "collector.toml")


def test_the_local_loopback_rule_is_the_shared_one() -> None:
    """Plain HTTP off loopback needs behind_proxy; IPv6 and IPv4-mapped loopback are loopback
    (proscribe.core.netaddr.is_loopback, shared with the agent)."""
    for listen in ("[::1]:8443", "localhost:8443", "127.0.0.2:8443", "[::ffff:127.0.0.1]:8443"):
        assert settings_from_mapping({"server": {"listen": listen}}).host
    with pytest.raises(ConfigError, match=r"server\.listen"):
        settings_from_mapping({"server": {"listen": "[::ffff:10.0.0.1]:8443"}})
