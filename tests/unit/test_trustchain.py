"""Trust-file rotation: version N+1 needs N's threshold and its own (REFERENCE §4)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proscribe.core.errors import TrustError, VerificationFailed
from proscribe.core.policy.bundle import verify_policy_bytes
from proscribe.core.policy.envelope import (
    POLICY_PAYLOAD_TYPE,
    TRUST_PAYLOAD_TYPE,
    Envelope,
    sign_payload,
)
from proscribe.core.policy.keys import public_key_string
from proscribe.core.policy.trustchain import (
    TrustConfig,
    TrustStore,
    load_trust_chain,
    parse_trust,
    rotate,
)


def new_keys(n: int) -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.generate() for _ in range(n)]


def trust_toml(
    version: int, threshold: int, keys: list[Ed25519PrivateKey], extra: str = ""
) -> bytes:
    listed = ", ".join(f'"{public_key_string(k.public_key())}"' for k in keys)
    return (
        f"[trust]\nversion = {version}\nthreshold = {threshold}\nkeys = [{listed}]\n{extra}"
    ).encode()


def sign(data: bytes, signers: list[Ed25519PrivateKey], ptype: str = TRUST_PAYLOAD_TYPE) -> bytes:
    env: Envelope | None = None
    for k in signers:
        env = sign_payload(data, k, env, ptype)
    assert env is not None
    return env.to_bytes()


def root_of(keys: list[Ed25519PrivateKey], threshold: int) -> TrustConfig:
    return TrustConfig.from_strings([public_key_string(k.public_key()) for k in keys], threshold)


def test_chain_with_every_key_rotated_is_accepted(tmp_path: Path) -> None:
    k1, k2, k3 = new_keys(2), new_keys(3), new_keys(2)
    root = root_of(k1, 2)
    t2 = trust_toml(2, 2, k2)
    t3 = trust_toml(3, 1, k3)
    (tmp_path / "2.toml").write_bytes(t2)
    (tmp_path / "2.toml.sig").write_bytes(sign(t2, k1 + k2[:2]))
    (tmp_path / "3.toml").write_bytes(t3)
    (tmp_path / "3.toml.sig").write_bytes(sign(t3, k2[1:] + k3[:1]))
    final = load_trust_chain(root, [tmp_path / "2.toml", tmp_path / "3.toml"])
    assert final.version == 3
    assert final.threshold == 1
    assert final.key_strings() == tuple(public_key_string(k.public_key()) for k in k3)
    # none of the original keys can sign policy any more
    assert not set(final.key_strings()) & set(root.key_strings())


def test_gap_is_rejected() -> None:
    k1, k3 = new_keys(1), new_keys(1)
    t3 = trust_toml(3, 1, k3)
    with pytest.raises(TrustError, match="version 3 cannot follow version 1"):
        rotate(root_of(k1, 1), t3, sign(t3, k1 + k3))


def test_same_version_again_is_rejected() -> None:
    k1 = new_keys(1)
    t1 = trust_toml(1, 1, k1)
    with pytest.raises(TrustError, match="cannot follow"):
        rotate(root_of(k1, 1), t1, sign(t1, k1))


def test_missing_old_threshold_is_rejected() -> None:
    k1, k2 = new_keys(3), new_keys(2)
    t2 = trust_toml(2, 2, k2)
    with pytest.raises(TrustError, match="not authorized by trust version 1: 1 of 2"):
        rotate(root_of(k1, 2), t2, sign(t2, k1[:1] + k2))


def test_missing_new_threshold_is_rejected() -> None:
    k1, k2 = new_keys(2), new_keys(3)
    t2 = trust_toml(2, 2, k2)
    with pytest.raises(TrustError, match="not signed by its own keys: 1 of 2"):
        rotate(root_of(k1, 2), t2, sign(t2, k1 + k2[:1]))


def test_new_trust_signed_only_by_itself_is_rejected() -> None:
    k1, k2 = new_keys(1), new_keys(1)
    t2 = trust_toml(2, 1, k2)
    with pytest.raises(TrustError, match="not authorized"):
        rotate(root_of(k1, 1), t2, sign(t2, k2))


def test_trust_envelope_signed_as_policy_is_rejected() -> None:
    k1, k2 = new_keys(1), new_keys(1)
    t2 = trust_toml(2, 1, k2)
    with pytest.raises(TrustError, match="payload type"):
        rotate(root_of(k1, 1), t2, sign(t2, k1 + k2, POLICY_PAYLOAD_TYPE))


def test_trust_file_presented_as_policy_is_rejected() -> None:
    k1 = new_keys(1)
    t2 = trust_toml(2, 1, k1)
    with pytest.raises(VerificationFailed, match="payload type"):
        verify_policy_bytes(t2, sign(t2, k1), root_of(k1, 1), "policy.toml")


def test_tampered_trust_file_is_rejected() -> None:
    k1, k2, evil = new_keys(1), new_keys(1), new_keys(1)
    t2 = trust_toml(2, 1, k2)
    sig = sign(t2, k1 + k2)
    swapped = t2.replace(
        public_key_string(k2[0].public_key()).encode(),
        public_key_string(evil[0].public_key()).encode(),
    )
    with pytest.raises(TrustError, match="not authorized"):
        rotate(root_of(k1, 1), swapped, sig)


def test_malformed_signature_is_a_trust_error() -> None:
    k1 = new_keys(1)
    with pytest.raises(TrustError, match="not a valid signature file"):
        rotate(root_of(k1, 1), trust_toml(2, 1, k1), b"{nope")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b"[trust]\nversion = 2\nthreshold = 1\n", "keys must be a list"),
        (b"[trust]\nversion = 0\nthreshold = 1\nkeys = []\n", "version must be"),
        (b"[trust]\nversion = 2\nthreshold = 1\nkeys = []\n", "threshold 1 must be between"),
        (b"[trust]\nversion = 2\nthreshold = 1\nkeys = ['/etc/passwd']\n", "must start with"),
        (b"[trust]\nversion = 2\nthreshold = 1\nkeys = ['ed25519:AAAA']\n", "3 bytes"),
        (b"[trust]\nversion = 2\nthreshold = 1\nkeys = []\nextra = 1\n", "unknown key 'extra'"),
        (b"[other]\n", "unknown table or key 'other'"),
        (b"", "missing \\[trust\\]"),
        (b"[trust\n", "not valid TOML"),
        (b"\xef\xbb\xbf[trust]\n", "not valid TOML"),
        (
            b"[trust]\nversion = 2\nthreshold = 1\nkeys = []\nexpires = 2025-01-01T00:00:00\n",
            "with a zone",
        ),
    ],
)
def test_parse_trust_errors(text: bytes, match: str) -> None:
    with pytest.raises(TrustError, match=match):
        parse_trust(text, "trust.toml")


def test_duplicate_keys_and_thresholds_in_trust() -> None:
    k = new_keys(1)
    with pytest.raises(TrustError, match="distinct"):
        parse_trust(trust_toml(2, 1, k + k))
    with pytest.raises(TrustError, match="threshold 3"):
        parse_trust(trust_toml(2, 3, new_keys(2)))
    with pytest.raises(TrustError, match="threshold 0"):
        root_of(new_keys(1), 0)


def test_root_from_config_strings_names_the_bad_entry() -> None:
    with pytest.raises(TrustError, match=r"trusted_keys\[1\]"):
        TrustConfig.from_strings([public_key_string(new_keys(1)[0].public_key()), "ed25519:!!"], 1)


def test_expired_final_trust_is_refused(tmp_path: Path) -> None:
    k1, k2 = new_keys(1), new_keys(1)
    t2 = trust_toml(2, 1, k2, "expires = 2025-06-01T00:00:00Z\n")
    (tmp_path / "t.toml").write_bytes(t2)
    (tmp_path / "t.toml.sig").write_bytes(sign(t2, k1 + k2))
    before = load_trust_chain(
        root_of(k1, 1), [tmp_path / "t.toml"], datetime(2025, 5, 1, tzinfo=UTC)
    )
    assert before.expires == datetime(2025, 6, 1, tzinfo=UTC)
    with pytest.raises(TrustError, match="expired"):
        load_trust_chain(root_of(k1, 1), [tmp_path / "t.toml"], datetime(2025, 7, 1, tzinfo=UTC))


def test_missing_trust_files(tmp_path: Path) -> None:
    k1 = new_keys(1)
    with pytest.raises(TrustError, match="not found"):
        load_trust_chain(root_of(k1, 1), [tmp_path / "none.toml"])
    (tmp_path / "x.toml").write_bytes(trust_toml(2, 1, k1))
    with pytest.raises(TrustError, match=r"x\.toml\.sig: not found"):
        load_trust_chain(root_of(k1, 1), [tmp_path / "x.toml"])


def test_trust_store_keeps_accepted_versions_across_restart(tmp_path: Path) -> None:
    k1, k2, k3 = new_keys(1), new_keys(2), new_keys(1)
    root = root_of(k1, 1)
    store = TrustStore(tmp_path / "trust", root)
    assert store.current() is root
    t2 = trust_toml(2, 2, k2)
    t3 = trust_toml(3, 1, k3, "expires = 2026-01-01T00:00:00Z\n")
    with pytest.raises(TrustError, match="cannot follow"):
        store.offer(t3, sign(t3, k1 + k3))  # skipping version 2
    assert store.current() is root
    assert store.offer(t2, sign(t2, k1 + k2)).version == 2
    assert store.offer(t3, sign(t3, k2 + k3)).version == 3
    assert sorted(p.name for p in (tmp_path / "trust").iterdir()) == [
        "2.toml",
        "2.toml.sig",
        "3.toml",
        "3.toml.sig",
    ]
    again = TrustStore(tmp_path / "trust", root)
    assert again.current().version == 3
    assert again.current().key_strings() == tuple(public_key_string(k.public_key()) for k in k3)
    assert not again.expired(datetime(2025, 6, 1, tzinfo=UTC))
    assert again.expired(datetime(2026, 6, 1, tzinfo=UTC))


def test_trust_store_stops_at_a_kept_file_that_no_longer_verifies(tmp_path: Path) -> None:
    k1, k2 = new_keys(1), new_keys(1)
    store = TrustStore(tmp_path / "trust", root_of(k1, 1))
    t2 = trust_toml(2, 1, k2)
    store.offer(t2, sign(t2, k1 + k2))
    # tampered on disk
    (tmp_path / "trust" / "2.toml").write_bytes(t2 + b"# edited\n")
    assert TrustStore(tmp_path / "trust", root_of(k1, 1)).current().version == 1
    # a different root in the config does not inherit the old chain
    (tmp_path / "trust" / "2.toml").write_bytes(t2)
    other_root = root_of(new_keys(1), 1)
    assert TrustStore(tmp_path / "trust", other_root).current() is other_root
