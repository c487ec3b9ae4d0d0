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

The machine is shared and noisy, so the servers are measured in ``--rounds`` interleaved rounds
(each round measures every server once, in a rotated order; the added latency is against the
same round's upstream figure) and the medians are printed with the spread (min-max) beside
them. ``--before FILE`` also runs the ``DnsProxy`` of another copy of ``proxy.py`` (e.g.
``git show main:agent/sensors/dns/proxy.py > /tmp/before.py``) in the same rounds, for
before/after figures measured side by side.

Run: .venv/bin/python -m bench.dns_proxy [--qps 1000] [--seconds 3] [--rounds 5] [--before F]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from proscribe.agent.sensors.dns import DnsObservation, DnsProxy, NameVerdict, ProcessAttributor
from proscribe.core.policy.matchers.domain import DomainMatcher
from tests.support.child_server import cpu_seconds
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


def load_proxy_class(path: Path) -> Any:
    """``DnsProxy`` from another copy of proxy.py (the ``--before`` figures)."""
    spec = importlib.util.spec_from_file_location("dns_proxy_before", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--before {path}: not a Python file; give a copy of proxy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.DnsProxy


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """``median (min-max)``."""
    if not values:
        return "n/a"
    return (
        fmt.format(statistics.median(values))
        + " ("
        + fmt.format(min(values))
        + "-"
        + fmt.format(max(values))
        + ")"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qps", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", type=Path, help="another proxy.py to measure alongside")
    args = parser.parse_args()
    if shutil.which("dnsperf") is None or shutil.which("dnsmasq") is None:
        print("needs dnsperf and dnsmasq (apt-get install dnsperf dnsmasq)")
        return 2
    if args.before is not None and not args.before.is_file():
        print(f"--before {args.before}: no such file; give a copy of proxy.py")
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
    classes: dict[str, Any] = {"proscribe": DnsProxy}
    if args.before is not None:
        classes["before"] = load_proxy_class(args.before)
    proxies = {
        name: cls(
            ("127.0.0.1", 0),
            [("127.0.0.1", up_port)],
            decide,
            on_observation,
            attributor=attributor,
            attribute_unmatched=False,  # as the agent runs it (sensors/dns/sensor.py)
        )
        for name, cls in classes.items()
    }
    for proxy in proxies.values():
        proxy.start()
    targets = {"upstream": up_port}
    targets.update({name: proxy.address[1] for name, proxy in proxies.items()})
    targets["dnsmasq"] = peer_port
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    try:
        print(
            f"denylist: {len(names)} names; load: {args.qps} qps for {args.seconds:.0f} s; "
            f"95% allowed names (forwarded), 5% denied; {args.rounds} interleaved rounds; "
            f"load average at start {os.getloadavg()[0]:.1f}"
        )
        for port in targets.values():
            dnsperf(port, queries, 200, 1, False)  # warm-up
        order = list(targets)
        for round_no in range(args.rounds):
            shift = round_no % len(order)
            for name in order[shift:] + order[:shift]:
                port = targets[name]
                with lock:
                    observations.clear()
                cpu_pid = peer.pid if name == "dnsmasq" else upstream.pid
                cpu0, wall0 = time.process_time(), time.monotonic()
                ext0 = cpu_seconds(cpu_pid)
                latencies, summary, pid = dnsperf(port, queries, args.qps, args.seconds, True)
                wall = time.monotonic() - wall0
                row = {
                    "p50": pct(latencies, 0.50) * 1e3,
                    "p99": pct(latencies, 0.99) * 1e3,
                    "lost": summary["lost"],
                }
                if name in proxies:
                    row["cpu"] = (time.process_time() - cpu0) / wall
                    time.sleep(0.2)
                    with lock:
                        total = len(observations)
                        right = sum(
                            1 for o in observations if o.process and o.process["pid"] == pid
                        )
                    row["attributed"] = right / total if total else float("nan")
                elif name == "dnsmasq":
                    row["cpu"] = (cpu_seconds(cpu_pid) - ext0) / wall
                _lat, maxed, _pid = dnsperf(port, queries, None, args.seconds, False)
                row["max_qps"] = maxed["qps"]
                rows[name].append(row)
            print(f"round {round_no + 1}/{args.rounds} done (load {os.getloadavg()[0]:.1f})")

        for r in range(args.rounds):  # added latency against the same round's upstream
            base = rows["upstream"][r]
            for name in targets:
                rows[name][r]["added50"] = rows[name][r]["p50"] - base["p50"]
                rows[name][r]["added99"] = rows[name][r]["p99"] - base["p99"]

        def column(name: str, key: str) -> list[float]:
            return [row[key] for row in rows[name] if key in row]

        print(f"\nmedians over {args.rounds} rounds, (min-max) across rounds; latency in ms")
        print(
            f"{'server':<10} {'p50':>20} {'p99':>20} {'added p50':>20} {'added p99':>20} "
            f"{'max qps':>22} {'CPU at ' + str(args.qps) + ' qps':>18}"
        )
        for name in targets:
            cpu = column(name, "cpu")
            print(
                f"{name:<10} {spread(column(name, 'p50')):>20} {spread(column(name, 'p99')):>20} "
                f"{spread(column(name, 'added50')):>20} {spread(column(name, 'added99')):>20} "
                f"{spread(column(name, 'max_qps'), '{:.0f}'):>22} "
                f"{spread([c * 100 for c in cpu], '{:.1f}%') if cpu else 'n/a':>18}"
            )
        print("\nratio to dnsmasq (per round, then the median and spread):")
        for name in proxies:
            ratios = {
                key: [
                    ours[key] / theirs[key]
                    for ours, theirs in zip(rows[name], rows["dnsmasq"], strict=True)
                    if theirs[key] > 0
                ]
                for key in ("added50", "added99", "max_qps")
            }
            print(
                f"  {name}: added p50 {spread(ratios['added50'], '{:.2f}')}x, "
                f"added p99 {spread(ratios['added99'], '{:.2f}')}x, "
                f"max qps {spread(ratios['max_qps'], '{:.2f}')}x"
            )
        for name in proxies:
            attributed = [a * 100 for a in column(name, "attributed")]
            print(
                f"{name}: denied queries attributed to the dnsperf pid under load: "
                f"{spread(attributed, '{:.1f}%')}"
            )
        print(
            f"targets: added <= 0.1 ms p50 / 1 ms p99 at {args.qps} qps; max qps >= 0.35x "
            "dnsmasq; attribution >= 95%"
        )
        print(f"lost queries (all runs): { {n: sum(column(n, 'lost')) for n in targets} }")
        print(f"proxy stats: {proxies['proscribe'].stats()}")
    finally:
        for proxy in proxies.values():
            proxy.stop()
        attributor.close()
        for proc in (upstream, peer):
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
