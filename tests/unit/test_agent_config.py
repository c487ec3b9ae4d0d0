"""agent.toml parsing: defaults, every section, and one clear error per mistake."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from proscribe.agent.config import load_agent_config
from proscribe.core.errors import ConfigError

KEY = "ed25519:" + base64.b64encode(bytes(range(32))).decode()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_full_config_parses_and_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
[agent]
mode = "monitor"
state_dir = "state"
[policy]
file = "policy.toml"
trusted_keys = ["{KEY}"]
threshold = 1
[collector]
url = "https://collector.example:8443"
ca_file = "ca.pem"
enroll_secret_file = "/etc/proscribe/enroll.secret"
[sensors]
process = "poll"
dns = "proxy"
poll_interval = 0.5
[enforce]
kill_children = true
notify = false
[spool]
max_events = 1000
max_bytes = 1048576
[dns]
proxy_listen = "127.0.0.1:5353"
upstreams = ["9.9.9.9:53", "1.1.1.1"]
interfaces = ["eth0"]
""",
    )
    config = load_agent_config(path)
    assert config.agent.mode == "monitor"
    assert config.state_dir == tmp_path / "state"
    assert config.policy.file == tmp_path / "policy.toml"
    assert config.policy.sig_file == tmp_path / "policy.toml.sig"
    assert config.collector is not None and config.collector.ca_file == tmp_path / "ca.pem"
    assert config.sensors.process == "poll" and config.sensors.poll_interval == 0.5
    assert config.enforce.kill_children is True and config.enforce.notify is False
    assert config.spool.max_events == 1000
    assert config.dns.upstreams == ("9.9.9.9:53", "1.1.1.1")
    assert config.spool_path == tmp_path / "state" / "spool.db"


def test_defaults_when_sections_are_absent(tmp_path: Path) -> None:
    config = load_agent_config(write(tmp_path, ""))
    assert config.agent.mode == "enforce"
    assert config.collector is None
    assert config.sensors.process == "auto"
    assert config.enforce.kill_children is False
    assert config.dns.watch_encrypted is True and config.dns.doh_resolvers == ()


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[agent]\nmdoe = 'enforce'\n", "agent.mdoe"),
        ("[agent]\nmode = 'block'\n", "agent.mode"),
        ("[sensor]\nprocess = 'auto'\n", "[sensor]"),
        ("[sensors]\nprocess = 'ebpf'\n", "sensors.process"),
        ("[sensors]\npoll_interval = 0\n", "sensors.poll_interval"),
        ("[sensors]\npoll_interval = 'fast'\n", "sensors.poll_interval"),
        ("[enforce]\nkill_children = 'yes'\n", "enforce.kill_children"),
        ("[spool]\nmax_events = true\n", "spool.max_events"),
        ("[policy]\ntrusted_keys = ['ed25519:!!!']\n", "policy.trusted_keys"),
        ("[policy]\ntrusted_keys = ['ed25519:AAAA']\n", "policy.trusted_keys"),
        ("[policy]\ntrusted_keys = ['missing.pub']\n", "policy.trusted_keys"),
        (f"[policy]\ntrusted_keys = ['{KEY}']\nthreshold = 2\n", "policy.threshold"),
        ("[collector]\nurl = 'ftp://x'\n", "collector.url"),
        ("[dns]\nproxy_listen = 'localhost'\n", "dns.proxy_listen"),
        ("[dns]\nupstreams = ['1.1.1.1:99999']\n", "dns.upstreams"),
        ("[dns]\ndoh_resolvers = ['dns.example']\n", "dns.doh_resolvers"),
        ("[dns]\nwatch_encrypted = 'yes'\n", "dns.watch_encrypted"),
        ("agent = 3\n", "agent"),
        ("[agent\n", "invalid TOML"),
    ],
)
def test_bad_config_names_file_key_and_fix(tmp_path: Path, text: str, names: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    message = str(info.value)
    assert str(path) in message
    assert names in message
    assert "fix:" in message
    assert "\n" not in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_agent_config(tmp_path / "nope.toml")


def test_pub_file_path_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "signer.pub").write_text(KEY + "\n")
    config = load_agent_config(write(tmp_path, "[policy]\ntrusted_keys = ['signer.pub']\n"))
    assert config.policy.trusted_keys == (str(tmp_path / "signer.pub"),)
