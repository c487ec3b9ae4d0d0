"""Benchmark: passive DNS capture on ``lo`` — highest loss-free rate and CPU at 200 qps.

dnsperf sends queries at fixed rates to a dnsmasq on 127.53.0.3:53 (the capture filter is
port 53); the capture sensor runs in this process with the production settings (names no rule
matches are checked, counted and dropped; attribution and delivery only for the 5% of queries
here that a rule matches). Seen = the queries the sensor parsed (its ``queries`` counter);
loss = 1 - seen / sent. Needs root (AF_PACKET).

Run: sudo .venv/bin/python -m bench.dns_capture [--rates 1000,2000,5000,8000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from proscribe.agent.sensors.dns import DnsObservation, DnsSettings, NameVerdict, build_dns_sensor
from proscribe.core.policy.matchers.domain import DomainMatcher

SERVER = "127.53.0.3"


class Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.denied = 0
        self.denied_attributed = 0
        self.pid = -1

    def __call__(self, observation: DnsObservation) -> None:
        with self.lock:
            if (
                observation.direction == "query"
                and observation.dst_ip == SERVER
                and observation.qname.endswith("deepseek.com")
            ):
                self.denied += 1
                if observation.process and observation.process["pid"] == self.pid:
                    self.denied_attributed += 1

    def reset(self, pid: int = -1) -> None:
        with self.lock:
            self.denied = self.denied_attributed = 0
            self.pid = pid


def dnsperf(queries: Path, qps: int, seconds: float) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        ["dnsperf", "-s", SERVER, "-d", str(queries), "-Q", str(qps), "-l", str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, proc.pid


def settle(sensor: object) -> dict[str, int]:
    """Wait until the sensor has worked through its socket buffer and queue."""
    previous = -1
    stats: dict[str, int] = sensor.stats()  # type: ignore[attr-defined]
    while stats["seen"] != previous or stats["queue_depth"]:
        previous = stats["seen"]
        time.sleep(0.3)
        stats = sensor.stats()  # type: ignore[attr-defined]
    return stats


def sent_count(output: str) -> int:
    for line in output.splitlines():
        if "Queries sent:" in line:
            return int(line.split()[-1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1000,2000,5000,8000,12000")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (AF_PACKET)")
        return 2
    if shutil.which("dnsperf") is None or shutil.which("dnsmasq") is None:
        print("needs dnsperf and dnsmasq")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="dns-capture-bench-"))
    queries = tmp / "queries.txt"
    queries.write_text(
        "".join(
            "chat.deepseek.com A\n" if i % 20 == 0 else f"host{i}.bench.example A\n"
            for i in range(1000)
        )
    )
    server = subprocess.Popen(
        [
            "dnsmasq",
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            f"--listen-address={SERVER}",
            "--port=53",
            "--pid-file=",
            "--log-facility=/dev/null",
            "--address=/bench.example/192.0.2.1",
            "--address=/deepseek.com/203.0.113.7",
            "--dns-forward-max=10000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    matcher = DomainMatcher.from_names(["deepseek.com"], "deepseek-web")

    def decide(name: str, process: object) -> NameVerdict | None:
        match = matcher.match(name)
        return NameVerdict(block=True, rule_id=match.rule_id) if match else None

    counter = Counter()
    sensor = build_dns_sensor("capture", DnsSettings(), counter, decide)
    sensor.start()
    try:
        # CPU at 200 qps
        before = sensor.stats()
        proc, pid = dnsperf(queries, 200, 5)
        counter.reset(pid)
        cpu0, wall0 = time.process_time(), time.monotonic()
        out, _ = proc.communicate()
        cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
        after = settle(sensor)
        print(f"CPU at 200 qps: {cpu * 100:.2f}% of a core (target <= 5%)")
        print(
            f"  sent {sent_count(out)}, seen {after['queries'] - before['queries']} queries / "
            f"{after['responses'] - before['responses']} responses; denied queries attributed "
            f"to dnsperf: {counter.denied_attributed}/{counter.denied}"
        )
        header = ("rate", "sent", "seen", "loss %", "kernel drops", "attrib %")
        print("\n{:>7} {:>7} {:>7} {:>7} {:>12} {:>8}".format(*header))
        best = 0
        for rate in (int(r) for r in args.rates.split(",")):
            before = sensor.stats()
            proc, pid = dnsperf(queries, rate, args.seconds)
            counter.reset(pid)
            out, _ = proc.communicate()
            after = settle(sensor)
            sent = sent_count(out)
            seen = after["queries"] - before["queries"]
            with counter.lock:
                attributed = counter.denied_attributed / counter.denied if counter.denied else 0
            loss = 1 - seen / sent if sent else 1.0
            drops = after["dropped_kernel"] - before["dropped_kernel"]
            row = (rate, sent, seen, loss * 100, drops, attributed * 100)
            print("{:7d} {:7d} {:7d} {:7.3f} {:12d} {:8.1f}".format(*row))
            if loss < 0.001:
                best = max(best, rate)
        print(f"\nhighest tested rate with < 0.1% loss: {best} qps (target >= 5000)")
        print(f"sensor stats: {sensor.stats()}")
    finally:
        sensor.stop()
        server.kill()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
