"""The agent's model parts on their own: [models] config, the inbox, quarantine, store
discovery from users' real process environments, exemptions in the model guard."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proscribe.agent.config import load_agent_config
from proscribe.agent.enforce.kill import Killer
from proscribe.agent.evidence import Evidence, HostSection
from proscribe.agent.inbox import drain_inbox, write_inbox
from proscribe.agent.model_guard import ModelGuard
from proscribe.agent.model_quarantine import Quarantine
from proscribe.agent.sensors.enrich import Enricher
from proscribe.agent.sensors.models import discover_stores
from proscribe.agent.sensors.users import UserNames
from proscribe.core.errors import ConfigError, UsageError
from proscribe.core.events import Event, new_event
from proscribe.core.policy.loader import load_policy
from proscribe.core.policy.matchers import CompiledPolicy
from tests.support.models import write_gguf

ME = pwd.getpwuid(os.getuid()).pw_name


class ListSpool:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def append(self, event: Event) -> bool:
        self.events.append(event)
        return True

    def bump_count(self, event_id: str, n: int = 1) -> bool:
        return False


def test_models_config_defaults_and_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("")
    models = load_agent_config(path).models
    assert models.sensor == "on" and models.user_stores and models.maps_interval == 10.0
    for text, says in (
        ('[models]\ndirs = ["srv/models"]\n', "models.dirs"),
        ('[models]\nsensor = "yes"\n', "models.sensor"),
        ("[models]\nmaps_interval = 0\n", "models.maps_interval"),
        ("[models]\nwatch = true\n", "watch"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_agent_config(path)
        assert says in str(caught.value) and "\n" not in str(caught.value)


def test_inbox_commits_good_events_and_isolates_bad_ones(tmp_path: Path) -> None:
    spool = ListSpool()
    evidence = Evidence(spool, HostSection("this-host"))
    good = new_event("model", rule="m", action="reported", file={"path": "/x"})
    write_inbox(tmp_path, [good, {"kind": "nonsense", "id": "1"}])
    (tmp_path / "inbox" / "broken.json").write_text("{not json")
    assert drain_inbox(tmp_path, evidence) == 1
    assert spool.events[0]["id"] == good["id"]
    assert spool.events[0]["host"]["hostname"] == "this-host"
    assert [p.name for p in (tmp_path / "inbox").iterdir()] == ["rejected"]
    assert (tmp_path / "inbox" / "rejected" / "broken.json").exists()
    assert (tmp_path / "inbox").stat().st_mode & 0o777 == 0o700


def test_quarantine_moves_on_the_same_file_system_and_restores(tmp_path: Path) -> None:
    q = Quarantine(tmp_path / "q", tmp_path / "state" / "quarantine.jsonl")
    model = tmp_path / "home" / "m.gguf"
    model.parent.mkdir()
    model.write_bytes(b"weights")
    model.chmod(0o640)
    record = q.move(str(model), "ab" * 32, "rule-a")
    assert not model.exists() and (tmp_path / "q").stat().st_mode & 0o777 == 0o700
    [listed] = q.records()
    assert listed["id"] == record and listed["path"] == str(model) and listed["mode"] == 0o640
    model.write_bytes(b"new file at the same place")
    with pytest.raises(UsageError, match="exists again"):
        q.restore(record)
    model.unlink()
    q.restore(record)
    assert model.read_bytes() == b"weights" and model.stat().st_mode & 0o777 == 0o640
    assert q.records() == []
    with pytest.raises(UsageError, match="no file with id"):
        q.restore(record)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError):
        q.move(str(tmp_path / "fifo"), "", "rule-a")


def test_stores_come_from_each_users_process_environment(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".cache" / "huggingface").mkdir(parents=True)
    moved = tmp_path / "big-disk" / "ollama"
    moved.mkdir(parents=True)
    lms = tmp_path / "big-disk" / "lmstudio"
    lms.mkdir()
    (home / ".lmstudio-home-pointer").write_text(f"{lms}\n")
    me = pwd.getpwuid(os.getuid())
    account = pwd.struct_passwd((ME, "x", me.pw_uid, me.pw_gid, "", str(home), "/bin/sh"))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        env={"OLLAMA_MODELS": str(moved), "PATH": "/usr/bin:/bin"},
    )
    try:
        stores = discover_stores(system=False, passwd=lambda: [account])
    finally:
        holder.kill()
        holder.wait()
    found = {s.path: (s.what, s.owner) for s in stores}
    assert found[str(moved)] == ("Ollama", ME)
    assert found[str(lms)] == ("LM Studio (moved)", ME)
    assert found[str(home / ".cache" / "huggingface")] == ("Hugging Face cache", ME)
    assert str(home / ".ollama" / "models") not in found  # not there: not watched


class _InForce:
    def __init__(self, text: str) -> None:
        self.compiled = CompiledPolicy.compile(load_policy(text.encode()))

    def now(self) -> datetime:
        return datetime.now(UTC)


POLICY = f"""[meta]
schema = 1
id = "t"
serial = 1
issued = 2026-01-01T00:00:00Z
title = "t"
[[model]]
id = "m"
families = ["deepseek"]
action = "quarantine"
[[exemption]]
id = "lab"
rules = ["m"]
users = ["{ME}"]
"""


def test_an_exempted_owner_is_recorded_and_nothing_is_done(tmp_path: Path) -> None:
    spool = ListSpool()
    moved: list[str] = []

    class Recorder:
        def move(self, path: str, sha256: str, rule: str) -> str:
            moved.append(path)
            return "id"

    guard = ModelGuard(
        policy=_InForce(POLICY),  # type: ignore[arg-type]
        evidence=Evidence(spool, HostSection("h")),
        killer=Killer(Enricher()),
        users=UserNames(),
        mode="enforce",
        hostname="h",
        quarantine=Recorder(),
    )
    model = write_gguf(tmp_path / "m.gguf", name="DeepSeek R1")
    guard.on_file(str(model), "watch")
    guard.on_file(str(model), "sweep")  # the same version: not recorded twice
    assert [e["action"] for e in spool.events] == ["exempted"]
    assert "exempted by lab" in spool.events[0]["detail"] and moved == []
    assert json.loads(json.dumps(spool.events[0]))["file"]["owner"] == ME


def test_files_judged_allowed_are_not_read_again_after_a_restart(tmp_path: Path) -> None:
    def guard() -> ModelGuard:
        return ModelGuard(
            policy=_InForce(POLICY),  # type: ignore[arg-type]
            evidence=Evidence(ListSpool(), HostSection("h")),
            killer=Killer(Enricher()),
            users=UserNames(),
            mode="enforce",
            hostname="h",
            memory=tmp_path / "models-allowed.json",
        )

    llama = write_gguf(tmp_path / "a.gguf", name="Llama 3")
    first = guard()
    first.start()
    first.on_file(str(llama), "sweep")
    first.stop()
    assert first.counts.snapshot()["files_read"] == 1
    assert (tmp_path / "models-allowed.json").stat().st_mode & 0o777 == 0o600
    second = guard()
    second.start()
    second.on_file(str(llama), "sweep")
    assert second.counts.snapshot().get("files_read", 0) == 0  # remembered: not opened
    write_gguf(llama, name="DeepSeek R1 now")  # changed: read again, and denied
    second.on_file(str(llama), "sweep")
    second.stop()
    assert second.counts.snapshot()["files_read"] == 1
    (tmp_path / "models-allowed.json").write_text("{broken")
    third = guard()
    third.start()  # a damaged memory is ignored: everything is read again
    third.stop()


QUARANTINE_POLICY = """[meta]
schema = 1
id = "t"
serial = 1
issued = 2026-01-01T00:00:00Z
title = "t"
[[model]]
id = "m"
families = ["deepseek"]
action = "quarantine"
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_link_cannot_get_another_users_file_quarantined(tmp_path: Path) -> None:
    spool = ListSpool()
    guard = ModelGuard(
        policy=_InForce(QUARANTINE_POLICY),  # type: ignore[arg-type]
        evidence=Evidence(spool, HostSection("h")),
        killer=Killer(Enricher()),
        users=UserNames(),
        mode="enforce",
        hostname="h",
        quarantine=Quarantine(tmp_path / "q", tmp_path / "q.jsonl"),
    )
    theirs = write_gguf(tmp_path / "theirs" / "m.gguf", name="DeepSeek R1")
    os.chown(theirs, 65534, 65534)
    link = tmp_path / "store" / "m.gguf"
    link.parent.mkdir()
    link.symlink_to(theirs)
    guard.on_file(str(link), "watch")
    assert theirs.exists()
    assert [e["action"] for e in spool.events] == ["reported", "failed"]
    assert "another user owns; not moved" in spool.events[1]["detail"]
    mine = write_gguf(tmp_path / "store" / "mine.gguf", name="DeepSeek V3")
    guard.on_file(str(mine), "watch")
    assert not mine.exists() and spool.events[-1]["action"] == "quarantined"


def test_a_store_deleted_and_made_again_is_watched_again(tmp_path: Path) -> None:
    from proscribe.agent.sensors.models import ModelSensor, Store

    store = tmp_path / "ollama"
    store.mkdir()
    seen: list[str] = []
    sensor = ModelSensor(
        on_file=lambda path, source: seen.append(path),
        on_open=lambda path: None,
        on_mapped=lambda *a: None,
        stores=lambda: [Store(str(store), "Ollama", ME)] if store.is_dir() else [],
        sweep_interval=3600,
        files_per_second=1000,
        maps_interval=3600,
    )
    sensor.start()
    try:
        store.rmdir()
        sensor._forget_gone()
        assert sensor.stats()["stores_watched"] == 0
        store.mkdir()
        sensor._watch_new(sensor.stores())
        (store / "m.gguf").write_bytes(b"GGUF" + b"\0" * 64)
        from tests.support.waits import wait_for

        assert wait_for(lambda: str(store / "m.gguf") in seen, timeout=5)
    finally:
        sensor.stop()


def test_swept_only_stores_are_swept_not_watched(tmp_path: Path) -> None:
    from proscribe.agent.sensors.models import ModelSensor, Store

    if os.path.isdir("/opt"):
        found = {s.path: s.watch for s in discover_stores(users=False)}
        assert found["/opt"] is False
    tree = tmp_path / "opt"
    (tree / "models").mkdir(parents=True)
    (tree / "models" / "old.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    seen: list[tuple[str, str]] = []
    sensor = ModelSensor(
        on_file=lambda path, source: seen.append((path, source)),
        on_open=lambda path: None,
        on_mapped=lambda *a: None,
        stores=lambda: [Store(str(tree), "/opt", "", watch=False)],
        sweep_interval=3600,
        files_per_second=1000,
        maps_interval=3600,
    )
    sensor.start()
    try:
        from tests.support.waits import wait_for

        assert wait_for(lambda: seen, timeout=5)
        assert seen == [(str(tree / "models" / "old.gguf"), "sweep")]
        (tree / "models" / "new.gguf").write_bytes(b"GGUF" + b"\0" * 64)
        time.sleep(1.0)
        assert len(seen) == 1  # not watched: the next sweep finds it
        assert sensor.stats()["stores_watched"] == 0 and sensor.stats()["stores_swept"] == 1
    finally:
        sensor.stop()
