"""Benchmark: the enforcing DNS proxy against dnsmasq with the same denylist, side by side.

One run, same machine, same upstream, same load (dnsperf):

* upstream   dnsmasq answering ``*.bench.example`` itself (the "real resolver")
* proscribe  DnsProxy forwarding to it, denylist = the AI-domain lists in tests/data
* dnsmasq    a second dnsmasq forwarding to it (--cache-size=0, like the proxy), with the same
             denylist as ``address=/name/`` lines (NXDOMAIN)

For each: per-query latency p50/p99 at a fixed rate (default 1000 qps, from ``dnsperf -v``),
the latency added over querying the upstream directly, the ratio proscribe/dnsmasq, the
highest sustained rate (dnsperf unthrottled), and the proxy's CPU. Also: the share of proxied
denied queries (the ones the agent records) attributed to the dnsperf pid under load.

Run: .venv/bin/python -m bench.dns_proxy [--qps 1000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from proscribe.agent.sensors.dns import DnsObservation, DnsProxy, NameVerdict, ProcessAttributor
from proscribe.core.policy.matchers.domain import DomainMatcher
from tests.support.domain_lists import AI_LISTS, read_domain_list
from tests.support.ports import free_udp_port


def denylist() -> list[str]:
    names = {"deepseek.com"}
    for path in AI_LISTS:
        names.update(name.lower().rstrip(".") for name in read_domain_list(path))
    return sorted(names)


def dnsmasq(port: int, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "dnsmasq",
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            f"--port={port}",
            "--pid-file=",
            "--log-facility=/dev/null",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    return proc


def dnsperf(
    port: int, queries: Path, qps: int | None, seconds: float, verbose: bool
) -> tuple[list[float], dict[str, float], int]:
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", str(seconds)]
    if qps:
        cmd += ["-Q", str(qps)]
    else:
        cmd += ["-q", "200"]
    if verbose:
        cmd.append("-v")
    # Output to a file, not a pipe: reading a pipe would wake this process a thousand times a
    # second and compete with the proxy thread for the GIL, inflating its latency.
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        proc.wait(timeout=seconds + 30)
        log.seek(0)
        out = log.read()
    latencies = [float(m.group(1)) for m in re.finditer(r"^> \S+ \S+ \S+ ([0-9.]+)$", out, re.M)]
    summary: dict[str, float] = {}
    for key, pattern in (
        ("sent", r"Queries sent:\s+(\d+)"),
        ("completed", r"Queries completed:\s+(\d+)"),
        ("lost", r"Queries lost:\s+(\d+)"),
        ("qps", r"Queries per second:\s+([0-9.]+)"),
    ):
        match = re.search(pattern, out)
        summary[key] = float(match.group(1)) if match else float("nan")
    return latencies, summary, proc.pid


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qps", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if shutil.which("dnsperf") is None or shutil.which("dnsmasq") is None:
        print("needs dnsperf and dnsmasq (apt-get install dnsperf dnsmasq)")
        return 2

    names = denylist()
    matcher = DomainMatcher.from_names(names, "ai-domains")
    tmp = Path(tempfile.mkdtemp(prefix="dns-bench-"))
    queries = tmp / "queries.txt"
    lines = []
    for i in range(1000):  # 95% allowed (forwarded), 5% denied
        lines.append("chat.deepseek.com A" if i % 20 == 0 else f"host{i}.bench.example A")
    queries.write_text("\n".join(lines) + "\n")
    conf = tmp / "deny.conf"
    conf.write_text("".join(f"address=/{name}/\n" for name in names))

    up_port, peer_port = free_udp_port(), free_udp_port()
    upstream = dnsmasq(up_port, "--address=/bench.example/192.0.2.1")
    peer = dnsmasq(
        peer_port, f"--server=127.0.0.1#{up_port}", "--cache-size=0", f"--conf-file={conf}"
    )

    observations: list[DnsObservation] = []
    lock = threading.Lock()

    def on_observation(observation: DnsObservation) -> None:
        with lock:
            observations.append(observation)

    def decide(name: str, process: object) -> NameVerdict | None:
        match = matcher.match(name)
        return NameVerdict(block=True, rule_id=match.rule_id) if match else None

    attributor = ProcessAttributor()
    proxy = DnsProxy(
        ("127.0.0.1", 0),
        [("127.0.0.1", up_port)],
        decide,
        on_observation,
        attributor=attributor,
        attribute_unmatched=False,  # as the agent runs it (sensors/dns/sensor.py)
    )
    proxy.start()
    targets = {"upstream": up_port, "proscribe": proxy.address[1], "dnsmasq": peer_port}
    try:
        print(
            f"denylist: {len(names)} names; load: {args.qps} qps for {args.seconds:.0f} s; "
            "95% allowed names (forwarded), 5% denied"
        )
        results: dict[str, dict[str, float]] = {}
        for name, port in targets.items():
            dnsperf(port, queries, 200, 1, False)  # warm-up
            with lock:
                observations.clear()
            cpu0, wall0 = time.process_time(), time.monotonic()
            latencies, summary, pid = dnsperf(port, queries, args.qps, args.seconds, True)
            cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
            row = {
                "p50": pct(latencies, 0.50) * 1e3,
                "p99": pct(latencies, 0.99) * 1e3,
                "mean": statistics.fmean(latencies) * 1e3 if latencies else float("nan"),
                "lost": summary["lost"],
                "sent": summary["sent"],
            }
            if name == "proscribe":
                time.sleep(0.2)
                with lock:
                    total = len(observations)
                    right = sum(1 for o in observations if o.process and o.process["pid"] == pid)
                row["attributed"] = right / total if total else float("nan")
                row["cpu"] = cpu
            _lat, maxed, _pid = dnsperf(port, queries, None, args.seconds, False)
            row["max_qps"] = maxed["qps"]
            results[name] = row

        base = results["upstream"]
        print(
            f"\n{'server':<10} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8} "
            f"{'lost':>6} {'max qps':>9}"
        )
        for name, row in results.items():
            added50 = row["p50"] - base["p50"] if name != "upstream" else 0.0
            added99 = row["p99"] - base["p99"] if name != "upstream" else 0.0
            row["added50"], row["added99"] = added50, added99
            print(
                f"{name:<10} {row['p50']:8.3f} {row['p99']:8.3f} {added50:8.3f} {added99:8.3f} "
                f"{row['lost']:6.0f} {row['max_qps']:9.0f}"
            )
        ours, peer_row = results["proscribe"], results["dnsmasq"]

        def ratio(a: float, b: float) -> str:
            return f"{a / b:.2f}" if b > 0 else "n/a"

        print(
            f"\nratio proscribe/dnsmasq: added p50 {ratio(ours['added50'], peer_row['added50'])}, "
            f"added p99 {ratio(ours['added99'], peer_row['added99'])}, "
            f"max qps {ratio(ours['max_qps'], peer_row['max_qps'])}"
        )
        print(f"proscribe proxy CPU at {args.qps} qps: {ours['cpu'] * 100:.1f}% of a core")
        print(
            "denied queries attributed to the dnsperf pid under load: "
            f"{ours['attributed'] * 100:.1f}%"
        )
        print(f"targets: added <= 0.3 ms p50 / 2 ms p99 at {args.qps} qps; attribution >= 95%")
        print(f"proxy stats: {proxy.stats()}")
    finally:
        proxy.stop()
        attributor.close()
        for proc in (upstream, peer):
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
