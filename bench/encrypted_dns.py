"""Benchmark: what the encrypted-DNS watch costs as the host's socket count grows.

Opens N established loopback TCP connections (N client and N server sockets, plus whatever
the machine has), then times ``EncryptedDnsWatch.poll()`` (read /proc/net/tcp, tcp6, udp,
udp6 and classify every line; none is encrypted DNS, so nothing is attributed): median and p95
over ``--polls`` polls, the share of one core that would cost at a fixed 5 s interval, and the
interval and share the watch actually uses (it stretches its interval to stay under 0.2%).

Run: .venv/bin/python -m bench.encrypted_dns [--sizes 0,1000,5000] [--polls 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import sys
import time

from proscribe.agent.sensors.dns.encrypted import CPU_BUDGET, EncryptedDnsWatch

INTERVAL = 5.0


def open_pairs(n: int) -> list[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    address = server.getsockname()
    socks = [server]
    for _ in range(n):
        client = socket.create_connection(address)
        accepted, _ = server.accept()
        socks += [client, accepted]
    return socks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,1000,5000")
    parser.add_argument("--polls", type=int, default=20)
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        print("needs Linux (/proc/net)")
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * max(sizes) + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    print(f"load average {os.getloadavg()[0]:.2f}; poll every {INTERVAL:.0f} s in the agent")
    header = ("connections", "lines", "poll p50", "poll p95", "CPU @5s", "interval", "CPU")
    print("{:>12} {:>7} {:>10} {:>10} {:>9} {:>9} {:>7}".format(*header))
    for n in sizes:
        socks = open_pairs(n)
        try:
            lines = 0
            for table in ("tcp", "tcp6", "udp", "udp6"):
                with open(f"/proc/net/{table}") as handle:
                    lines += max(0, len(handle.readlines()) - 1)
            watch = EncryptedDnsWatch(lambda c: None, lambda c: (None, "not attributed"))
            times = []
            for _ in range(args.polls):
                t0 = time.process_time()
                watch.poll()
                times.append(time.process_time() - t0)
            p50 = statistics.median(times)
            p95 = sorted(times)[max(0, int(len(times) * 0.95) - 1)]
            used = max(INTERVAL, p50 / CPU_BUDGET)
            print(
                f"{n:>12} {lines:>7} {p50 * 1000:>8.2f}ms {p95 * 1000:>8.2f}ms "
                f"{p50 / INTERVAL * 100:>8.3f}% {used:>8.1f}s {p50 / used * 100:>6.3f}%"
            )
        finally:
            for sock in socks:
                sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
