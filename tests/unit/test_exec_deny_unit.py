"""Exec-deny's pure parts: fanotify struct parsing, the verdict cache, the policy decider, the
checks of its settings (once, in the config loader) and of its mounts (no fanotify group is
opened here)."""

from __future__ import annotations

import hashlib
import os
import struct
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proscribe.agent.config import EnforceSection, parse_agent_config
from proscribe.agent.enforce import _fanotify_linux as fan
from proscribe.agent.enforce.exec_deny import build_exec_guard, check_mount
from proscribe.agent.enforce.exec_verdicts import (
    CacheKey,
    ExecRequest,
    ExecVerdict,
    VerdictCache,
    policy_decider,
    sha256_of_fd,
)
from proscribe.core.errors import ConfigError
from proscribe.core.policy.loader import load_policy
from proscribe.core.policy.matchers import CompiledPolicy


def _meta(fd: int, pid: int, mask: int = fan.FAN_OPEN_EXEC_PERM, vers: int = 3) -> bytes:
    return fan.METADATA.pack(fan.METADATA.size, vers, 0, fan.METADATA.size, mask, fd, pid)


def test_metadata_layout_matches_the_kernel_struct() -> None:
    assert fan.METADATA.size == 24  # sizeof(struct fanotify_event_metadata)
    assert fan.pack_response(7, True) == struct.pack("=iI", 7, fan.FAN_ALLOW)
    assert fan.pack_response(7, False) == struct.pack("=iI", 7, fan.FAN_DENY)


def test_parse_events_reads_every_event_in_one_buffer() -> None:
    buf = _meta(5, 100) + _meta(6, 200, mask=fan.FAN_OPEN_EXEC_PERM | 0x20) + _meta(-1, 0, 0x4000)
    events = fan.parse_events(buf)
    assert [(e.fd, e.pid) for e in events] == [(5, 100), (6, 200), (fan.FAN_NOFD, 0)]
    assert events[1].mask & fan.FAN_OPEN_EXEC_PERM
    assert events[2].mask & fan.FAN_Q_OVERFLOW
    assert fan.parse_events(b"") == []


@pytest.mark.parametrize(
    ("buf", "message"),
    [
        (_meta(5, 1)[:20], "truncated"),
        (_meta(5, 1, vers=2), "version 2"),
        (struct.pack("=IBBHQii", 8, 3, 0, 24, 0, 5, 1), "bad event_len 8"),
        (struct.pack("=IBBHQii", 48, 3, 0, 24, 0, 5, 1), "bad event_len 48"),
    ],
)
def test_parse_events_refuses_malformed_buffers(buf: bytes, message: str) -> None:
    with pytest.raises(fan.MalformedEvent, match=message):
        fan.parse_events(buf)


def _key(mtime_ns: int = 1, ctime_ns: int = 4) -> CacheKey:
    return CacheKey(dev=1, ino=2, mtime_ns=mtime_ns, size=3, ctime_ns=ctime_ns)


def _no_uid() -> int | None:
    raise AssertionError("the caller's uid is read only for per-user verdicts")


def test_cache_hits_until_the_ttl_and_is_keyed_by_identity() -> None:
    now = [0.0]
    cache = VerdictCache(capacity=8, ttl=10.0, clock=lambda: now[0])
    deny = ExecVerdict(True, "rule x")
    cache.put(_key(), deny, 1000)
    assert cache.get(_key(), _no_uid) is deny
    assert cache.get(_key(mtime_ns=2), _no_uid) is None  # the file was written
    assert cache.get(_key(ctime_ns=5), _no_uid) is None  # renamed, linked or chmod-ed
    now[0] = 10.0
    assert cache.get(_key(), _no_uid) is None
    assert len(cache) == 0


def test_per_user_verdicts_hit_only_for_the_same_uid() -> None:
    cache = VerdictCache(capacity=8, ttl=10.0, clock=lambda: 0.0)
    exempted = ExecVerdict(False, per_user=True)
    cache.put(_key(), exempted, 1000)
    assert cache.get(_key(), lambda: 1000) is exempted
    assert cache.get(_key(), lambda: 1001) is None
    assert cache.get(_key(), lambda: None) is None


def test_cache_evicts_least_recently_used_and_clears() -> None:
    cache = VerdictCache(capacity=2, ttl=60.0, clock=lambda: 0.0)
    a, b, c = (CacheKey(1, ino, 0, 0, 0) for ino in (1, 2, 3))
    cache.put(a, ExecVerdict(False))
    cache.put(b, ExecVerdict(False))
    assert cache.get(a, _no_uid) is not None  # a is now the most recent
    cache.put(c, ExecVerdict(True))
    assert cache.get(b, _no_uid) is None
    assert cache.get(a, _no_uid) is not None and cache.get(c, _no_uid) is not None
    cache.clear()
    assert len(cache) == 0
    off = VerdictCache(capacity=0)
    off.put(a, ExecVerdict(True))
    assert off.get(a, _no_uid) is None


def test_cache_key_from_stat(tmp_path: Path) -> None:
    f = tmp_path / "tool"
    f.write_bytes(b"x" * 10)
    st = os.stat(f)
    key = CacheKey.of(st)
    assert (key.dev, key.ino, key.size, key.mtime_ns) == (st.st_dev, st.st_ino, 10, st.st_mtime_ns)
    time.sleep(0.02)  # ctime has the kernel's coarse clock tick
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime put back: ctime still moves
    moved = CacheKey.of(os.stat(f))
    assert moved != key and moved.mtime_ns == key.mtime_ns
    time.sleep(0.02)
    os.rename(f, tmp_path / "deepseek")
    assert CacheKey.of(os.stat(tmp_path / "deepseek")) != moved


def test_sha256_of_fd_reads_the_whole_file_and_respects_the_limit(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    f = tmp_path / "bin"
    f.write_bytes(data)
    fd = os.open(f, os.O_RDONLY)
    try:
        assert sha256_of_fd(fd, len(data)) == hashlib.sha256(data).hexdigest()
        assert sha256_of_fd(fd, len(data), limit=1024) is None
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # pread leaves the offset alone
    finally:
        os.close(fd)


POLICY = rb"""
[meta]
schema  = 1
id      = "exec-deny-test"
serial  = 1
issued  = 2025-01-24T00:00:00Z
expires = 2030-01-01T00:00:00Z
title   = "t"

[[process]]
id      = "deepseek-desktop"
names   = ["deepseek*"]
paths   = ["/opt/deepseek/**"]
cmdline = ['(?i)\bollama\b.*\bdeepseek']
action  = "block"

[[process]]
id      = "report-only"
names   = ["lms"]
action  = "report"

[[process]]
id      = "by-hash"
sha256  = ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]
action  = "block"

[[exemption]]
id    = "alice-lab"
rules = ["deepseek-desktop"]
users = ["alice"]
"""

NOW = datetime(2025, 2, 1, tzinfo=UTC)


def _request(path: str, user: str = "bob", sha256: str | None = None) -> ExecRequest:
    return ExecRequest(pid=10, path=path, uid=1000, user=user, dev=1, ino=2, size=3, sha256=sha256)


def test_policy_decider_denies_by_name_path_and_hash_but_not_report_or_exempted() -> None:
    compiled = CompiledPolicy.compile(load_policy(POLICY, "t.toml"))
    decide = policy_decider(compiled, "host-1", lambda: NOW)
    v = decide(_request("/usr/local/bin/deepseek-r1"))
    assert v.deny and v.rule_id == "deepseek-desktop"
    assert "name glob 'deepseek*'" in v.reason and v.action == "denied"
    assert decide(_request("/opt/deepseek/bin/helper")).deny
    assert decide(_request("/usr/bin/x", sha256="a" * 64)).rule_id == "by-hash"
    report = decide(_request("/usr/bin/lms"))
    assert not report.deny and report.decisions[0].rule_id == "report-only"
    exempted = decide(_request("/usr/local/bin/deepseek", user="alice"))
    assert not exempted.deny and exempted.decisions[0].exempted_by == "alice-lab"
    # the rule has a user-scoped exemption, so its verdicts are per user; others are not
    assert exempted.per_user and decide(_request("/usr/local/bin/deepseek")).per_user
    assert not decide(_request("/usr/bin/x", sha256="a" * 64)).per_user
    # argv is not known before exec: a command-line rule cannot deny here
    assert not decide(_request("/usr/bin/ollama")).deny
    assert decide(_request("/usr/bin/true")) == ExecVerdict(False)


def test_build_exec_guard_is_off_without_mounts() -> None:
    assert build_exec_guard(EnforceSection(), lambda: None, None, "enforce", host="h") is None


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ('exec_deny_mounts = "/opt"', "enforce.exec_deny_mounts must be a list of strings"),
        ('exec_deny_mounts = [""]', "enforce.exec_deny_mounts must hold only non-empty"),
        ("exec_deny_timeout_ms = 0", "enforce.exec_deny_timeout_ms is 0, out of range"),
        ("exec_deny_timeout_ms = 5001", "enforce.exec_deny_timeout_ms is 5001, out of range"),
        ('exec_deny_cache_size = "big"', "enforce.exec_deny_cache_size must be an integer"),
        ("exec_deny_cache_size = -1", "enforce.exec_deny_cache_size is -1, out of range"),
    ],
)
def test_exec_deny_settings_are_checked_once_by_the_config_loader(keys: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_agent_config(f"[enforce]\n{keys}\n".encode(), Path("/etc/proscribe/agent.toml"))
    assert "\n" not in str(info.value) and "fix:" in str(info.value)


def test_cache_size_zero_means_no_verdict_cache() -> None:
    config = parse_agent_config(
        b"[enforce]\nexec_deny_mounts = ['/proc']\nexec_deny_cache_size = 0\n", Path("a.toml")
    )
    guard = build_exec_guard(config.enforce, lambda: None, None, "enforce", host="h")
    assert guard is not None and guard.cache.capacity == 0


@pytest.mark.parametrize(
    ("mount", "message"), [("/", "'/' is refused"), ("/proc/self", "is not a mount point")]
)
def test_mounts_are_checked_before_marking(mount: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        check_mount(Path(mount))
    assert "\n" not in str(info.value) and "fix:" in str(info.value)


@pytest.mark.linux  # /proc is a mount point
def test_build_exec_guard_reads_the_keys() -> None:
    guard = build_exec_guard(
        EnforceSection(
            exec_deny_mounts=("/proc",), exec_deny_timeout_ms=50, exec_deny_cache_size=8
        ),
        lambda: None,
        None,
        "monitor",
        host="h",
    )
    assert guard is not None
    assert guard.mounts == [Path("/proc")] and guard.timeout == 0.05
    assert guard.cache.capacity == 8 and guard.mode == "monitor"
    assert guard.stats()["running"] is False
