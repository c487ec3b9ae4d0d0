"""sha256 rules with the real daemon (process sensor's kill; the eBPF guard is off here):

* hashing runs on its own thread: large executables being hashed never delay a name rule's kill;
* the digest cache is keyed with ctime: an executable rewritten in place to denied bytes, its
  mtime and size restored, is hashed again and killed.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent_harness import (
    Procs,
    Signer,
    policy_text,
    running_agent,
    spool_events,
    write_config,
)
from tests.support.waits import wait_for

pytestmark = [pytest.mark.root, pytest.mark.linux]

SLEEP = Path("/bin/sleep").read_bytes()


@pytest.fixture
def procs() -> Iterator[Procs]:
    started = Procs()
    yield started
    started.cleanup()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, bytes, Path]]:
    tmp = tmp_path_factory.mktemp("hashing")
    token = secrets.token_hex(3)
    denied = SLEEP + secrets.token_bytes(64)  # the bytes the hash rule denies
    signer = Signer()
    signer.write(
        tmp / "policy.toml",
        policy_text(
            token,
            extra=f"""
[[process]]
id     = "hash-rule"
sha256 = ["{hashlib.sha256(denied).hexdigest()}"]
action = "block"
""",
        ),
    )
    config = write_config(tmp, signer, process="netlink")
    bindir = tmp / "bin"
    bindir.mkdir()
    with running_agent(config, tmp / "agent.log"):
        yield tmp / "state", token, denied, bindir


def test_large_executables_being_hashed_do_not_delay_a_name_kill(
    agent: tuple[Path, str, bytes, Path], procs: Procs
) -> None:
    _state, token, _denied, bindir = agent
    for i in range(4):  # 4 x 512 MiB (sparse) queued for hashing, started just before
        big = bindir / f"big-{i}"
        big.write_bytes(SLEEP + secrets.token_bytes(16))
        os.truncate(big, 512 * 1024 * 1024)
        big.chmod(0o755)
        procs.start([str(big), "30"])
    named = bindir / f"dsk{token}-late"
    shutil.copy("/bin/sleep", named)
    began = time.monotonic()
    proc = procs.start([str(named), "30"])
    assert proc.wait(10) == -signal.SIGKILL
    assert time.monotonic() - began < 1.0  # before: behind every hash on the checker thread


def test_a_rewrite_in_place_with_mtime_restored_is_hashed_again(
    agent: tuple[Path, str, bytes, Path], procs: Procs
) -> None:
    state, _token, denied, bindir = agent
    program = bindir / "in-place"
    program.write_bytes(SLEEP + secrets.token_bytes(64))  # innocent, same size as the denied
    program.chmod(0o755)
    first = procs.start([str(program), "30"])
    time.sleep(1.0)  # judged and hashed: innocent
    assert first.poll() is None
    first.kill()
    first.wait(5)
    st = os.stat(program)
    with open(program, "r+b") as fh:  # same inode, same size
        fh.write(denied)
    os.utime(program, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime set back
    assert os.stat(program).st_size == st.st_size
    second = procs.start([str(program), "30"])
    assert second.wait(10) == -signal.SIGKILL
    assert wait_for(
        lambda: any(
            e["rule"] == "hash-rule" and e["process"]["pid"] == second.pid
            for e in spool_events(state)
        )
    )
