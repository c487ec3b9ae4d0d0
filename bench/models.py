"""Local AI models (issue 12): detection latency, runtime kill latency, sweep cost, idle cost.

Runs the real daemon (``proscribe agent run``) on folders made here, with a policy whose model
rule matches only this run's token, and measures:

* **file → event**: a GGUF (written by llama.cpp's ``gguf`` writer) is closed in a watched folder;
  the time until its ``model`` event is committed (readable in the spool from another process,
  polled every 5 ms). Peer: a bare watchdog observer on the same folder
  (close → handler call), the floor of any inotify-through-watchdog design.
* **mmap → killed**: a child maps a denied GGUF and writes the time; the time until it is dead
  (SIGKILL from the agent). Peer: the same agent killing a program by name (process rule, exec
  → killed).
* **sweep**: files per second and bytes read per file for ``core.models.walk`` + ``identify``
  over a tree of ``--files`` files (default 100 000: mostly small files, some JSON, weights and
  GGUF), cold-ish (the tree was just written, so the page cache is warm: an upper bound). Peer:
  ``os.walk`` + ``stat`` of every file (the metadata floor).
* **idle**: the agent's CPU (% of one core) and RSS over ``--seconds`` with watches on that tree
  after the first sweep ended, beside the same agent with ``[models] sensor = "off"``.

    .venv/bin/python -m bench.models [--files 100000] [--samples 40] [--seconds 30]

Everything started here is killed by pid afterwards; the folders are removed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from tests.support.agent_harness import Signer, policy_text, write_config
from tests.support.models import write_gguf, write_gguf_bytes

MAPPER = """
import mmap, sys, time
f = open(sys.argv[1], "rb")
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
m[0]
print(time.time(), flush=True)
time.sleep(30)
"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def line(label: str, values: list[float], unit: str = "ms", scale: float = 1000) -> str:
    if not values:
        return f"{label:<44} no samples"
    return (
        f"{label:<44} median {statistics.median(values) * scale:8.1f} {unit}  "
        f"p99 {pct(values, 99) * scale:8.1f} {unit}  (n={len(values)})"
    )


def model_events(state: Path) -> list[dict[str, Any]]:
    path = state / "spool.db"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT body FROM events ORDER BY seq").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
    return [e for e in (json.loads(r[0]) for r in rows) if e["kind"] in ("model", "process")]


def start_agent(tmp: Path, token: str, extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    signer = Signer()
    rule = f'\n[[model]]\nid = "deepseek-models"\nnames = ["DeepSeek*{token}*"]\naction = "block"\n'
    signer.write(tmp / "policy.toml", policy_text(token, extra=rule))
    config = write_config(tmp, signer, process="auto", extra=extra)
    agent = subprocess.Popen(
        [sys.executable, "-m", "proscribe.cli", "agent", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "agent.log").open("wb"),
    )
    status = tmp / "state" / "status.json"
    deadline = time.monotonic() + 30
    while not status.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return agent, tmp / "state"


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def file_to_event(store: Path, state: Path, token: str, samples: int) -> list[float]:
    out = []
    scratch = store.parent / "scratch"
    for i in range(samples):
        data = write_gguf_bytes(scratch / f"{i}.gguf", name=f"DeepSeek R1 {token} {i}")
        path = store / f"f{i}" / "model.bin"
        path.parent.mkdir()
        time.sleep(0.6)  # the new folder's watch is in place (watchdog adds it on IN_CREATE)
        path.write_bytes(data)  # one open, write, close
        closed = time.time()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = [
                e for e in model_events(state) if (e.get("file") or {}).get("path") == str(path)
            ]
            if found:  # committed: readable in the spool by another process (5 ms polls)
                out.append(time.time() - closed)
                break
            time.sleep(0.005)
        time.sleep(0.05)
    return out


def watchdog_floor(folder: Path, samples: int) -> list[float]:
    from watchdog.events import FileClosedEvent
    from watchdog.observers import Observer

    seen: dict[str, float] = {}

    class Handler:
        def dispatch(self, event: Any) -> None:
            if event.event_type == "closed":
                seen.setdefault(os.fsdecode(event.src_path), time.time())

    observer = Observer()
    observer.schedule(
        Handler(),  # type: ignore[arg-type]
        str(folder),
        recursive=True,
        event_filter=[FileClosedEvent],
    )
    observer.start()
    out = []
    try:
        for i in range(samples):
            path = folder / f"w{i}.bin"
            path.write_bytes(b"x" * 4096)
            closed = time.time()
            deadline = time.monotonic() + 5
            while str(path) not in seen and time.monotonic() < deadline:
                time.sleep(0.005)
            if str(path) in seen:
                out.append(seen[str(path)] - closed)
    finally:
        observer.stop()
        observer.join()
    return out


def kill_latency(store: Path, token: str, samples: int) -> list[float]:
    model = write_gguf(store / "runtime" / "weights.gguf", name=f"DeepSeek V3 {token}")
    time.sleep(2.0)  # judged (its event is in the spool) before runtimes map it
    out = []
    for _ in range(samples):
        child = subprocess.Popen([sys.executable, "-c", MAPPER, str(model)], stdout=subprocess.PIPE)
        assert child.stdout is not None
        mapped = float(child.stdout.readline() or 0)
        try:
            child.wait(10)
            died = time.time()
            if mapped and child.returncode == -signal.SIGKILL:
                out.append(died - mapped)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        child.stdout.close()
    return out


def name_kill_latency(tmp: Path, token: str, samples: int) -> list[float]:
    binary = tmp / f"dsk{token}-bench"
    shutil.copy2("/bin/sleep", binary)
    out = []
    for _ in range(samples):
        started = time.time()
        child = subprocess.Popen([str(binary), "30"])
        try:
            child.wait(10)
            if child.returncode == -signal.SIGKILL:
                out.append(time.time() - started)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        time.sleep(0.05)
    return out


def make_tree(root: Path, n: int, token: str) -> None:
    per_dir = 200
    for i in range(n):
        folder = root / f"d{i // per_dir // 50}" / f"e{i // per_dir}"
        if i % per_dir == 0:
            folder.mkdir(parents=True, exist_ok=True)
        kind = i % 100
        if kind == 0:
            write_gguf(folder / f"m{i}.gguf", name=f"Llama {token} {i}")
        elif kind == 1:
            (folder / "config.json").write_text('{"model_type": "llama"}')
        elif kind == 2:
            (folder / f"w{i}.bin").write_bytes(os.urandom(2048))
        else:
            (folder / f"n{i}.txt").write_text("notes\n")


def sweep_cost(root: Path) -> tuple[float, float, float, int]:
    from proscribe.core.models.identity import identify
    from proscribe.core.models.walk import walk

    total = sum(len(files) for _, _, files in os.walk(root))
    started = time.perf_counter()
    opened = 0
    read = 0
    for path in walk(str(root)):
        opened += 1
        found = identify(path)
        read += found.bytes_read if found is not None else 16
    sweep_s = time.perf_counter() - started
    started = time.perf_counter()
    for folder, _, files in os.walk(root):
        for name in files:
            os.stat(os.path.join(folder, name))
    floor_s = time.perf_counter() - started
    return total / sweep_s, total / floor_s, read / total, opened


def sweeps_done(state: Path) -> int:
    try:
        status = json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return 0
    return int(((status.get("sensors") or {}).get("models") or {}).get("sweeps", 0))


def idle(agent: subprocess.Popen[bytes], seconds: float) -> tuple[float, float]:
    if agent.poll() is not None:
        raise SystemExit(f"the agent (pid {agent.pid}) exited with {agent.returncode}")
    proc = psutil.Process(agent.pid)
    t0 = proc.cpu_times()
    time.sleep(seconds)
    t1 = proc.cpu_times()
    cpu = (t1.user + t1.system - t0.user - t0.system) / seconds * 100
    return cpu, proc.memory_info().rss / 2**20


def sensor_alone(tree: Path, seconds: float) -> float:
    """CPU (% of a core) of the model sensor alone, in this process, watching ``tree`` after
    its sweep: what the whole-agent comparison measures through the host's noise."""
    from proscribe.agent.sensors.models import ModelSensor, Store

    sensor = ModelSensor(
        on_file=lambda *a: None,
        on_open=lambda path: None,
        on_mapped=lambda *a: None,
        stores=lambda: [Store(str(tree), "tree", "")],
        sweep_interval=86400,
        files_per_second=100_000,
        maps_interval=10,
    )
    sensor.start()
    try:
        while sensor.counts.snapshot().get("sweeps", 0) < 1:
            time.sleep(0.2)
        t0, c0 = time.monotonic(), time.process_time()
        time.sleep(seconds)
        return (time.process_time() - c0) / (time.monotonic() - t0) * 100
    finally:
        sensor.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    token = secrets.token_hex(4)
    base = Path(tempfile.mkdtemp(prefix="proscribe-bench-models-"))
    try:
        store, tree = base / "store", base / "tree"
        store.mkdir()
        print(f"writing a tree of {args.files} files …", file=sys.stderr)
        make_tree(tree, args.files, token)
        per_s, floor_per_s, bytes_per_file, opened = sweep_cost(tree)
        models = f'[models]\ndirs = ["{store}", "{tree}"]\nuser_stores = false\n'
        models += "system_stores = false\nmaps_interval = 10\n"
        on, off = base / "on", base / "off"
        on.mkdir()
        off.mkdir()
        agent, state = start_agent(on, token, models)
        try:
            time.sleep(3.0)
            latencies = file_to_event(store, state, token, args.samples)
            kills = kill_latency(store, token, args.samples)
            by_name = name_kill_latency(base, token, args.samples)
            deadline = time.monotonic() + 600
            while sweeps_done(state) < 1 and time.monotonic() < deadline:
                time.sleep(1.0)  # idle means after the first sweep of the tree ended
            time.sleep(2.0)
            cpu, rss = idle(agent, args.seconds)
        finally:
            stop(agent)
        peer, _ = start_agent(off, token, '[models]\nsensor = "off"\n')
        try:
            time.sleep(3.0)
            cpu_off, rss_off = idle(peer, args.seconds)
        finally:
            stop(peer)
        floor = watchdog_floor(base / "store", args.samples)
        alone = sensor_alone(tree, args.seconds)
        print(line("file closed -> model event (agent)", latencies))
        print(line("file closed -> handler (bare watchdog, peer)", floor))
        if latencies and floor:
            print(f"{'':<44} ratio {statistics.median(latencies) / statistics.median(floor):.1f}x")
        print(line("model mapped -> runtime killed (agent)", kills))
        print(line("exec -> killed by name (agent, peer)", by_name))
        if kills and by_name:
            print(f"{'':<44} ratio {statistics.median(kills) / statistics.median(by_name):.1f}x")
        print(
            f"sweep: {per_s:,.0f} files/s (walk+identify) vs {floor_per_s:,.0f} files/s "
            f"(os.walk+stat, peer), ratio {floor_per_s / per_s:.1f}x slower; "
            f"{bytes_per_file:.1f} bytes read per file ({opened} of {args.files} opened)"
        )
        print(
            f"idle over {args.seconds:.0f} s with watches on {args.files} files: "
            f"CPU {cpu:.2f}% of a core, RSS {rss:.1f} MiB; models off (peer): "
            f"CPU {cpu_off:.2f}%, RSS {rss_off:.1f} MiB; RSS growth {rss - rss_off:+.1f} MiB"
        )
        print(
            f"the model sensor alone (in-process, watches on {args.files} files, maps look "
            f"every 10 s): CPU {alone:.2f}% of a core"
        )
        print(f"load average during the run: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
