"""``[[forward]]`` tables: each mistake is one line naming the table (place and name), the key
and the fix; good tables become checked settings with their secret read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proscribe.collector.config import load_collector_config, settings_from_mapping
from proscribe.core.errors import ConfigError

SYSLOG = {"name": "siem", "kind": "syslog", "url": "tls://siem.example:6514"}


def _load(*tables: dict[str, Any], base: Path | None = None) -> Any:
    return settings_from_mapping({"forward": list(tables)}, source="c.toml", base=base)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            {**SYSLOG, "colour": "red"},
            r"\[\[forward\]\] #1 \('siem'\): unknown key colour \(fix: use one of name, kind",
        ),
        ({**SYSLOG, "kind": "kafka"}, r"#1 \('siem'\) kind = 'kafka'.*fix: one of \"syslog\""),
        ({**SYSLOG, "url": "udp://h:514"}, r"#1 \('siem'\) url: must be tcp://HOST or tls://HOST"),
        ({**SYSLOG, "url": "tcp://h"}, r"url: must be tcp://HOST:PORT"),
        ({**SYSLOG, "format": "slack"}, r"format: 'slack' is not a format of kind 'syslog'"),
        ({**SYSLOG, "batch_size": 0}, r"batch_size = 0: .*fix: 1 to 500"),
        ({**SYSLOG, "lease": 1.0}, r"lease = 1.0: .*fix: seconds, 2 to 3600"),
        ({**SYSLOG, "batch_size": "10"}, r"batch_size = '10': input should be a valid integer"),
        ({**SYSLOG, "name": "Bad Name"}, r"#1 \('Bad Name'\) name = 'Bad Name'"),
        ({"kind": "syslog", "url": "tcp://h:1"}, r"#1: name is missing \(fix: lower-case"),
        (
            {"name": "hook", "kind": "webhook", "url": "http://hooks.example/x"},
            r"#1 \('hook'\) url: plain http:// is allowed to loopback only",
        ),
        (
            {
                "name": "s",
                "kind": "splunk-hec",
                "url": "https://splunk:8088/services/collector/event",
            },
            r"secret_file: splunk-hec needs the HEC token",
        ),
        ({**SYSLOG, "url": "tcp://h:1", "ca_file": "ca.pem"}, r"ca_file: ca_file needs tls://"),
    ],
)
def test_each_mistake_is_one_line_naming_the_table(table: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        _load(table)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("c.toml: ")


def test_second_table_is_named_by_its_place() -> None:
    with pytest.raises(ConfigError, match=r"\[\[forward\]\] #2 \('b'\) rate = -1"):
        _load(SYSLOG, {**SYSLOG, "name": "b", "rate": -1.0})


def test_duplicate_names_and_a_single_table_written_wrongly() -> None:
    with pytest.raises(ConfigError, match="two \\[\\[forward\\]\\] tables are named 'siem'"):
        _load(SYSLOG, SYSLOG)
    with pytest.raises(ConfigError, match="write each destination as a \\[\\[forward\\]\\] table"):
        settings_from_mapping({"forward": SYSLOG})


def test_secret_file_is_read_and_must_be_private(tmp_path: Path) -> None:
    secret = tmp_path / "hook.key"
    secret.write_text("s" * 40 + "\n")
    secret.chmod(0o600)
    hook = {
        "name": "hook",
        "kind": "webhook",
        "url": "https://h.example/x",
        "secret_file": "hook.key",
    }
    settings = _load(hook, base=tmp_path).forwards[0]
    assert settings.secret == b"s" * 40 and settings.format == "json"
    assert "ssss" not in repr(settings)
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match=r"\[\[forward\]\] 'hook' secret_file .*chmod 600"):
        _load(hook, base=tmp_path)
    secret.chmod(0o600)
    secret.write_text("short")
    with pytest.raises(ConfigError, match="at least 16 are needed"):
        _load(hook, base=tmp_path)


def test_ca_file_must_be_pem(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"'siem' ca_file = 'ca.pem': not a readable PEM CA"):
        _load({**SYSLOG, "ca_file": "ca.pem"}, base=tmp_path)


def test_from_toml_file_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "collector.toml"
    path.write_text(
        '[[forward]]\nname = "siem"\nkind = "syslog"\nurl = "tcp://127.0.0.1:5514"\n'
        '[[forward]]\nname = "chat"\nkind = "webhook"\nurl = "https://hooks.example/x"\n'
        'format = "slack"\nmin_severity = "high"\n'
    )
    forwards = load_collector_config(path).forwards
    assert [(f.name, f.kind, f.format) for f in forwards] == [
        ("siem", "syslog", "rfc5424"),
        ("chat", "webhook", "slack"),
    ]
    assert forwards[0].batch_size == 100 and forwards[0].start == "beginning"
    assert forwards[0].lease == 30.0
    assert forwards[1].min_rank == 2
