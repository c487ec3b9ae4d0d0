"""Benchmark the compiled matchers (a script, not a test): ``python -m bench.match --data FILE``.

Domains: the list in FILE (the published figures used StevenBlack's 83,808-name unified list,
https://github.com/StevenBlack/hosts, as plain names; not vendored, see tests/data/README.md),
then the same list grown synthetically to 1M names. For each size: build time, memory per entry
(tracemalloc of a second build, and the RSS growth of the first), and lookup time over a
realistic query mix (listed names, subdomains of listed names 1-3 labels deep, misses of 2-4
labels, deep misses of 6-10 labels, and look-alikes such as ``notdeepseek.com``):

* per query: each lookup timed alone with ``perf_counter_ns`` (timer overhead subtracted),
  median and p99 — the figure the target (p99 <= 5 us at 1M) is about;
* per batch: 100 lookups timed together, median and p99 of the per-lookup mean, in wall-clock
  and in this thread's CPU time;
* per query, best of 5: each of 20,000 queries timed five times, the fastest kept — the cost of
  the query itself; on a shared machine the single-shot tail above is mostly time spent waiting
  for a CPU, which this removes (the load average is printed so the two can be judged).

Beside it, in the same run, two naive peers on a sample of the same queries (they are slow): a
linear suffix scan over the list (``q == e or q.endswith("." + e)``) and one compiled regex
alternation ``(?:^|\\.)(?:e1|e2|...)$`` (83k only: compiling 1M alternatives takes too long).

Processes: a Navy-like rule set (the shipped pack when present, else the DESIGN.md example plus
peers) checked against this host's real process table plus a few denied processes, beside a
naive peer that tries every rule's every pattern on every field with no prefilter.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import re
import statistics
import string
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from proscribe.core.policy.globs import compile_glob
from proscribe.core.policy.loader import load_policy_file
from proscribe.core.policy.matchers import DomainMatcher, ProcessFacts, ProcessMatcher
from proscribe.core.policy.matchers.process import basename
from proscribe.core.policy.model import ProcessRule
from proscribe.core.policy.regex_safety import cmdline_window, compile_cmdline_regex

REPO = Path(__file__).resolve().parents[1]
NAVY_PACK = REPO / "policies" / "us-navy-deepseek-2025.toml"
GOVERNMENT_PACK = REPO / "policies" / "government-restricted-ai-2025.toml"
BATCH = 100


def load_names(path: Path) -> list[str]:
    names = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("#"):
                names.append(line)
    return names


def grow(names: list[str], target: int, rng: random.Random) -> list[str]:
    """Add synthetic names shaped like the real ones (label lengths, TLD mix) up to ``target``."""
    tlds = [n.rsplit(".", 1)[-1] for n in names]
    out = list(names)
    seen = set(names)
    letters = string.ascii_lowercase + string.digits
    while len(out) < target:
        labels = [
            "".join(rng.choices(letters, k=rng.randint(4, 14)))
            for _ in range(rng.choice((1, 1, 1, 2, 2, 3)))
        ]
        name = ".".join([*labels, rng.choice(tlds)])
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def query_mix(names: list[str], count: int, rng: random.Random) -> list[str]:
    letters = string.ascii_lowercase
    sub = ["www", "api", "cdn", "chat", "m", "static", "img", "eu-west-1", "x1"]

    def label() -> str:
        return "".join(rng.choices(letters, k=rng.randint(3, 10)))

    queries = []
    for _ in range(count):
        r = rng.random()
        if r < 0.25:  # a listed name itself
            q = rng.choice(names)
        elif r < 0.50:  # a subdomain of a listed name, 1-3 labels deeper
            q = ".".join([*rng.choices(sub, k=rng.randint(1, 3)), rng.choice(names)])
        elif r < 0.80:  # an unlisted name of 2-4 labels
            q = ".".join([label() for _ in range(rng.randint(1, 3))] + ["com"])
        elif r < 0.90:  # a deep unlisted name
            q = ".".join([label() for _ in range(rng.randint(5, 9))] + ["net"])
        else:  # a look-alike: a listed name with characters glued on the left
            q = label() + rng.choice(names)
        if rng.random() < 0.1:
            q = q.upper() + "."  # the wire form: case and the root dot folded by the matcher
        queries.append(q)
    return queries


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def timer_overhead() -> int:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(20_000):
        t0 = clock()
        samples.append(clock() - t0)
    return int(statistics.median(samples))


def time_each(fn: Callable[[str], object], queries: list[str], overhead: int) -> list[int]:
    clock = time.perf_counter_ns
    out = []
    for q in queries:
        t0 = clock()
        fn(q)
        out.append(max(0, clock() - t0 - overhead))
    return out


def time_batches(fn: Callable[[str], object], queries: list[str]) -> list[float]:
    clock = time.perf_counter_ns
    out = []
    for i in range(0, len(queries) - BATCH + 1, BATCH):
        batch = queries[i : i + BATCH]
        t0 = clock()
        for q in batch:
            fn(q)
        out.append((clock() - t0) / BATCH)
    return out


def time_best_of(
    fn: Callable[[str], object], queries: list[str], overhead: int, repeats: int = 5
) -> list[int]:
    """Each query's fastest of ``repeats`` timings: the cost of the query itself, without the
    preemptions and interrupts a busy machine adds to single measurements."""
    clock = time.perf_counter_ns
    out = []
    for q in queries:
        best = None
        for _ in range(repeats):
            t0 = clock()
            fn(q)
            dt = clock() - t0
            best = dt if best is None or dt < best else best
        out.append(max(0, (best or 0) - overhead))
    return out


def cpu_batches(fn: Callable[[str], object], queries: list[str]) -> list[float]:
    """Per-lookup CPU time of this thread, per batch: unaffected by waiting for a busy CPU."""
    clock = time.thread_time_ns
    out = []
    for i in range(0, len(queries) - BATCH + 1, BATCH):
        batch = queries[i : i + BATCH]
        t0 = clock()
        for q in batch:
            fn(q)
        out.append((clock() - t0) / BATCH)
    return out


def naive_scan(entries: list[str]) -> Callable[[str], bool]:
    def lookup(qname: str) -> bool:
        q = qname.lower().rstrip(".")
        return any(q == e or q.endswith("." + e) for e in entries)

    return lookup


def fmt_ns(ns: float) -> str:
    return f"{ns / 1000:.2f} us" if ns >= 10_000 else f"{ns:.0f} ns"


def bench_domains(
    label: str, names: list[str], queries: list[str], args: argparse.Namespace
) -> None:
    print(f"\n== domains: {label}: {len(names):,} names ==")
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    matcher = DomainMatcher.from_names(names, rule_id="bench")
    build_s = time.perf_counter() - t0
    gc.collect()
    rss_delta = psutil.Process().memory_info().rss - rss0
    print(f"build: {build_s:.2f} s ({len(matcher):,} distinct names)")

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    second = DomainMatcher.from_names(names, rule_id="bench")
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del second
    gc.collect()
    per_entry = traced / len(matcher)
    print(
        f"memory: {traced / 2**20:.1f} MiB traced ({per_entry:.0f} B/entry, names included); "
        f"RSS growth during build {rss_delta / 2**20:.1f} MiB"
    )

    # sanity: the matcher agrees with the naive scan on the sampled queries
    # the linear scan takes ~0.1-0.3 s per query at 1M names: sample fewer there
    sample = queries[: args.naive_sample if len(names) <= 100_000 else args.naive_sample // 5]
    scan = naive_scan(names)
    disagree = sum(1 for q in sample if (matcher.match(q) is not None) != scan(q))
    hits = sum(1 for q in queries if matcher.match(q) is not None)
    print(f"queries: {len(queries):,} ({hits / len(queries):.0%} hits); disagreements: {disagree}")

    overhead = timer_overhead()
    for _ in range(2):  # warm up
        time_batches(matcher.match, queries[:20_000])
    each = time_each(matcher.match, queries, overhead)
    batches = time_batches(matcher.match, queries)
    cpu = cpu_batches(matcher.match, queries)
    best = time_best_of(matcher.match, queries[:20_000], overhead)
    med, p99 = statistics.median(each), percentile(each, 99)
    print(
        f"DomainMatcher.match  per query: median {fmt_ns(med)}, p99 {fmt_ns(p99)}, "
        f"p99.9 {fmt_ns(percentile(each, 99.9))} (timer overhead {overhead} ns subtracted)"
    )
    print(
        f"DomainMatcher.match  per batch of {BATCH}: median {fmt_ns(statistics.median(batches))}"
        f"/lookup, p99 {fmt_ns(percentile(batches, 99))}/lookup"
    )
    print(
        f"DomainMatcher.match  CPU time per batch of {BATCH}: median "
        f"{fmt_ns(statistics.median(cpu))}/lookup, p99 {fmt_ns(percentile(cpu, 99))}/lookup"
    )
    print(
        f"DomainMatcher.match  per query, best of 5 (20,000 queries): median "
        f"{fmt_ns(statistics.median(best))}, p99 {fmt_ns(percentile(best, 99))}, "
        f"max {fmt_ns(max(best))}"
    )
    print(
        f"target (p99 <= 5 us, <= 150 MB at 1M): wall-clock p99 "
        f"{'ok' if p99 <= 5000 else 'MISSED'}, best-of-5 p99 "
        f"{'ok' if percentile(best, 99) <= 5000 else 'MISSED'}, "
        f"memory {'ok' if traced <= 150 * 2**20 else 'MISSED'}"
        + ("" if len(names) >= 1_000_000 else " (scaled: this list is smaller than 1M)")
    )

    scan_each = time_each(scan, sample, overhead)
    scan_med = statistics.median(scan_each)
    print(
        f"naive linear suffix scan ({len(sample)} queries): median {fmt_ns(scan_med)}, "
        f"p99 {fmt_ns(percentile(scan_each, 99))}; ratio median {scan_med / med:,.0f}x slower"
    )
    if len(names) <= args.regex_max:
        t0 = time.perf_counter()
        alternation = re.compile(r"(?:^|\.)(?:" + "|".join(re.escape(n) for n in names) + r")$")
        compile_s = time.perf_counter() - t0

        def by_regex(qname: str) -> bool:
            return alternation.search(qname.lower().rstrip(".")) is not None

        regex_each = time_each(by_regex, sample, overhead)
        regex_med = statistics.median(regex_each)
        print(
            f"naive regex alternation (compile {compile_s:.1f} s, {len(sample)} queries): "
            f"median {fmt_ns(regex_med)}, p99 {fmt_ns(percentile(regex_each, 99))}; "
            f"ratio median {regex_med / med:,.0f}x slower"
        )
        del alternation
    else:
        print(f"naive regex alternation: not built above {args.regex_max:,} names (compile time)")


# -- processes ----------------------------------------------------------------------------------

FALLBACK_RULES = (
    ProcessRule(
        id="deepseek-desktop",
        names=("deepseek*", "DeepSeek Harness*", "dsh"),
        paths=("/opt/deepseek/**",),
        cmdline=(r"(?i)\b(ollama|llama-server|lms)\b.*\bdeepseek",),
    ),
    ProcessRule(id="chatbox", names=("chatbox*", "Cherry Studio*", "cherrystudio*")),
    ProcessRule(id="kimi", names=("kimi*", "moonshot*")),
    ProcessRule(id="qwen", names=("qwen*", "tongyi*")),
    ProcessRule(id="doubao", names=("doubao*",)),
    ProcessRule(id="manus", names=("manus*",)),
    ProcessRule(id="deepseek-python", cmdline=(r"(?i)\bdeepseek[-_](r1|v3|coder|llm)\b",)),
)


def rule_sets() -> list[tuple[str, tuple[ProcessRule, ...]]]:
    """The shipped packs' process rules (Navy first), else a built-in Navy-like set."""
    found = []
    for pack in (NAVY_PACK, GOVERNMENT_PACK):
        if not pack.exists():
            continue
        try:
            policy = load_policy_file(pack)
        except Exception as err:  # a pack being written concurrently may not load yet
            print(f"(could not load {pack.name}: {err})")
            continue
        if policy.process:
            found.append((str(pack.relative_to(REPO)), policy.process))
    combined = tuple(r for _, rules in found for r in rules) + FALLBACK_RULES
    found.append(("all of the above + built-in Navy-like rules", combined))
    return found


def host_facts() -> list[ProcessFacts]:
    facts = []
    for p in psutil.process_iter(["pid", "name", "exe", "cmdline", "username"], ad_value=None):
        info = p.info
        cmd = tuple(info["cmdline"] or ())
        facts.append(
            ProcessFacts(
                pid=info["pid"],
                name=info["name"] or "",
                argv0=cmd[0] if cmd else "",
                exe=info["exe"] or "",
                cmdline=cmd,
                user=info["username"] or "",
            )
        )
    facts += [
        ProcessFacts(pid=1, name="deepseek", exe="/opt/deepseek/bin/deepseek", cmdline=("x",)),
        ProcessFacts(
            pid=2, name="ollama", exe="/usr/bin/ollama", cmdline=("ollama", "run", "deepseek-r1")
        ),
        ProcessFacts(pid=3, name="DeepSeek Harnes", exe="/usr/bin/python3", argv0="python3"),
    ]
    return facts


def naive_process(rules: Sequence[ProcessRule]) -> Callable[[ProcessFacts], list[str]]:
    compiled = [
        (
            r.id,
            [compile_glob(p, path=False, ignore_case=True) for p in r.names],
            [compile_glob(p, path=True, ignore_case=False) for p in r.paths],
            [compile_cmdline_regex(p) for p in r.cmdline],
        )
        for r in rules
    ]

    def check(f: ProcessFacts) -> list[str]:
        out = []
        fields = (f.name, basename(f.argv0), basename(f.exe))
        joined = cmdline_window(f.cmdline)
        for rule_id, names, paths, cmds in compiled:
            if (
                any(g.match(v) for g in names for v in fields if v)
                or any(g.match(f.exe) for g in paths)
                or any(c.search(joined) for c in cmds)
            ):
                out.append(rule_id)
        return out

    return check


def bench_processes(source: str, rules: Sequence[ProcessRule], rounds: int) -> None:
    patterns = sum(len(r.names) + len(r.paths) + len(r.cmdline) for r in rules)
    facts = host_facts()
    print(
        f"\n== processes: {source}: {len(rules)} rules, {patterns} patterns; "
        f"{len(facts)} processes (this host + 3 denied) =="
    )
    matcher = ProcessMatcher(rules)
    naive = naive_process(rules)
    hits = sum(1 for f in facts if matcher.match(f))
    naive_hits = sum(1 for f in facts if naive(f))
    print(f"processes matched: {hits} (naive peer: {naive_hits})")
    overhead = timer_overhead()
    clock = time.perf_counter_ns
    for label, fn in (("ProcessMatcher.match", matcher.match), ("naive every-pattern", naive)):
        samples = []
        for _ in range(rounds):
            for f in facts:
                t0 = clock()
                fn(f)
                samples.append(max(0, clock() - t0 - overhead))
        print(
            f"{label:22} per process: median {fmt_ns(statistics.median(samples))}, "
            f"p99 {fmt_ns(percentile(samples, 99))}"
        )
        if label.startswith("Process"):
            ours = statistics.median(samples)
        else:
            print(f"ratio median: {statistics.median(samples) / ours:.1f}x slower")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="domain list, one name a line (# comments)"
    )
    parser.add_argument("--grow", type=int, default=1_000_000, help="synthetic list size")
    parser.add_argument("--queries", type=int, default=200_000)
    parser.add_argument("--naive-sample", type=int, default=200, help="queries for naive peers")
    parser.add_argument("--regex-max", type=int, default=100_000, help="largest regex peer list")
    parser.add_argument("--process-rounds", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"bench.match: {args.data} not found (give --data PATH)", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    print(
        f"python {sys.version.split()[0]} on {os.uname().machine}, {os.cpu_count()} cpus, "
        f"load average {os.getloadavg()[0]:.2f} (wall-clock tails include waiting for a CPU)"
    )
    names = load_names(args.data)
    bench_domains(args.data.name, names, query_mix(names, args.queries, rng), args)
    if args.grow > len(names):
        big = grow(names, args.grow, rng)
        bench_domains(f"grown to {args.grow:,}", big, query_mix(big, args.queries, rng), args)
        del big
    for source, rules in rule_sets():
        bench_processes(source, rules, args.process_rounds)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
