"""Helpers for agent tests: a signed policy, an agent config, and a real daemon subprocess.

Every process a test starts is tracked and killed by pid at the end; nothing else is touched.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proscribe.core.policy.envelope import sign_payload
from proscribe.core.policy.keys import public_key_string
from tests.support.waits import wait_for

REPO = Path(__file__).resolve().parents[2]
PROSCRIBE = [sys.executable, "-m", "proscribe.cli"]


def policy_text(
    token: str,
    serial: int = 1,
    *,
    extra: str = "",
    expires: str = "2099-01-01T00:00:00Z",
    action: str = "block",
) -> str:
    """A policy whose rules only match names carrying ``token``, so a test's agent can never
    touch a process some other test on this machine started."""
    return f"""
[meta]
schema  = 1
id      = "test-ban"
serial  = {serial}
issued  = 2025-01-24T00:00:00Z
expires = {expires}
title   = "Test ban"

[defaults]
action   = "report"
severity = "high"

[[process]]
id      = "deepseek-desktop"
names   = ["dsk{token}*"]
action  = "{action}"
message = "DeepSeek is prohibited on this device."

[[process]]
id      = "ollama-deepseek"
cmdline = ['(?i)\\bollama\\b.*\\bdeepseek-r1-{token}\\b']
action  = "{action}"
{extra}
"""


class Signer:
    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.public = public_key_string(self.key.public_key())

    def write(self, path: Path, text: str) -> None:
        data = text.encode()
        sig = sign_payload(data, self.key).to_bytes()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        tmp_sig = path.with_name(path.name + ".sig.tmp")
        tmp_sig.write_bytes(sig)
        os.replace(tmp_sig, path.with_name(path.name + ".sig"))


def write_secret(path: Path, secret: str) -> Path:
    """An enroll secret file as the installer makes it: mode 0600 (the agent refuses a file
    that group or others can read)."""
    path.write_text(secret, encoding="utf-8")
    path.chmod(0o600)
    return path


def write_config(
    tmp: Path,
    signer: Signer,
    *,
    mode: str = "enforce",
    process: str = "auto",
    extra: str = "",
    hostname: str = "test-host",
    kernel_guard: str = "off",
) -> Path:
    """An agent config under ``tmp``. The eBPF exec guard is ``off`` unless asked for: most
    agent tests exercise the process sensor's own kill (the fallback), which the kernel guard
    would otherwise pre-empt; tests/privileged/test_kernel_guard.py runs it for real."""
    config = tmp / "agent.toml"
    config.write_text(
        f"""
[agent]
mode = "{mode}"
state_dir = "{tmp / "state"}"
hostname = "{hostname}"
status_interval = 0.5

[policy]
file = "{tmp / "policy.toml"}"
trusted_keys = ["{signer.public}"]
threshold = 1

[sensors]
process = "{process}"
dns = "off"
poll_interval = 0.2
sweep_interval = 5

[enforce]
notify = false
kernel_guard = "{kernel_guard}"
{extra}
"""
    )
    return config


class Procs:
    """Processes started by a test; all are killed (by pid) and reaped at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, **kw)
        self.started.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream is not None:
                    stream.close()


def spool_events(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "spool.db"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT body, count, state FROM events ORDER BY seq").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
    return [dict(json.loads(body), _count=count, _state=state) for body, count, state in rows]


@contextmanager
def running_agent(
    config: Path, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``proscribe agent run --config …`` as a subprocess, ready once status.json shows it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*PROSCRIBE, "agent", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )
    try:
        status = config.parent / "state" / "status.json"
        ok = wait_for(lambda: status.exists() or proc.poll() is not None, timeout=20)
        assert ok and proc.poll() is None, f"agent did not start:\n{log.read_text()}"
        time.sleep(0.3)  # the first sweep
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def events_for(state_dir: Path, pid: int) -> list[dict[str, Any]]:
    return [e for e in spool_events(state_dir) if (e.get("process") or {}).get("pid") == pid]
