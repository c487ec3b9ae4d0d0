"""Verified policy bytes and the last-good policy store (REFERENCE §4 "Policy and trust")."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proscribe.core.errors import PolicyError, PolicyRejected, SignatureError, VerificationFailed
from proscribe.core.policy.bundle import (
    MAX_POLICY_BYTES,
    Offer,
    PolicyStore,
    TrustConfig,
    read_capped,
    read_stream_capped,
    verify_policy_bytes,
)
from proscribe.core.policy.envelope import Envelope, sign_payload
from proscribe.core.policy.matchers import CompiledPolicy

ISSUED = datetime(2025, 1, 24, tzinfo=UTC)
EXPIRES = datetime(2025, 3, 1, tzinfo=UTC)
NOW = datetime(2025, 2, 1, tzinfo=UTC)


def policy_toml(serial: int, expires: datetime | None = EXPIRES, title: str = "Test") -> bytes:
    exp = f"expires = {expires.strftime('%Y-%m-%dT%H:%M:%SZ')}\n" if expires else ""
    return (
        '[meta]\nschema = 1\nid = "test-policy"\n'
        f'serial = {serial}\nissued = 2025-01-24T00:00:00Z\n{exp}title = "{title}"\n\n'
        '[[domain]]\nid = "deepseek-web"\nnames = ["deepseek.com"]\naction = "block"\n\n'
        '[[exemption]]\nid = "lab"\nrules = ["deepseek-web"]\nhosts = ["lab-*"]\n'
        'reason = "red team"\n'
    ).encode()


@pytest.fixture(scope="module")
def signers() -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.generate() for _ in range(3)]


@pytest.fixture(scope="module")
def trust(signers: list[Ed25519PrivateKey]) -> TrustConfig:
    return TrustConfig(keys=tuple(k.public_key() for k in signers), threshold=2)


def sign(data: bytes, keys: list[Ed25519PrivateKey]) -> bytes:
    env: Envelope | None = None
    for k in keys:
        env = sign_payload(data, k, env)
    assert env is not None
    return env.to_bytes()


def test_verified_bytes_parse(signers: list[Ed25519PrivateKey], trust: TrustConfig) -> None:
    data = policy_toml(1)
    policy = verify_policy_bytes(data, sign(data, signers[:2]), trust, "p.toml")
    assert policy.meta.serial == 1
    assert policy.domain[0].id == "deepseek-web"


def test_threshold_short_is_verification_failure(
    signers: list[Ed25519PrivateKey], trust: TrustConfig
) -> None:
    data = policy_toml(1)
    with pytest.raises(VerificationFailed, match="1 of 2 required"):
        verify_policy_bytes(data, sign(data, signers[:1]), trust, "p.toml")


def test_crlf_converted_copy_rejected(signers: list[Ed25519PrivateKey], trust: TrustConfig) -> None:
    data = policy_toml(1)
    sig = sign(data, signers[:2])
    with pytest.raises(VerificationFailed):
        verify_policy_bytes(data.replace(b"\n", b"\r\n"), sig, trust, "p.toml")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: b"\xef\xbb\xbf" + d, "byte order mark"),
        (lambda d: d + b'[[domain]]\nid = "x"\nid = "y"\nnames = ["a.com"]\n', "overwrite"),
        (lambda d: d.replace(b'"Test"', b'"Te\x00st"'), "NUL byte"),
    ],
    ids=["bom", "duplicate-key", "nul"],
)
def test_bom_duplicate_key_nul_rejected_even_when_signed(
    signers: list[Ed25519PrivateKey], trust: TrustConfig, mutate: object, match: str
) -> None:
    assert callable(mutate)
    bad = mutate(policy_toml(1))
    # a copy that was altered after signing fails the signature
    with pytest.raises(VerificationFailed):
        verify_policy_bytes(bad, sign(policy_toml(1), signers[:2]), trust, "p.toml")
    # and signing the bad bytes does not help: the verified buffer still must parse
    with pytest.raises(PolicyError, match=match):
        verify_policy_bytes(bad, sign(bad, signers[:2]), trust, "p.toml")


def test_oversized_policy_rejected_before_anything_else(trust: TrustConfig) -> None:
    big = b"#" * (MAX_POLICY_BYTES + 1)
    with pytest.raises(PolicyRejected, match="larger than"):
        verify_policy_bytes(big, b"not even json", trust, "p.toml")


def test_read_capped_file_over_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_bytes(b"a" * (MAX_POLICY_BYTES + 1))
    with pytest.raises(PolicyRejected, match="reading stopped at the cap"):
        read_capped(path)
    path.write_bytes(b"a" * MAX_POLICY_BYTES)
    assert len(read_capped(path)) == MAX_POLICY_BYTES


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_read_capped_endless_device_stops_at_cap() -> None:
    with pytest.raises(PolicyRejected, match="larger than 1000 bytes"):
        read_capped(Path("/dev/zero"), limit=1000)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_read_capped_endless_fifo_stops_at_cap(tmp_path: Path) -> None:
    fifo = tmp_path / "endless"
    os.mkfifo(fifo)
    stop = threading.Event()

    def feed() -> None:
        try:
            with fifo.open("wb") as fh:
                while not stop.is_set():
                    fh.write(b"x" * 4096)
        except BrokenPipeError:
            pass  # the reader gave up at the cap, as it should

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    with pytest.raises(PolicyRejected, match="reading stopped at the cap"):
        read_capped(fifo, limit=100_000)
    stop.set()
    writer.join(timeout=5)
    assert not writer.is_alive()


def test_read_stream_capped_endless_iterator() -> None:
    pulled = 0

    def endless() -> Iterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"y" * 1000

    with pytest.raises(PolicyRejected):
        read_stream_capped(endless(), limit=10_000, source="collector")
    assert pulled == 11  # stopped on the first chunk past the cap


def test_read_capped_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyRejected, match="not found"):
        read_capped(tmp_path / "none.toml")
    with pytest.raises(PolicyRejected, match="is a directory"):
        read_capped(tmp_path)


# -- PolicyStore --------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path, trust: TrustConfig) -> PolicyStore:
    return PolicyStore(tmp_path / "state", trust)


def offer(
    store: PolicyStore, data: bytes, keys: list[Ed25519PrivateKey], now: datetime = NOW
) -> Offer:
    return store.offer(data, sign(data, keys), now, origin="test")


def test_first_policy_accepted_and_survives_restart(
    store: PolicyStore, signers: list[Ed25519PrivateKey], trust: TrustConfig, tmp_path: Path
) -> None:
    assert store.current() is None
    result = offer(store, policy_toml(3), signers[:2])
    assert result.status == "accepted"
    current = store.current()
    assert current is not None
    assert current.meta.serial == 3
    again = PolicyStore(tmp_path / "state", trust)
    restored = again.current()
    assert restored is not None
    assert restored.sha256 == current.sha256
    assert again.status(NOW)["serial"] == 3


def test_same_policy_again_is_unchanged(
    store: PolicyStore, signers: list[Ed25519PrivateKey]
) -> None:
    assert offer(store, policy_toml(3), signers[:2]).status == "accepted"
    assert offer(store, policy_toml(3), signers[1:]).status == "unchanged"


def test_rollback_rejected_and_current_unchanged(
    store: PolicyStore, signers: list[Ed25519PrivateKey]
) -> None:
    offer(store, policy_toml(5), signers[:2])
    before = store.current()
    result = offer(store, policy_toml(4), signers[:2])
    assert (result.status, result.kind) == ("rejected", "rollback")
    assert "lower than the accepted serial 5" in result.reason
    assert store.current() is before


def test_same_serial_different_hash_rejected(
    store: PolicyStore, signers: list[Ed25519PrivateKey]
) -> None:
    offer(store, policy_toml(5), signers[:2])
    before = store.current()
    result = offer(store, policy_toml(5, title="Other"), signers[:2])
    assert (result.status, result.kind) == ("rejected", "conflicting_hash")
    assert store.current() is before


def test_expired_on_arrival_rejected(store: PolicyStore, signers: list[Ed25519PrivateKey]) -> None:
    result = offer(store, policy_toml(1), signers[:2], now=EXPIRES + timedelta(seconds=1))
    assert (result.status, result.kind) == ("rejected", "expired")
    assert store.current() is None


def test_badly_signed_or_malformed_rejected_keeps_current(
    store: PolicyStore, signers: list[Ed25519PrivateKey]
) -> None:
    offer(store, policy_toml(1), signers[:2])
    before = store.current()
    short = offer(store, policy_toml(2), signers[:1])
    assert (short.status, short.kind) == ("rejected", "bad_signature")
    garbled = store.offer(policy_toml(2), b"{]", NOW, "test")
    assert (garbled.status, garbled.kind) == ("rejected", "malformed_signature")
    bad_toml = b"[meta\n"
    invalid = store.offer(bad_toml, sign(bad_toml, signers[:2]), NOW, "test")
    assert (invalid.status, invalid.kind) == ("rejected", "invalid_policy")
    huge = store.offer(b"#" * (MAX_POLICY_BYTES + 1), b"", NOW, "test")
    assert (huge.status, huge.kind) == ("rejected", "oversized")
    assert store.current() is before


def test_higher_serial_replaces_and_old_copy_is_removed(
    store: PolicyStore, signers: list[Ed25519PrivateKey], tmp_path: Path
) -> None:
    offer(store, policy_toml(1), signers[:2])
    offer(store, policy_toml(2), signers[:2])
    current = store.current()
    assert current is not None
    assert current.meta.serial == 2
    kept = sorted(p.name for p in (tmp_path / "state" / "policy").iterdir())
    assert kept == [f"{current.sha256}.toml", f"{current.sha256}.toml.sig"]


def test_current_policy_expiring_stays_current_and_reports_stale(
    store: PolicyStore, signers: list[Ed25519PrivateKey]
) -> None:
    offer(store, policy_toml(1), signers[:2])
    status = store.status(NOW)
    assert status["stale"] is False
    assert status["stale_reason"] is None
    later = EXPIRES + timedelta(days=1)
    current = store.current()
    assert current is not None  # still in force after expiry
    status = store.status(later)
    assert status["stale"] is True
    assert "expired" in status["stale_reason"]
    # bans still enforced, exemptions dropped (the matchers' half of the rule)
    compiled = CompiledPolicy.compile(current)
    before = compiled.check_domain("chat.deepseek.com", "lab-1", None, NOW)
    after = compiled.check_domain("chat.deepseek.com", "lab-1", None, later)
    assert before is not None
    assert before.exempted_by == "lab"
    assert after is not None
    assert after.exempted_by is None
    assert after.action == "block"


def test_clock_set_back_more_than_an_hour_is_stale(
    store: PolicyStore, signers: list[Ed25519PrivateKey]
) -> None:
    offer(store, policy_toml(1), signers[:2])
    store.note_time(NOW + timedelta(days=2))
    assert store.status(NOW + timedelta(days=2) - timedelta(minutes=30))["stale"] is False
    back = store.status(NOW + timedelta(days=2) - timedelta(hours=2))
    assert back["stale"] is True
    assert "clock is behind" in back["stale_reason"]
    # matchers get a time that cannot go backwards
    assert store.effective_time(NOW) == NOW + timedelta(days=2)


def test_note_time_is_persisted_across_restart(
    store: PolicyStore, signers: list[Ed25519PrivateKey], trust: TrustConfig, tmp_path: Path
) -> None:
    offer(store, policy_toml(1), signers[:2])
    store.note_time(NOW + timedelta(days=3))
    again = PolicyStore(tmp_path / "state", trust)
    assert again.status(NOW)["stale"] is True  # three days back


def test_status_without_policy(store: PolicyStore) -> None:
    status = store.status(NOW)
    assert status["id"] is None
    assert status["stale"] is True


def test_deleted_state_is_rebuilt_from_kept_policy(
    store: PolicyStore, signers: list[Ed25519PrivateKey], trust: TrustConfig, tmp_path: Path
) -> None:
    offer(store, policy_toml(7), signers[:2])
    (tmp_path / "state" / "state.json").write_bytes(b"garbage")
    again = PolicyStore(tmp_path / "state", trust)
    current = again.current()
    assert current is not None
    assert current.meta.serial == 7
    result = offer(again, policy_toml(6), signers[:2])
    assert (result.status, result.kind) == ("rejected", "rollback")


def test_rotated_trust_that_no_longer_covers_the_kept_policy(
    store: PolicyStore, signers: list[Ed25519PrivateKey], tmp_path: Path
) -> None:
    offer(store, policy_toml(7), signers[:2])
    other = Ed25519PrivateKey.generate()
    rotated = TrustConfig(keys=(other.public_key(),), threshold=1)
    again = PolicyStore(tmp_path / "state", rotated)
    assert again.current() is None  # not verifiable under the new trust
    result = again.offer(policy_toml(7, title="x"), sign(policy_toml(7, title="x"), [other]), NOW)
    assert result.kind == "conflicting_hash"  # the rollback record survived


def test_signature_error_type_from_store_is_never_raised(store: PolicyStore) -> None:
    # offer() turns every bad input into a rejection; it must not raise
    for sig in (b"", b"\x00", b"[]", b"{}"):
        result = store.offer(policy_toml(1), sig, NOW, "fuzz")
        assert result.rejected
    assert issubclass(SignatureError, Exception)
