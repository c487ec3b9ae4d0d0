"""Benchmark: what checking a signed policy costs an agent, beside bare Ed25519 in the same run.

For each shipped policy pack (policies/*.toml), signed by 2 of 3 keys:

* peer      one bare ``Ed25519PublicKey.verify`` over the file bytes (the floor)
* envelope  ``parse_envelope`` + ``verify_envelope`` (threshold 2 of 3, hints honoured)
* swapped   the same with keyid hints swapped (worst case: every key tried on every signature)
* full      ``verify_policy_bytes``: size cap, envelope, threshold, then the TOML loader
* sign      ``sign_payload`` (one signer)

Prints median and p99 in microseconds and the ratio to the peer.

Run: .venv/bin/python -m bench.verify [--rounds 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from proscribe.core.policy.bundle import TrustConfig, verify_policy_bytes
from proscribe.core.policy.envelope import (
    Envelope,
    parse_envelope,
    sign_payload,
    verify_envelope,
)

REPO = Path(__file__).resolve().parent.parent


def measure(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    for _ in range(min(50, rounds)):
        fn()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99) - 1] / 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    keys = [Ed25519PrivateKey.generate() for _ in range(3)]
    trust = TrustConfig(keys=tuple(k.public_key() for k in keys), threshold=2)
    print(f"{'policy':44} {'case':9} {'median µs':>10} {'p99 µs':>10} {'× peer':>8}")
    for path in sorted((REPO / "policies").glob("*.toml")):
        data = path.read_bytes()
        env: Envelope | None = None
        for k in keys[:2]:
            env = sign_payload(data, k, env)
        assert env is not None
        sig_bytes = env.to_bytes()
        a, b = env.signatures
        swapped = Envelope(env.payload_type, (replace(a, keyid=b.keyid), replace(b, keyid=a.keyid)))
        raw_sig = keys[0].sign(data)
        pk = keys[0].public_key()

        def peer(raw_sig: bytes = raw_sig, data: bytes = data, pk: Ed25519PublicKey = pk) -> None:
            pk.verify(raw_sig, data)

        def envelope(sig_bytes: bytes = sig_bytes, data: bytes = data) -> None:
            result = verify_envelope(data, parse_envelope(sig_bytes), trust.keys, 2)
            assert result.ok

        def worst(swapped: Envelope = swapped, data: bytes = data) -> None:
            assert verify_envelope(data, swapped, trust.keys, 2).ok

        def full(sig_bytes: bytes = sig_bytes, data: bytes = data) -> None:
            verify_policy_bytes(data, sig_bytes, trust, "bench")

        def sign(data: bytes = data) -> None:
            sign_payload(data, keys[2])

        peer_median, _ = measure(peer, args.rounds)
        label = f"{path.name} ({len(data) // 1024} KiB)"
        for name, fn in [
            ("peer", peer),
            ("envelope", envelope),
            ("swapped", worst),
            ("full", full),
            ("sign", sign),
        ]:
            rounds = args.rounds if name != "full" else max(50, args.rounds // 10)
            median, p99 = measure(fn, rounds)
            print(f"{label:44} {name:9} {median:10.1f} {p99:10.1f} {median / peer_median:8.2f}")


if __name__ == "__main__":
    main()
