"""The Ansible role proscribe_agent, run for real against localhost into a staging root.

Needs ansible-core (``pip install ansible-core``); skipped with that reason when missing.
The wheelhouse is the one test_installer_linux.py builds (same pytest base temp dir).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proscribe.agent.config import load_agent_config
from proscribe.core.policy.keys import public_key_string
from tests.integration.test_installer_linux import build_wheelhouse

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "installer" / "ansible"
BIN = Path(sys.executable).parent
PLAYBOOK = ANSIBLE_DIR / "site.yml"


def ansible(tool: str) -> str:
    exe = BIN / tool
    if exe.exists():
        return str(exe)
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} not installed (pip install ansible-core)")
    return found


def env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ANSIBLE_DIR / "roles"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_REMOTE_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
    }


def render_config(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(REPO / "installer/common/render_config.py"), *args],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return out.stdout


class _AnsibleLikeFilters:
    """``to_json`` as Ansible defines it for strings: json.dumps with the given options."""

    @staticmethod
    def to_json(value: object, **kwargs: object) -> str:
        return json.dumps(value, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"collector_url": "https://c.example:8443", "ca": True, "secret": True, "keys": 1},
        {"collector_url": "http://127.0.0.1:1", "keys": 3, "threshold": 2, "mode": "monitor"},
        {"dns": "proxy", "listen": "127.0.0.1:5353", "keys": 2},
        {"dns": "proxy", "collector_url": 'https://x.example/"q\\é'},
    ],
)
def test_role_template_matches_the_shared_generator(settings: dict[str, object]) -> None:
    """Fast check of every branch of agent.toml.j2 (the slow test runs real Ansible once)."""
    import jinja2

    keys = [
        public_key_string(Ed25519PrivateKey.generate().public_key())
        for _ in range(int(settings.get("keys", 0)))  # type: ignore[call-overload]
    ]
    variables = {
        "proscribe_mode": settings.get("mode", "enforce"),
        "proscribe_state_dir": "/var/lib/proscribe",
        "proscribe_conf_dir": "/etc/proscribe",
        "proscribe_trusted_keys_checked": keys,
        "proscribe_threshold": settings.get("threshold", 1),
        "proscribe_collector_url": settings.get("collector_url", ""),
        "proscribe_ca_file": "ca.pem" if settings.get("ca") else "",
        "proscribe_enroll_secret_file": "s" if settings.get("secret") else "",
        "proscribe_process_sensor": "auto",
        "proscribe_dns": settings.get("dns", "auto"),
        "proscribe_dns_proxy_listen": settings.get("listen", ""),
    }
    # Ansible's template module: trim_blocks on, trailing newline kept.
    environment = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True)
    environment.filters["to_json"] = _AnsibleLikeFilters.to_json
    template = environment.from_string(
        (ANSIBLE_DIR / "roles/proscribe_agent/templates/agent.toml.j2").read_text()
    )
    args = ["agent", "--mode", str(variables["proscribe_mode"]),
            "--dns", str(variables["proscribe_dns"]),
            "--threshold", str(variables["proscribe_threshold"])]  # fmt: skip
    if variables["proscribe_collector_url"]:
        args += ["--collector-url", str(variables["proscribe_collector_url"])]
        if settings.get("ca"):
            args += ["--ca-file", "/etc/proscribe/ca.pem"]
        if settings.get("secret"):
            args += ["--enroll-secret-file", "/etc/proscribe/enroll.secret"]
    if variables["proscribe_dns_proxy_listen"]:
        args += ["--dns-proxy-listen", str(variables["proscribe_dns_proxy_listen"])]
    for k in keys:
        args += ["--trusted-key", k]
    assert template.render(**variables) == render_config(*args)


def test_sample_playbook_passes_syntax_check(tmp_path: Path) -> None:
    out = subprocess.run(
        [ansible("ansible-playbook"), "--syntax-check", "-i", "localhost,", str(PLAYBOOK)],
        capture_output=True, text=True, env=env(tmp_path), timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_role_installs_into_staging_root_like_install_sh(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    house = build_wheelhouse(tmp_path_factory.getbasetemp())
    root = tmp_path / "root"
    secret = tmp_path / "enroll.secret"
    secret.write_text("fleet-secret\n")
    keys = [public_key_string(Ed25519PrivateKey.generate().public_key()) for _ in range(2)]
    extra = {
        "proscribe_root": str(root),
        "proscribe_wheelhouse_src": str(house),
        # One copy step instead of one module run per wheel: keeps the test within budget.
        # (The controller-to-host copy is plain ansible.builtin.copy, the same task.)
        "proscribe_wheelhouse_on_host": True,
        "proscribe_python": sys.executable,
        "proscribe_collector_url": "http://127.0.0.1:8443",
        "proscribe_enroll_secret_file": str(secret),
        # The first as the whole line `proscribe keygen` writes to NAME.pub (key, then name).
        "proscribe_trusted_keys": [f"{keys[0]} alice", keys[1]],
        "proscribe_threshold": 2,
        "proscribe_mode": "monitor",
        "proscribe_dns": "proxy",
        "proscribe_dns_proxy_listen": "127.0.0.1:5353",
    }
    playbook = tmp_path / "play.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  roles: [proscribe_agent]\n")
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(extra))
    cmd = [ansible("ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", f"@{vars_file}", str(playbook)]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, text=True, env=env(tmp_path), timeout=300, check=False
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "Not starting the service (staging root" in out.stdout

    etc = root / "etc/proscribe"
    # Byte for byte what install.sh (render_config.py) writes for the same settings.
    expected = render_config(
        "agent", "--collector-url", "http://127.0.0.1:8443",
        "--enroll-secret-file", "/etc/proscribe/enroll.secret",
        "--trusted-key", keys[0], "--trusted-key", keys[1], "--threshold", "2",
        "--mode", "monitor", "--dns", "proxy", "--dns-proxy-listen", "127.0.0.1:5353",
    )  # fmt: skip
    assert (etc / "agent.toml").read_text() == expected
    config = load_agent_config(etc / "agent.toml")
    assert config.dns.proxy_listen == "127.0.0.1:5353"
    assert stat.S_IMODE((etc / "enroll.secret").stat().st_mode) == 0o600
    assert (etc / "enroll.secret").read_text() == "fleet-secret\n"
    assert stat.S_IMODE((root / "var/lib/proscribe").stat().st_mode) == 0o700

    unit = (root / "etc/systemd/system/proscribe-agent.service").read_text()
    template = (REPO / "installer/linux/proscribe-agent.service.in").read_text()
    caps = "CAP_NET_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH CAP_NET_BIND_SERVICE"
    assert unit == (
        template.replace("@PREFIX@", "/opt/proscribe")
        .replace("@CONF_DIR@", "/etc/proscribe")
        .replace("@STATE_DIR@", "/var/lib/proscribe")
        .replace("@CAPABILITIES@", caps)
    )
    version = subprocess.run(
        [str(root / "opt/proscribe/bin/proscribe"), "--version"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert version.stdout.strip() == "proscribe 0.1.0"

    # Run again with a configuration the agent refuses: the play fails with the agent's own
    # line, before agent.toml is written (the previous one stays).
    written = (etc / "agent.toml").read_text()
    vars_file.write_text(json.dumps({**extra, "proscribe_collector_url": "http://203.0.113.9"}))
    refused = subprocess.run(
        cmd, capture_output=True, text=True, env=env(tmp_path), timeout=300, check=False
    )
    assert refused.returncode != 0
    assert "the agent refuses this configuration" in refused.stdout, refused.stdout[-4000:]
    assert "plain http is allowed only to a loopback collector" in refused.stdout
    assert (etc / "agent.toml").read_text() == written

    # No trusted key: installed, and said to be not started (as install.sh does).
    vars_file.write_text(json.dumps({**extra, "proscribe_trusted_keys": []}))
    keyless = subprocess.run(
        cmd, capture_output=True, text=True, env=env(tmp_path), timeout=300, check=False
    )
    assert keyless.returncode == 0, keyless.stdout[-4000:]
    assert "installed but NOT started: no trusted keys" in keyless.stdout
    assert "Not starting the service (staging root" not in keyless.stdout
