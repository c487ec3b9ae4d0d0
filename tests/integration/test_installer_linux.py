"""install.sh / uninstall.sh / build-deb.sh, run for real into staging roots.

One wheelhouse (the proscribe wheel built from this tree plus its dependencies, made by
installer/linux/build-wheelhouse.sh) serves the whole session; installs are offline from it.
Nothing here touches the host's /opt, /etc or systemd: every path is under a temp root.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from packaging.utils import canonicalize_name
from packaging.version import Version

from proscribe.agent.config import load_agent_config
from proscribe.core.policy.envelope import sign_payload
from proscribe.core.policy.keys import public_key_string
from tests.integration.test_install_docs import doc_command
from tests.unit.test_dependency_lock import pins_here

REPO = Path(__file__).resolve().parents[2]
LINUX = REPO / "installer" / "linux"
INSTALL = LINUX / "install.sh"
UNINSTALL = LINUX / "uninstall.sh"
PREFIX = "opt/proscribe"


def build_wheelhouse(base: Path) -> Path:
    """The session's wheelhouse; built once per pytest base temp dir, shared by modules."""
    house = base / "installer-wheelhouse"
    if not (house / ".complete").exists():
        shutil.rmtree(house, ignore_errors=True)
        subprocess.run(
            [str(LINUX / "build-wheelhouse.sh"), "-o", str(house), "--python", sys.executable],
            check=True,
            capture_output=True,
            timeout=240,
        )
        (house / ".complete").touch()
    return house


def collector_wheelhouse(base: Path) -> Path:
    """The agent's wheelhouse plus the collector's extras, built once per base temp dir."""
    house = base / "installer-wheelhouse-collector"
    if not (house / ".complete").exists():
        run(LINUX / "build-wheelhouse.sh", "-o", house, "--component", "collector",
            "--wheel", next(build_wheelhouse(base).glob("proscribe-*.whl")),
            "--python", sys.executable, timeout=240)  # fmt: skip
        (house / ".complete").touch()
    return house


def scratch_root(scratch: Path) -> tuple[Path, list[str]]:
    """An empty dpkg database under ``scratch`` and the dpkg command that installs there,
    running the maintainer scripts with DPKG_ROOT set (as on a real host, but in ``scratch``).
    The command is docs/install.md's own line (its options; DIR is ``scratch``)."""
    for sub in ("info", "updates", "triggers"):
        (scratch / "var/lib/dpkg" / sub).mkdir(parents=True)
    (scratch / "var/lib/dpkg/status").touch()
    (scratch / "etc/default").mkdir(parents=True)
    words = doc_command("dpkg --root=DIR")
    options = [w.replace("DIR", str(scratch)) for w in words[: words.index("-i")]]
    return scratch, [*options, "--force-not-root"]


def run(
    *args: str | Path, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def unit_caps(unit: Path) -> set[str]:
    for line in unit.read_text().splitlines():
        if line.startswith("CapabilityBoundingSet="):
            return set(line.split("=", 1)[1].split())
    raise AssertionError(f"{unit}: no CapabilityBoundingSet=")


def new_key() -> str:
    return public_key_string(Ed25519PrivateKey.generate().public_key())


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheelhouse(tmp_path_factory.getbasetemp())


def policy_text(expires: str = "2099-01-01T00:00:00Z") -> str:
    return (
        '[meta]\nschema = 1\nid = "installer-test"\nserial = 1\n'
        f'issued = 2025-01-24T00:00:00Z\nexpires = {expires}\ntitle = "Installer test"\n\n'
        '[[domain]]\nid = "d"\nnames = ["deepseek.com"]\naction = "block"\n'
    )


def write_signed(path: Path, text: str, *keys: Ed25519PrivateKey) -> Path:
    path.write_text(text)
    envelope = None
    for key in keys:
        envelope = sign_payload(path.read_bytes(), key, envelope)
    assert envelope is not None
    Path(f"{path}.sig").write_bytes(envelope.to_bytes())
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("installer-inputs")
    secret = d / "enroll.secret"
    secret.write_text("s3cret-enroll-value\n")
    private_a, private_b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    key_a = public_key_string(private_a.public_key())
    pub = d / "signer.pub"
    pub.write_text(f"{key_a} alice\n")  # as `proscribe keygen` writes it
    ca = d / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    policy = write_signed(d / "policy.toml", policy_text(), private_a, private_b)
    return {
        "secret": secret,
        "pub": pub,
        "key_a": key_a,
        "key_b": public_key_string(private_b.public_key()),
        "private_a": private_a,
        "private_b": private_b,
        "ca": ca,
        "policy": policy,
    }


def install_args(root: Path, house: Path, inputs: dict[str, Any], *extra: str) -> list[str]:
    return [
        str(INSTALL), "--root", str(root), "--wheelhouse", str(house), "--python", sys.executable,
        "--collector-url", "http://127.0.0.1:8443",
        "--ca-file", str(inputs["ca"]),
        "--enroll-secret-file", str(inputs["secret"]),
        "--trusted-key", str(inputs["pub"]), "--trusted-key", str(inputs["key_b"]),
        "--threshold", "2", "--policy", str(inputs["policy"]), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def pristine(
    tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path, inputs: dict[str, Any]
) -> tuple[Path, str]:
    """One real install; tests that change it work on a copy."""
    root = tmp_path_factory.mktemp("pristine") / "root"
    out = run(*install_args(root, wheelhouse, inputs))
    return root, out.stdout


@pytest.fixture
def root(pristine: tuple[Path, str], tmp_path: Path) -> Path:
    # etc/ and var/ are copied; the venv is hard-linked (fast), which is safe because
    # install.sh and uninstall.sh only ever replace or unlink files under opt/, never edit them.
    copy = tmp_path / "root"
    copy.mkdir()
    for top in ("etc", "var"):
        shutil.copytree(pristine[0] / top, copy / top, symlinks=True)
    run("cp", "-al", pristine[0] / "opt", copy / "opt")
    return copy


def wheelhouse_versions(house: Path) -> dict[str, Version]:
    found = {}
    for wheel in house.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        found[canonicalize_name(name)] = Version(version)
    return found


def test_the_wheelhouse_holds_exactly_the_locked_versions(wheelhouse: Path) -> None:
    # Two builds from one lock ship the same versions: the wheelhouse is the lock, hashes
    # checked by pip download, plus proscribe itself; the lock rides along for install.sh.
    versions = wheelhouse_versions(wheelhouse)
    assert versions.pop("proscribe") == Version("0.1.0")
    assert versions == pins_here(REPO / "requirements/agent.txt")
    assert (wheelhouse / "requirements.txt").read_bytes() == (
        REPO / "requirements/agent.txt"
    ).read_bytes()


def test_the_installed_environment_holds_exactly_the_locked_versions(
    pristine: tuple[Path, str],
) -> None:
    venv = pristine[0] / PREFIX
    listed = run(venv / "bin/python", "-c",
                 "import importlib.metadata as m\n"
                 "for d in m.distributions(): print(d.metadata['Name'], d.version)")  # fmt: skip
    installed = {
        canonicalize_name(name): Version(version)
        for name, version in (line.split() for line in listed.stdout.splitlines())
    }
    assert installed.pop("proscribe") == Version("0.1.0")
    assert installed == pins_here(REPO / "requirements/agent.txt")
    assert "installed the dependencies pinned in" in pristine[1]


def test_install_writes_config_secret_and_modes(
    pristine: tuple[Path, str], inputs: dict[str, Any]
) -> None:
    root, stdout = pristine
    etc = root / "etc/proscribe"
    assert mode_of(etc / "enroll.secret") == 0o600
    assert (etc / "enroll.secret").read_text() == "s3cret-enroll-value\n"
    assert mode_of(etc / "agent.toml") == 0o644
    assert mode_of(etc / "ca.pem") == 0o644
    assert (etc / "policy.toml.sig").read_bytes() == Path(f"{inputs['policy']}.sig").read_bytes()
    assert mode_of(root / "var/lib/proscribe") == 0o700
    assert mode_of(root / "etc/systemd/system/proscribe-agent.service") == 0o644

    config = load_agent_config(etc / "agent.toml")
    assert config.agent.mode == "enforce"
    assert config.agent.state_dir == Path("/var/lib/proscribe")
    assert config.policy.file == Path("/etc/proscribe/policy.toml")
    assert config.policy.trusted_keys == (inputs["key_a"], inputs["key_b"])
    assert config.policy.threshold == 2
    assert config.collector is not None
    assert config.collector.url == "http://127.0.0.1:8443"
    assert config.collector.ca_file == Path("/etc/proscribe/ca.pem")
    assert config.collector.enroll_secret_file == Path("/etc/proscribe/enroll.secret")
    assert config.sensors.dns == "auto"  # the default: resolver + capture + redirect
    # It says what it did and that systemd was left alone in a staging root.
    assert "wrote /etc/proscribe/agent.toml" in stdout
    assert "did not touch systemd" in stdout


def test_installed_command_runs_and_venv_points_at_final_path(pristine: tuple[Path, str]) -> None:
    root = pristine[0]
    venv = root / PREFIX
    out = run(venv / "bin/python", venv / "bin/proscribe", "--version")
    assert out.stdout.strip() == "proscribe 0.1.0"
    # Relocated: shebangs and pyvenv.cfg name /opt/proscribe, never the staging path.
    assert (venv / "bin/proscribe").read_text().splitlines()[0] == "#!/opt/proscribe/bin/python"
    for f in [*(venv / "bin").iterdir(), venv / "pyvenv.cfg"]:
        if f.is_file() and not f.is_symlink():
            assert str(root) not in f.read_text(errors="replace"), f
    # The runtime environment holds the agent, not the build tools.
    assert not (venv / "bin/pip").exists()
    manifest = (venv / ".install-manifest").read_text().splitlines()
    assert "tree /opt/proscribe" in manifest
    assert "file /etc/proscribe/enroll.secret" in manifest
    assert "state /var/lib/proscribe" in manifest


@pytest.mark.linux
def test_unit_is_hardened_and_passes_systemd_analyze_verify(
    pristine: tuple[Path, str], tmp_path: Path
) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing (apt-get install systemd)")
    root = pristine[0]
    text = (root / "etc/systemd/system/proscribe-agent.service").read_text()
    directives = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#"
    )
    assert directives["ExecStart"] == (
        "/opt/proscribe/bin/proscribe agent run --config /etc/proscribe/agent.toml"
    )
    caps = set(directives["CapabilityBoundingSet"].split())
    assert caps == {
        "CAP_NET_ADMIN",
        "CAP_SYS_PTRACE",
        "CAP_DAC_READ_SEARCH",
        "CAP_KILL",
        "CAP_NET_RAW",
        "CAP_NET_BIND_SERVICE",
    }  # fmt: skip  (dns = "auto")
    assert directives["AmbientCapabilities"] == directives["CapabilityBoundingSet"]
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "read-only",
        "PrivateTmp": "yes", "Restart": "on-failure",
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30",
    }.items():  # fmt: skip
        assert directives[key] == value, key
    # writable: the state directory, and the browsers' policy folders only where they exist
    state, *browsers = directives["ReadWritePaths"].split()
    assert state == "/var/lib/proscribe"
    assert browsers == [
        "-/etc/chromium/policies", "-/etc/opt/chrome/policies", "-/etc/opt/edge/policies",
        "-/etc/firefox/policies",
    ]  # fmt: skip

    # systemd-analyze checks that ExecStart exists: point it at the staged binary.
    unit = tmp_path / "proscribe-agent.service"
    unit.write_text(text.replace("/opt/proscribe/bin", f"{root}/opt/proscribe/bin"))
    out = run("systemd-analyze", "verify", unit, check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr  # warnings (unknown keys) fail the test too


def test_reinstall_upgrades_in_place_keeps_state_and_config(
    root: Path, wheelhouse: Path, inputs: dict[str, Any]
) -> None:
    state = root / "var/lib/proscribe"
    (state / "spool.sqlite").write_bytes(b"spooled events")
    (state / "agent.key").write_bytes(b"agent private key")
    config = root / "etc/proscribe/agent.toml"
    config.write_text(config.read_text() + "# edited by the admin\n")
    edited = config.read_text()
    marker = root / PREFIX / "old-version-marker"
    marker.touch()

    out = run(*install_args(root, wheelhouse, inputs, "--mode", "monitor", "--dns", "proxy"))
    assert "upgraded the virtual environment" in out.stdout
    assert "kept the existing /etc/proscribe/agent.toml" in out.stdout
    assert config.read_text() == edited
    assert (state / "spool.sqlite").read_bytes() == b"spooled events"
    assert (state / "agent.key").read_bytes() == b"agent private key"
    assert not marker.exists()  # the venv was replaced, not patched
    # The unit follows the config in place (enforce + auto), not the ignored flags.
    unit = root / "etc/systemd/system/proscribe-agent.service"
    assert {"CAP_KILL", "CAP_NET_RAW"} <= unit_caps(unit)

    run(*install_args(root, wheelhouse, inputs, "--configure-only", "--force-config",
                      "--mode", "monitor", "--dns", "proxy"))  # fmt: skip
    assert load_agent_config(config).agent.mode == "monitor"
    assert (root / "etc/proscribe/agent.toml.bak").read_text() == edited
    # monitor never kills; proxy binds :53 instead of capturing.
    assert unit_caps(unit) == {
        "CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_NET_BIND_SERVICE"
    }  # fmt: skip
    assert (state / "agent.key").exists()


def test_point_resolver_keeps_the_original_as_fallback_and_uninstall_restores_it(
    root: Path, wheelhouse: Path, inputs: dict[str, Any]
) -> None:
    resolv = root / "etc/resolv.conf"
    original = "# written by the network manager\nsearch corp.example\nnameserver 10.9.8.7\n"
    resolv.write_text(original)
    out = run(*install_args(root, wheelhouse, inputs, "--configure-only", "--force-config",
                            "--dns", "proxy", "--point-resolver"))  # fmt: skip
    assert "pointed /etc/resolv.conf at the DNS proxy" in out.stdout
    servers = [
        ln.split()[1] for ln in resolv.read_text().splitlines() if ln.startswith("nameserver")
    ]
    assert servers == ["127.0.0.1", "10.9.8.7"]  # the proxy first, the original as fallback
    assert "search corp.example" in resolv.read_text()
    assert "resolv /etc/resolv.conf" in (root / PREFIX / ".install-manifest").read_text()

    # Installing again does not stack proxies or lose the true original.
    run(*install_args(root, wheelhouse, inputs, "--configure-only", "--dns", "proxy",
                      "--point-resolver"))  # fmt: skip
    again = [ln for ln in resolv.read_text().splitlines() if ln.startswith("nameserver")]
    assert again == ["nameserver 127.0.0.1", "nameserver 10.9.8.7"]

    out = run(root / PREFIX / "share/installer/linux/uninstall.sh", "--root", root)
    assert resolv.read_text() == original  # byte for byte
    assert "restored to the original resolvers" in out.stdout
    assert not (root / "etc/proscribe/resolv.conf.orig").exists()


def test_point_resolver_uses_a_resolved_drop_in_where_resolv_conf_is_a_symlink(
    root: Path, wheelhouse: Path, inputs: dict[str, Any]
) -> None:
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    out = run(*install_args(root, wheelhouse, inputs, "--configure-only", "--force-config",
                            "--dns", "proxy", "--point-resolver"))  # fmt: skip
    dropin = root / "etc/proscribe/resolved-dropin.conf"
    assert "DNS=127.0.0.1:53" in dropin.read_text() and "Domains=~." in dropin.read_text()
    hooks = root / "etc/systemd/system/proscribe-agent.service.d/resolver.conf"
    text = hooks.read_text()
    assert "ExecStartPost=+" in text and "cp /etc/proscribe/resolved-dropin.conf" in text
    assert "ExecStopPost=+" in text and "rm -f /etc/systemd/resolved.conf.d/proscribe.conf" in text
    assert "systemd-resolved" in out.stdout
    assert resolv.is_symlink()  # resolved's own file is left alone
    assert not (root / "etc/systemd/resolved.conf.d").exists()  # only while the agent runs
    run(root / PREFIX / "share/installer/linux/uninstall.sh", "--root", root)
    assert not dropin.exists() and not hooks.exists()
    assert not hooks.parent.exists()


def test_point_resolver_needs_the_proxy_on_port_53_for_resolv_conf(
    root: Path, wheelhouse: Path, inputs: dict[str, Any]
) -> None:
    resolv = root / "etc/resolv.conf"
    resolv.write_text("nameserver 10.9.8.7\n")
    out = run(*install_args(root, wheelhouse, inputs, "--configure-only", "--force-config",
                            "--dns", "proxy", "--dns-proxy-listen", "127.0.0.1:5353",
                            "--point-resolver"), check=False)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("install.sh: error: --point-resolver:")
    assert "cannot name a port" in out.stderr
    assert resolv.read_text() == "nameserver 10.9.8.7\n"  # untouched


def _refused(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("install.sh: error:"), out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("http-remote", "plain http is allowed only to a loopback collector"),
        ("http-private-address", "plain http is allowed only to a loopback collector"),
        ("expired", "expired at 2025-02-01"),
        ("stranger", "0 of 2 required trusted signatures"),
        ("one-signer-of-two", "1 of 2 required trusted signatures"),
    ],
)
def test_configuration_the_agent_refuses_is_refused_with_its_message(
    root: Path, wheelhouse: Path, inputs: dict[str, Any], tmp_path: Path, case: str, expected: str
) -> None:
    extra: list[str] = ["--configure-only", "--force-config"]
    if case == "http-remote":
        extra += ["--collector-url", "http://collector.example.org:8443"]
    elif case == "http-private-address":
        extra += ["--collector-url", "http://10.1.2.3:8443"]
    else:
        signers = {
            "expired": (inputs["private_a"], inputs["private_b"]),
            "stranger": (Ed25519PrivateKey.generate(),),
            "one-signer-of-two": (inputs["private_a"],),
        }[case]
        text = policy_text("2025-02-01T00:00:00Z" if case == "expired" else "2099-01-01T00:00:00Z")
        extra += ["--policy", str(write_signed(tmp_path / "policy.toml", text, *signers))]
    config = root / "etc/proscribe/agent.toml"
    before = config.read_bytes()
    line = _refused(run(*install_args(root, wheelhouse, inputs, *extra), check=False))
    assert expected in line, line
    assert config.read_bytes() == before  # nothing was configured


def test_a_refused_install_leaves_nothing_behind(
    tmp_path: Path, wheelhouse: Path, inputs: dict[str, Any]
) -> None:
    root = tmp_path / "root"
    args = install_args(root, wheelhouse, inputs)
    args[args.index("http://127.0.0.1:8443")] = "http://collector.example.org:8443"
    line = _refused(run(*args, check=False))
    assert "the agent refuses this configuration: collector.url: plain http" in line
    assert not (root / "opt").exists() or not any((root / "opt").iterdir())
    assert not (root / "etc/proscribe").exists()


def test_without_a_trusted_key_it_is_installed_but_not_started(root: Path) -> None:
    out = run(INSTALL, "--root", root, "--configure-only", "--force-config",
              "--python", sys.executable)  # fmt: skip
    config = load_agent_config(root / "etc/proscribe/agent.toml")
    assert config.policy.trusted_keys == ()
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("NOT STARTED: proscribe-agent.service is installed but NOT enabled")
    assert "no policy.trusted_keys" in last and "--trusted-key" in last
    assert "did not touch systemd" not in out.stdout  # no start commands for a dead agent


def test_the_pub_line_keygen_writes_is_accepted_whole(
    root: Path, wheelhouse: Path, inputs: dict[str, Any]
) -> None:
    line = inputs["pub"].read_text().strip()
    assert " alice" in line
    args = install_args(root, wheelhouse, inputs, "--configure-only", "--force-config")
    args[args.index(str(inputs["pub"]))] = line
    run(*args)
    keys = load_agent_config(root / "etc/proscribe/agent.toml").policy.trusted_keys
    assert keys == (inputs["key_a"], inputs["key_b"])


def test_uninstall_removes_only_what_was_installed(root: Path) -> None:
    etc = root / "etc/proscribe"
    mine = etc / "site-notes.txt"
    mine.write_text("placed by hand; not the installer's")
    (root / "var/lib/proscribe/spool.sqlite").write_bytes(b"x")
    script = root / PREFIX / "share/installer/linux/uninstall.sh"  # the shipped copy

    out = run(script, "--root", root)
    assert not (root / PREFIX).exists()
    assert not (root / "etc/systemd/system/proscribe-agent.service").exists()
    for name in ("agent.toml", "enroll.secret", "ca.pem", "policy.toml", "policy.toml.sig"):
        assert not (etc / name).exists(), name
    assert mine.read_text() == "placed by hand; not the installer's"
    assert "kept /etc/proscribe" in out.stdout
    assert (root / "var/lib/proscribe/spool.sqlite").exists()  # state survives without --purge


def test_purge_removes_state_and_empty_dirs(root: Path) -> None:
    (root / "var/lib/proscribe/agent.key").write_bytes(b"k")
    run(UNINSTALL, "--root", root, "--purge")
    assert not (root / "var/lib/proscribe").exists()
    assert not (root / "etc/proscribe").exists()  # empty once the installer's files went
    assert not (root / PREFIX).exists()


def test_uninstall_ignores_manifest_entries_outside_its_paths(root: Path) -> None:
    victim = root / "etc/passwd"
    victim.write_text("root:x:0:0::/root:/bin/sh\n")
    manifest = root / PREFIX / ".install-manifest"
    text = manifest.read_text()
    manifest.unlink()  # hard-linked to the pristine install: write a new inode
    manifest.write_text(text + "file /etc/passwd\ntree /\nfile /etc/proscribe/../passwd\n")
    out = run(UNINSTALL, "--root", root)
    assert victim.exists()
    assert "skipping manifest entry" in out.stderr


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--mode", "block"], "--mode must be enforce or monitor"),
        (["--trusted-key", "ed25519:AAAA"], "--trusted-key"),
        (["--trusted-key", "ed25519:AAAA", "--threshold", "0"], "--trusted-key"),
        (["--collector-url", "ftp://x"], "--collector-url"),
        (["--retention", "400"], "--retention is for --component collector"),
        (["--component", "collector", "--retention", "12m"], "whole number of days"),
        (["--policy", "/nonexistent/p.toml"], "--policy"),
        (["--wheel"], "--wheel needs a value"),
        (["--frobnicate"], "unknown option '--frobnicate'"),
        (["--point-resolver"], "--point-resolver needs --dns proxy"),
    ],
)
def test_bad_flags_fail_with_one_line_before_installing(
    tmp_path: Path, flags: list[str], expected: str
) -> None:
    out = run(INSTALL, "--root", tmp_path / "root", *flags, check=False)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("install.sh: error:"), out.stderr
    assert expected in lines[0]
    assert not (tmp_path / "root" / PREFIX).exists()


def test_threshold_above_key_count_is_refused(tmp_path: Path) -> None:
    out = run(INSTALL, "--root", tmp_path, "--trusted-key", new_key(), "--threshold", "2",
              check=False)  # fmt: skip
    assert out.returncode == 2
    assert "--threshold 2" in out.stderr


def test_help_lists_the_flags() -> None:
    out = run(INSTALL, "--help")
    for flag in ("--wheelhouse", "--root", "--force-config", "--configure-only", "--component"):
        assert flag in out.stdout
    assert "--purge" in run(UNINSTALL, "--help").stdout


@pytest.mark.slow
def test_collector_component_installs_with_its_own_unit_and_config(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    house = collector_wheelhouse(tmp_path_factory.getbasetemp())
    versions = wheelhouse_versions(house)
    versions.pop("proscribe")
    assert versions == pins_here(REPO / "requirements/collector.txt")
    root = tmp_path / "root"
    key = new_key()
    run(INSTALL, "--root", root, "--component", "collector", "--wheelhouse", house,
        "--python", sys.executable, "--trusted-key", key, "--retention", "400")  # fmt: skip
    venv = root / "opt/proscribe-collector"
    out = run(venv / "bin/python", "-c", "import proscribe.collector.app, fastapi; print('ok')")
    assert out.stdout.strip() == "ok"
    cfg = tomllib.loads((root / "etc/proscribe/collector.toml").read_text())
    assert cfg["server"]["listen"] == "127.0.0.1:8443"
    assert cfg["database"]["url"] == "sqlite:////var/lib/proscribe-collector/collector.db"
    assert cfg["policy"]["trusted_keys"] == [key]
    # The collector's own loader accepts it.
    from proscribe.collector.config import load_collector_config

    assert load_collector_config(root / "etc/proscribe/collector.toml").trusted_keys == (key,)
    unit = (root / "etc/systemd/system/proscribe-collector.service").read_text()
    assert "User=proscribe\n" in unit and "CapabilityBoundingSet=\n" in unit
    assert "StateDirectory=proscribe-collector\n" in unit
    if shutil.which("systemd-analyze"):
        staged = tmp_path / "proscribe-collector.service"
        staged.write_text(unit.replace("/opt/proscribe-collector/bin", f"{venv}/bin"))
        verify = run("systemd-analyze", "verify", staged, check=False, timeout=60)
        assert verify.returncode == 0, verify.stderr
    # --retention 400: a daily timer runs `collector purge --older-than 400d`, sandboxed
    units = root / "etc/systemd/system"
    purge = (units / "proscribe-collector-purge.service").read_text()
    assert (
        "ExecStart=/opt/proscribe-collector/bin/proscribe collector purge --older-than 400d "
        "--config /etc/proscribe/collector.toml\n"
    ) in purge
    assert "User=proscribe\n" in purge and "Type=oneshot\n" in purge
    timer = (units / "proscribe-collector-purge.timer").read_text()
    assert "OnCalendar=daily\n" in timer and "Persistent=true\n" in timer
    if shutil.which("systemd-analyze"):
        staged_dir = tmp_path / "units"
        staged_dir.mkdir()
        (staged_dir / "proscribe-collector-purge.service").write_text(
            purge.replace("/opt/proscribe-collector/bin", f"{venv}/bin")
        )
        (staged_dir / "proscribe-collector-purge.timer").write_text(timer)
        verify = run("systemd-analyze", "verify", staged_dir / "proscribe-collector-purge.timer",
                     staged_dir / "proscribe-collector-purge.service", check=False,
                     timeout=60)  # fmt: skip
        assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    run(UNINSTALL, "--root", root, "--component", "collector", "--purge")
    assert not venv.exists()
    assert not (root / "etc/proscribe").exists()
    assert not (units / "proscribe-collector-purge.timer").exists()
    assert not (units / "proscribe-collector-purge.service").exists()


@pytest.mark.slow
@pytest.mark.linux
def test_deb_contents_scripts_and_scratch_root_install(wheelhouse: Path, tmp_path: Path) -> None:
    if shutil.which("dpkg-deb") is None or not Path("/usr/bin/python3").exists():
        pytest.skip("needs dpkg-deb and /usr/bin/python3 (Debian)")
    wheel = next(wheelhouse.glob("proscribe-*.whl"))
    out = run(LINUX / "build-deb.sh", "--wheel", wheel, "--wheelhouse", wheelhouse,
              "-o", tmp_path / "out", timeout=300)  # fmt: skip
    deb = Path(out.stdout.strip().splitlines()[-1])
    arch = run("dpkg", "--print-architecture").stdout.strip()
    assert deb.name == f"proscribe-agent_0.1.0_{arch}.deb"

    info = run("dpkg-deb", "-I", deb).stdout
    assert "Package: proscribe-agent" in info and "Depends: python3." in info
    for script in ("postinst", "prerm", "postrm", "conffiles"):
        assert script in info
    assert run("dpkg-deb", "-f", deb, "Version").stdout.strip() == "0.1.0"
    contents = run("dpkg-deb", "-c", deb).stdout
    assert "./opt/proscribe/bin/proscribe" in contents
    assert "./etc/proscribe/agent.toml" in contents
    assert "./opt/proscribe/share/installer/linux/install.sh" in contents
    assert "enroll.secret" not in contents and ".install-manifest" not in contents

    control = tmp_path / "control"
    run("dpkg-deb", "-e", deb, control)
    assert (control / "conffiles").read_text().split() == ["/etc/proscribe/agent.toml"]
    assert 'install.sh" "$@"' in (control / "postinst").read_text()
    assert "--configure-only" in (control / "postinst").read_text()
    assert "systemctl" in (control / "prerm").read_text()
    assert 'rm -rf "$R/var/lib/proscribe"' in (control / "postrm").read_text()
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if shellcheck.exists():  # maintainer scripts are POSIX sh
        scripts = [control / n for n in ("postinst", "prerm", "postrm")]
        lint = run(shellcheck, "-s", "sh", "--severity=warning", *scripts, check=False)
        assert lint.returncode == 0, lint.stdout

    # Without a preseed file: installed, left unconfigured and NOT started, saying so once;
    # preseeding afterwards and reinstalling (or dpkg-reconfigure) configures it.
    bare, dpkg_bare = scratch_root(tmp_path / "bare")
    out = run(*dpkg_bare, "-i", deb)
    said = [ln for ln in out.stdout.splitlines() if ln.startswith("NOT STARTED:")]
    assert len(said) == 1 and "no policy.trusted_keys" in said[0], out.stdout
    assert load_agent_config(bare / "etc/proscribe/agent.toml").policy.trusted_keys == ()
    key = new_key()
    (bare / "etc/default/proscribe").write_text(f"TRUSTED_KEYS={key}\nMODE=monitor\n")
    out = run(*dpkg_bare, "-i", deb)
    assert "NOT STARTED" not in out.stdout, out.stdout
    assert load_agent_config(bare / "etc/proscribe/agent.toml").policy.trusted_keys == (key,)

    # Install into a scratch root: dpkg runs the maintainer scripts with DPKG_ROOT set.
    scratch, dpkg = scratch_root(tmp_path / "scratch")
    key = new_key()
    (scratch / "etc/default/proscribe").write_text(
        f"COLLECTOR_URL=http://127.0.0.1:9\nTRUSTED_KEYS={key}\nMODE=monitor\n"
    )
    run(*dpkg, "-i", deb)
    venv = scratch / "opt/proscribe"
    assert run(venv / "bin/python", venv / "bin/proscribe", "--version").stdout.startswith(
        "proscribe 0.1.0"
    )
    config = load_agent_config(scratch / "etc/proscribe/agent.toml")  # preseeded by postinst
    assert config.agent.mode == "monitor" and config.policy.trusted_keys == (key,)
    unit = scratch / "etc/systemd/system/proscribe-agent.service"
    assert "CAP_KILL" not in unit_caps(unit)  # monitor mode
    assert mode_of(scratch / "var/lib/proscribe") == 0o700

    (scratch / "var/lib/proscribe/spool.sqlite").write_bytes(b"x")
    run(*dpkg, "-r", "proscribe-agent")
    assert not unit.exists() and not (venv / "bin").exists()
    assert (scratch / "etc/proscribe/agent.toml").exists()  # remove keeps configuration
    assert (scratch / "var/lib/proscribe/spool.sqlite").exists()
    run(*dpkg, "-P", "proscribe-agent")
    assert not (scratch / "etc/proscribe").exists()
    assert not (scratch / "var/lib/proscribe").exists()
    assert not venv.exists()


@pytest.mark.slow
@pytest.mark.linux
def test_collector_deb_installs_configures_and_keeps_the_evidence_on_purge(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if shutil.which("dpkg-deb") is None or not Path("/usr/bin/python3").exists():
        pytest.skip("needs dpkg-deb and /usr/bin/python3 (Debian)")
    house = collector_wheelhouse(tmp_path_factory.getbasetemp())
    wheel = next(house.glob("proscribe-*.whl"))
    out = run(LINUX / "build-deb.sh", "--component", "collector", "--wheel", wheel,
              "--wheelhouse", house, "-o", tmp_path / "out", timeout=300)  # fmt: skip
    deb = Path(out.stdout.strip().splitlines()[-1])
    arch = run("dpkg", "--print-architecture").stdout.strip()
    assert deb.name == f"proscribe-collector_0.1.0_{arch}.deb"
    info = run("dpkg-deb", "-I", deb).stdout
    assert "Package: proscribe-collector" in info
    contents = run("dpkg-deb", "-c", deb).stdout
    assert "./opt/proscribe-collector/bin/proscribe" in contents
    assert "./etc/proscribe/collector.toml" in contents
    assert "./opt/proscribe-collector/share/installer/linux/default-collector.example" in contents
    assert "./etc/systemd" not in contents and ".install-manifest" not in contents
    control = tmp_path / "control"
    run("dpkg-deb", "-e", deb, control)
    assert (control / "conffiles").read_text().split() == ["/etc/proscribe/collector.toml"]
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if shellcheck.exists():
        scripts = [control / n for n in ("postinst", "prerm", "postrm")]
        lint = run(shellcheck, "-s", "sh", "--severity=warning", *scripts, check=False)
        assert lint.returncode == 0, lint.stdout

    scratch, dpkg = scratch_root(tmp_path / "scratch")
    key = new_key()
    (scratch / "etc/default/proscribe-collector").write_text(
        f"LISTEN=0.0.0.0:8443\nBEHIND_PROXY=yes\nTRUSTED_KEYS={key}\nRETENTION=400\n"
    )
    run(*dpkg, "-i", deb)
    from proscribe.collector.config import load_collector_config

    settings = load_collector_config(scratch / "etc/proscribe/collector.toml")  # preseeded
    assert (settings.host, settings.port, settings.behind_proxy) == ("0.0.0.0", 8443, True)
    assert settings.trusted_keys == (key,)
    units = scratch / "etc/systemd/system"
    assert "User=proscribe\n" in (units / "proscribe-collector.service").read_text()
    purge_unit = (units / "proscribe-collector-purge.service").read_text()
    assert "--older-than 400d" in purge_unit
    assert (units / "proscribe-collector-purge.timer").exists()
    venv = scratch / "opt/proscribe-collector"
    version = run(venv / "bin/python", venv / "bin/proscribe", "--version").stdout
    assert version.startswith("proscribe 0.1.0")

    evidence = scratch / "var/lib/proscribe-collector/collector.db"
    evidence.parent.mkdir(parents=True, exist_ok=True)
    evidence.write_bytes(b"evidence")
    run(*dpkg, "-r", "proscribe-collector")
    assert not (units / "proscribe-collector.service").exists()
    assert not (units / "proscribe-collector-purge.timer").exists()
    assert (scratch / "etc/proscribe/collector.toml").exists()  # remove keeps configuration
    purged = run(*dpkg, "-P", "proscribe-collector")
    assert not (scratch / "etc/proscribe").exists()
    assert not venv.exists()
    assert evidence.read_bytes() == b"evidence"  # purge never deletes the evidence database
    assert "kept /var/lib/proscribe-collector" in purged.stderr
