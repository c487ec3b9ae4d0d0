"""The agent exactly as install.sh lays it out, running for real and reporting to a collector.

It runs with the capability set its systemd unit grants (bounding set + no-new-privs, via
setpriv), and the unit file itself passes ``systemd-analyze verify`` at its real path.

install.sh --root puts the agent into a staging root with its final paths baked in (shebangs
name /opt/proscribe/bin/python, agent.toml names /var/lib/proscribe and /etc/proscribe/…).
To run that artifact unchanged without touching the host, the test starts it in a private
mount namespace where read-only overlays show the staging root's /opt and /etc on top of the
host's, and a writable overlay puts the staging root's /var/lib under /var/lib. The host's
/opt, /etc and /var/lib are never written. The collector is the real one (``proscribe
collector serve``) on a loopback port; the violation is a process this test starts, named with
a random token that only this test's policy matches.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proscribe.core.policy.envelope import sign_payload
from proscribe.core.policy.keys import public_key_string
from tests.support.agent_harness import write_secret
from tests.support.ports import free_tcp_port
from tests.support.waits import wait_for

pytestmark = [pytest.mark.root, pytest.mark.linux, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
LINUX = REPO / "installer" / "linux"
PROSCRIBE = [sys.executable, "-m", "proscribe.cli"]


def build_wheelhouse(base: Path) -> Path:
    """Same cache as tests/integration/test_installer_linux.py (one build per session)."""
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


def policy_text(token: str) -> str:
    return f"""
[meta]
schema  = 1
id      = "installer-e2e"
serial  = 1
issued  = 2025-01-24T00:00:00Z
expires = 2099-01-01T00:00:00Z
title   = "Installer end-to-end ban"

[defaults]
action   = "report"
severity = "high"

[[process]]
id      = "deepseek-desktop"
names   = ["dsk{token}*"]
action  = "block"
message = "DeepSeek is prohibited on this device."
"""


def get_json(url: str, token: str) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[dict[str, Any]]:
    port = free_tcp_port()
    config = tmp_path / "collector.toml"
    subprocess.run(
        [sys.executable, str(REPO / "installer/common/render_config.py"), "collector",
         "--listen", f"127.0.0.1:{port}", "--database-url", f"sqlite:///{tmp_path}/c.db",
         "-o", str(config)],
        check=True, timeout=30,
    )  # fmt: skip
    cli = [*PROSCRIBE, "collector"]
    secret = subprocess.run(
        [*cli, "enroll-secret", "create", "--config", str(config)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()[0]  # fmt: skip
    user = subprocess.run(
        [*cli, "user", "add", "auditor", "--role", "viewer", "--config", str(config)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    token = next(
        line.split(":", 1)[1].strip() for line in user.splitlines() if line.startswith("api token")
    )
    log = tmp_path / "collector.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cli, "serve", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                return True
        except OSError:
            return False

    try:
        assert wait_for(healthy, 30, step=0.2), log.read_text()
        yield {"url": url, "secret": secret, "token": token, "log": log}
    finally:
        stop(proc)


def test_installed_agent_reports_a_violation_to_the_collector(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, collector: dict[str, Any]
) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    house = build_wheelhouse(tmp_path_factory.getbasetemp())
    token = secrets.token_hex(4)
    key = Ed25519PrivateKey.generate()
    (tmp_path / "signer.pub").write_text(public_key_string(key.public_key()) + "\n")
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(token))
    (tmp_path / "policy.toml.sig").write_bytes(sign_payload(policy.read_bytes(), key).to_bytes())
    write_secret(tmp_path / "enroll.secret", collector["secret"] + "\n")

    root = tmp_path / "root"
    subprocess.run(
        [str(LINUX / "install.sh"), "--root", str(root), "--wheelhouse", str(house),
         "--python", sys.executable, "--collector-url", collector["url"],
         "--enroll-secret-file", str(tmp_path / "enroll.secret"),
         "--trusted-key", str(tmp_path / "signer.pub"), "--policy", str(policy),
         "--mode", "enforce", "--dns", "off"],
        check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    work = tmp_path / "overlay-work"
    work.mkdir()
    unit_path = "/etc/systemd/system/proscribe-agent.service"
    unit = dict(
        line.split("=", 1)
        for line in (root / unit_path.lstrip("/")).read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    # The unit's capability set, applied the way systemd would for a root service: the
    # bounding set limits what uid 0 gets at exec, and no-new-privs stops it regaining more.
    caps = ",".join(
        "+" + c.removeprefix("CAP_").lower() for c in unit["CapabilityBoundingSet"].split()
    )
    assert caps == "+net_admin,+sys_ptrace,+dac_read_search,+kill"  # enforce, dns off
    mounts = (
        "set -e; "
        f"mount -t overlay overlay -o lowerdir={root}/opt:/opt /opt; "
        f"mount -t overlay overlay -o lowerdir={root}/etc:/etc /etc; "
        f"mount -t overlay overlay -o lowerdir=/var/lib,upperdir={root}/var/lib,"
        f"workdir={work} /var/lib; "
    )
    namespace = ["unshare", "--mount", "--propagation", "private", "--", "bash", "-c"]
    if shutil.which("systemd-analyze"):
        # The installed unit, unmodified, with its ExecStart present at the real path.
        verify = subprocess.run(
            [*namespace, mounts + f"systemd-analyze verify {unit_path}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    script = (
        mounts + f"exec setpriv --bounding-set -all,{caps} --inh-caps -all --nnp -- "
        f"{unit['ExecStart']}"
    )
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [*namespace, script],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    victim: subprocess.Popen[bytes] | None = None
    public = Path(tempfile.mkdtemp(prefix="proscribe-e2e-"))
    public.chmod(0o755)  # the victim runs as nobody
    try:
        state = root / "var/lib/proscribe"
        assert wait_for(lambda: (state / "status.json").exists() or agent.poll() is not None, 60)
        assert agent.poll() is None, log.read_text()

        # Another user's process: killing it needs CAP_KILL, reading its exe CAP_SYS_PTRACE.
        binary = public / f"dsk{token}app"
        shutil.copy("/bin/sleep", binary)
        binary.chmod(0o755)
        victim = subprocess.Popen(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(binary), "60"]
        )

        def reported() -> list[dict[str, Any]]:
            try:
                page = get_json(
                    f"{collector['url']}/api/v1/violations?rule=deepseek-desktop",
                    collector["token"],
                )
            except OSError:
                return []
            return [e for e in page["items"] if (e.get("process") or {}).get("pid") == victim.pid]

        events = wait_for(reported, 45, step=0.2)
        assert events, f"no violation reached the collector\nagent log:\n{log.read_text()}"
        event = events[0]
        assert event["policy"]["id"] == "installer-e2e"
        assert event["action"] == "killed"
        assert event["process"]["name"].startswith(f"dsk{token}")
        assert event["process"]["exe"] == str(binary)  # read through /proc as another user
        assert wait_for(lambda: victim.poll() is not None, 10)  # the agent killed it
        # State went where the config says, inside the staging root; the host is untouched.
        assert any(state.iterdir())
        assert not Path("/opt/proscribe").exists() and not Path("/etc/proscribe").exists()
    finally:
        if victim is not None and victim.poll() is None:
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(timeout=5)
        stop(agent)
        shutil.rmtree(public, ignore_errors=True)


def test_install_without_root_flag_on_a_host_without_systemd(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The real-root code path (no --root): in a private mount namespace whose /opt, /etc and
    /var/lib are writable overlays backed by temp dirs, so the host is never written."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    if Path("/run/systemd/system").exists():
        pytest.skip("systemd is PID 1 here: install.sh would really start the service")
    house = build_wheelhouse(tmp_path_factory.getbasetemp())
    mounts = []
    for top in ("/opt", "/etc", "/var/lib"):
        upper, work = tmp_path / f"upper{top}", tmp_path / f"work{top}"
        upper.mkdir(parents=True)
        work.mkdir(parents=True)
        mounts.append(
            f"mount -t overlay overlay -o lowerdir={top},upperdir={upper},workdir={work} {top}"
        )
    script = "; ".join(
        [
            "set -e",
            *mounts,
            f"{LINUX}/install.sh --wheelhouse {house} --python {sys.executable} --mode monitor"
            f" --trusted-key {public_key_string(Ed25519PrivateKey.generate().public_key())}",
            "/opt/proscribe/bin/proscribe --version",
            "/opt/proscribe/share/installer/linux/uninstall.sh",
            "test ! -e /opt/proscribe && test ! -e /etc/proscribe",
        ]
    )
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "bash", "-c", script],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "systemd is not running here" in out.stdout
    assert "/opt/proscribe/bin/proscribe agent run --config /etc/proscribe/agent.toml" in out.stdout
    assert "proscribe 0.1.0" in out.stdout
    assert "Proscribe agent removed" in out.stdout
    assert "kept state in /var/lib/proscribe" in out.stdout  # no --purge
    assert (tmp_path / "upper/var/lib/proscribe").is_dir()
    assert not Path("/opt/proscribe").exists() and not Path("/etc/proscribe").exists()
