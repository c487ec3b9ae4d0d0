"""Enrichment from a fabricated procfs tree, and the exe hash cache."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

from proscribe.agent.sensors.enrich import (
    Enricher,
    HashCache,
    ProcessIds,
    parse_stat,
    process_ref,
    read_ids,
)
from proscribe.agent.sensors.process import ProcessSensor, Sighting
from proscribe.collector.api.schema import EventIn
from proscribe.core.events import MAX_CMDLINE_ITEMS, MAX_STRING, new_event
from proscribe.core.policy.matchers.process import ProcessFacts

STAT = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 {ticks} 0 0"


def fake_proc(root: Path, pid: int, *, exe: Path | None, cmdline: bytes, uid: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text("cpu 0\nbtime 1700000000\n")
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "stat").write_text(STAT.format(ticks=500))
    (d / "cmdline").write_bytes(cmdline)
    (d / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    if exe is not None:
        os.symlink(exe, d / "exe")
    return d


def test_parse_stat_handles_parentheses_and_spaces_in_comm() -> None:
    stat = parse_stat(STAT.format(ticks=777))
    assert stat.comm == "my (odd) name"
    assert (stat.state, stat.ppid, stat.start_ticks) == ("S", 1, 777)
    assert not stat.kernel_thread
    kthread = parse_stat("2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0")
    assert kthread.kernel_thread


def test_facts_from_procfs(tmp_path: Path) -> None:
    binary = tmp_path / "deepseek"
    binary.write_bytes(b"binary-content")
    fake_proc(tmp_path / "proc", 4242, exe=binary, cmdline=b"deepseek\0--serve\0")
    enricher = Enricher(tmp_path / "proc")
    facts = enricher.facts(4242, with_sha256=True)
    assert facts is not None
    assert facts.name == "my (odd) name"
    assert facts.argv0 == "deepseek" and facts.cmdline == ("deepseek", "--serve")
    assert facts.exe == str(binary)
    assert facts.user == "root" and facts.uid == 0 and facts.ppid == 1
    assert facts.sha256 == hashlib.sha256(b"binary-content").hexdigest()
    assert facts.start_time == 1700000000 + 500 / os.sysconf("SC_CLK_TCK")
    assert enricher.facts(4242).sha256 is None  # only hashed when the policy needs it


def test_a_process_gone_half_way_still_yields_what_was_read(tmp_path: Path) -> None:
    d = fake_proc(tmp_path / "proc", 7, exe=None, cmdline=b"")
    (d / "status").unlink()
    facts = Enricher(tmp_path / "proc").facts(7, with_sha256=True)
    assert facts is not None
    assert facts.name == "my (odd) name" and facts.exe == "" and facts.cmdline == ()
    assert facts.sha256 is None and facts.uid is None
    assert Enricher(tmp_path / "proc").facts(8) is None  # nothing at all to read


def test_hash_cache_hashes_each_file_version_once(tmp_path: Path) -> None:
    target = tmp_path / "bin"
    target.write_bytes(b"one")
    link = tmp_path / "exe"
    os.symlink(target, link)
    cache = HashCache(capacity=2)
    first = cache.digest(link)
    assert cache.digest(link) == first and cache.hashed == 1
    target.write_bytes(b"two-longer")  # new size/mtime: a new version
    assert cache.digest(link) == hashlib.sha256(b"two-longer").hexdigest()
    assert cache.hashed == 2


def test_uid_is_the_real_uid_and_euid_is_recorded_beside_it(tmp_path: Path) -> None:
    """One meaning of uid everywhere: the first field of ``Uid:`` (who ran it); the effective
    uid (a setuid program's) is a separate fact."""
    d = fake_proc(tmp_path / "proc", 4242, exe=None, cmdline=b"x\0")
    (d / "status").write_text("Name:\tx\nUid:\t4000000001\t0\t0\t0\nGid:\t0\t0\t0\t0\n")
    assert read_ids(4242, tmp_path / "proc") == ProcessIds(uid=4000000001, euid=0)
    facts = Enricher(tmp_path / "proc").facts(4242)
    assert facts is not None
    assert (facts.uid, facts.euid, facts.user) == (4000000001, 0, "4000000001")
    quick = Enricher(tmp_path / "proc").facts(4242, with_user=False)
    assert quick is not None and quick.uid is None
    completed = Enricher(tmp_path / "proc").with_user(quick)
    assert (completed.uid, completed.euid) == (4000000001, 0)
    assert process_ref(completed)["uid"] == 4000000001 and process_ref(completed)["euid"] == 0
    # the collector takes both (optional fields of the event's process object)
    EventIn.model_validate(
        new_event("process", rule="r", action="killed", process=process_ref(completed))
    )
    # a vanished process, and this one
    assert read_ids(4243, tmp_path / "proc") is None
    assert read_ids(os.getpid()) == (os.getuid(), os.geteuid())


def test_process_ref_is_clipped_to_the_wire_limits() -> None:
    facts = ProcessFacts(pid=1, name="n", exe="/x", cmdline=tuple(["a" * 5000] * 300), user="u")
    ref = process_ref(facts)
    assert len(ref["cmdline"]) == MAX_CMDLINE_ITEMS and len(ref["cmdline"][0]) == MAX_STRING


def _sensor_seeing(
    tmp_path: Path, exe_now: Path, facts_exe: Path
) -> tuple[list[ProcessFacts], ProcessSensor, Sighting]:
    """A sensor over a fabricated /proc whose process now runs ``exe_now``, handed facts read
    while it ran ``facts_exe`` (a fork sighting read just before the child's exec)."""
    root = tmp_path / "proc"
    fake_proc(root, 4242, exe=exe_now, cmdline=b"x\0")
    enricher = Enricher(root)
    assert enricher.hashes.digest(exe_now) is not None  # the new image's digest is known
    seen: list[ProcessFacts] = []
    sensor = ProcessSensor(
        "off",
        lambda facts, sighting: seen.append(facts),
        procfs=root,
        enricher=enricher,
        want_sha256=lambda: True,
    )
    facts = ProcessFacts(
        pid=4242, name="x", exe=str(facts_exe), start_time=enricher.start_time_of(4242)
    )
    return seen, sensor, Sighting(4242, "fork", 0.0, facts)


def test_a_digest_is_joined_only_to_facts_of_the_image_it_was_read_from(tmp_path: Path) -> None:
    """The image changed between reading facts and reading the digest: the digest of the new
    file must not be joined to the old facts (the new exec is judged on its own sighting)."""
    denied, launcher = tmp_path / "denied-bin", tmp_path / "python3"
    denied.write_bytes(b"\x7fELF denied")
    launcher.write_bytes(b"\x7fELF launcher")
    seen, sensor, sighting = _sensor_seeing(tmp_path, exe_now=denied, facts_exe=launcher)
    sensor._check(sighting)
    assert [f.sha256 for f in seen] == [None]
    assert sensor._hash(sighting.facts) is None  # type: ignore[arg-type]

    same, sensor, sighting = _sensor_seeing(tmp_path / "b", exe_now=denied, facts_exe=denied)
    sensor._check(sighting)
    assert [f.sha256 for f in same] == [hashlib.sha256(denied.read_bytes()).hexdigest()]


def test_with_the_files_identity_a_rename_keeps_the_digest_and_an_exec_drops_it(
    tmp_path: Path,
) -> None:
    """Facts read from procfs carry the executable's (device, inode): a file renamed since
    (a user renaming it in a loop to dodge the check) is still the same image, and its digest
    joins the facts; another file (an exec since) never does, even under the old name."""
    denied, launcher = tmp_path / "denied-bin", tmp_path / "python3"
    denied.write_bytes(b"\x7fELF denied")
    launcher.write_bytes(b"\x7fELF launcher")
    digest = hashlib.sha256(denied.read_bytes()).hexdigest()

    def identity(path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_dev, st.st_ino

    renamed, sensor, sighting = _sensor_seeing(tmp_path / "a", exe_now=denied, facts_exe=launcher)
    assert sighting.facts is not None
    moved = replace(sighting.facts, exe=str(tmp_path / "old-name"), exe_id=identity(denied))
    sensor._check(replace(sighting, facts=moved))
    assert [f.sha256 for f in renamed] == [digest]
    assert sensor._hash(moved) == digest

    execd, sensor, sighting = _sensor_seeing(tmp_path / "b", exe_now=denied, facts_exe=denied)
    assert sighting.facts is not None
    before = replace(sighting.facts, exe_id=identity(launcher))  # same path, another file
    sensor._check(replace(sighting, facts=before))
    assert [f.sha256 for f in execd] == [None]
    assert sensor._hash(before) is None
