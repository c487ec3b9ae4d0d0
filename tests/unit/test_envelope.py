"""The signature envelope: PAE, strict parsing and threshold counting (REFERENCE §4)."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proscribe.core.errors import ProscribeError, SignatureError
from proscribe.core.policy.envelope import (
    MAX_ENVELOPE_BYTES,
    POLICY_PAYLOAD_TYPE,
    TRUST_PAYLOAD_TYPE,
    Envelope,
    Signature,
    pae,
    parse_envelope,
    sign_payload,
    verify_envelope,
)
from proscribe.core.policy.keys import key_id

PAYLOAD = b'[meta]\nschema = 1\nid = "t"\nserial = 1\n'


@pytest.fixture(scope="module")
def keys() -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.generate() for _ in range(4)]


def signed_by(*signers: Ed25519PrivateKey, payload: bytes = PAYLOAD) -> Envelope:
    env: Envelope | None = None
    for k in signers:
        env = sign_payload(payload, k, env)
    assert env is not None
    return env


def test_pae_matches_dsse_definition() -> None:
    assert pae("a/b", b"hello") == b"DSSEv1 3 a/b 5 hello"
    assert pae(POLICY_PAYLOAD_TYPE, b"") == (
        b"DSSEv1 %d %s 0 " % (len(POLICY_PAYLOAD_TYPE), POLICY_PAYLOAD_TYPE.encode())
    )


def test_round_trip_through_bytes(keys: list[Ed25519PrivateKey]) -> None:
    env = signed_by(keys[0], keys[1])
    again = parse_envelope(env.to_bytes(), "x.sig")
    assert again == env
    doc = json.loads(env.to_bytes())
    assert doc["payload_type"] == POLICY_PAYLOAD_TYPE
    assert [s["keyid"] for s in doc["signatures"]] == [
        key_id(keys[0].public_key()),
        key_id(keys[1].public_key()),
    ]


def test_threshold_met_and_one_short(keys: list[Ed25519PrivateKey]) -> None:
    trusted = [k.public_key() for k in keys[:3]]
    env = signed_by(keys[0], keys[1])
    ok = verify_envelope(PAYLOAD, env, trusted, 2)
    assert ok.ok
    assert set(ok.signers) == {key_id(keys[0].public_key()), key_id(keys[1].public_key())}
    short = verify_envelope(PAYLOAD, env, trusted, 3)
    assert not short.ok
    assert short.reason.startswith("2 of 3 required")


def test_same_key_twice_counts_once(keys: list[Ed25519PrivateKey]) -> None:
    one = signed_by(keys[0])
    doubled = Envelope(POLICY_PAYLOAD_TYPE, one.signatures * 2)
    assert not verify_envelope(PAYLOAD, doubled, [k.public_key() for k in keys], 2).ok
    # the same trusted key listed twice is also only one vote
    twice = [keys[0].public_key(), keys[0].public_key()]
    result = verify_envelope(PAYLOAD, one, twice, 2)
    assert not result.ok
    assert "only 1 distinct trusted keys" in result.reason


def test_resigning_replaces_instead_of_adding(keys: list[Ed25519PrivateKey]) -> None:
    env = signed_by(keys[0], keys[1], keys[0])
    assert len(env.signatures) == 2
    assert verify_envelope(PAYLOAD, env, [k.public_key() for k in keys], 2).ok


def test_keyid_hint_swapped_never_changes_verdict(keys: list[Ed25519PrivateKey]) -> None:
    trusted = [k.public_key() for k in keys[:2]]
    env = signed_by(keys[0], keys[1])
    a, b = env.signatures
    swapped = Envelope(POLICY_PAYLOAD_TYPE, (replace(a, keyid=b.keyid), replace(b, keyid=a.keyid)))
    assert verify_envelope(PAYLOAD, swapped, trusted, 2).ok
    # both hints naming the same key still give two votes (hints decide nothing)
    same = Envelope(POLICY_PAYLOAD_TYPE, (replace(a, keyid=a.keyid), replace(b, keyid=a.keyid)))
    assert verify_envelope(PAYLOAD, same, trusted, 2).ok
    # an unknown hint on a signature by an untrusted key gives no vote
    stranger = signed_by(keys[3])
    lying = Envelope(POLICY_PAYLOAD_TYPE, (replace(stranger.signatures[0], keyid=a.keyid),))
    assert not verify_envelope(PAYLOAD, lying, trusted, 1).ok


def test_untrusted_key_does_not_count(keys: list[Ed25519PrivateKey]) -> None:
    trusted = [k.public_key() for k in keys[:2]]
    env = signed_by(keys[0], keys[3])
    result = verify_envelope(PAYLOAD, env, trusted, 2)
    assert not result.ok
    assert result.signers == (key_id(keys[0].public_key()),)


def test_every_payload_byte_flipped_is_rejected(keys: list[Ed25519PrivateKey]) -> None:
    trusted = [keys[0].public_key()]
    env = signed_by(keys[0])
    assert verify_envelope(PAYLOAD, env, trusted, 1).ok
    for pos in range(len(PAYLOAD)):
        for bit in (0x01, 0x80):
            mutated = bytearray(PAYLOAD)
            mutated[pos] ^= bit
            assert not verify_envelope(bytes(mutated), env, trusted, 1).ok, pos
    assert not verify_envelope(PAYLOAD + b"\n", env, trusted, 1).ok
    assert not verify_envelope(PAYLOAD[:-1], env, trusted, 1).ok


def test_every_signature_file_byte_flipped_is_rejected(keys: list[Ed25519PrivateKey]) -> None:
    trusted = [keys[0].public_key()]
    data = signed_by(keys[0]).to_bytes()
    accepted = 0
    for pos in range(len(data)):
        mutated = bytearray(data)
        mutated[pos] ^= 0x01
        try:
            env = parse_envelope(bytes(mutated), "p.sig")
        except SignatureError:
            continue
        if verify_envelope(PAYLOAD, env, trusted, 1).ok:
            accepted += 1
            # The only harmless flips are in the keyid hint (a hint decides nothing) or in
            # whitespace / JSON layout that keep the same signature bytes.
            assert env.signatures[0].sig == signed_by(keys[0]).signatures[0].sig, pos
    # flipping any byte of the base64 signature itself must never verify
    sig_text = base64.b64encode(signed_by(keys[0]).signatures[0].sig)
    start = data.index(sig_text)
    for pos in range(start, start + len(sig_text)):
        mutated = bytearray(data)
        mutated[pos] ^= 0x01
        try:
            env = parse_envelope(bytes(mutated), "p.sig")
        except SignatureError:
            continue
        assert not verify_envelope(PAYLOAD, env, trusted, 1).ok, pos


def test_every_raw_signature_bit_matters(keys: list[Ed25519PrivateKey]) -> None:
    env = signed_by(keys[0])
    raw = env.signatures[0].sig
    for pos in range(len(raw)):
        bad = bytearray(raw)
        bad[pos] ^= 0x01
        mutated = Envelope(POLICY_PAYLOAD_TYPE, (replace(env.signatures[0], sig=bytes(bad)),))
        assert not verify_envelope(PAYLOAD, mutated, [keys[0].public_key()], 1).ok


def sig_file(sig: str, keyid: str = "0" * 64, **extra: object) -> bytes:
    doc: dict[str, object] = {
        "payload_type": POLICY_PAYLOAD_TYPE,
        "signatures": [{"keyid": keyid, "sig": sig}],
    }
    doc.update(extra)
    return json.dumps(doc).encode()


@pytest.mark.parametrize("length", [0, 63, 65, 128])
def test_signature_wrong_length(length: int) -> None:
    data = sig_file(base64.b64encode(b"\x01" * length).decode())
    with pytest.raises(SignatureError, match=f"signature is {length} bytes") as info:
        parse_envelope(data, "p.sig")
    assert str(info.value).startswith("p.sig: signatures[0]")


@pytest.mark.parametrize("text", ["not base64!", "QUJD=x", "QUJ", "  " + "A" * 86 + "==", "é"])
def test_signature_bad_base64(text: str) -> None:
    with pytest.raises(SignatureError, match="not valid base64"):
        parse_envelope(sig_file(text), "p.sig")


def test_wrong_payload_type_is_rejected(keys: list[Ed25519PrivateKey]) -> None:
    trust_env = sign_payload(PAYLOAD, keys[0], None, TRUST_PAYLOAD_TYPE)
    result = verify_envelope(PAYLOAD, trust_env, [keys[0].public_key()], 1, POLICY_PAYLOAD_TYPE)
    assert not result.ok
    assert "payload type" in result.reason
    # relabelling the envelope does not help: the type is inside what was signed
    relabelled = Envelope(POLICY_PAYLOAD_TYPE, trust_env.signatures)
    assert not verify_envelope(PAYLOAD, relabelled, [keys[0].public_key()], 1).ok


def test_sign_refuses_mixing_payload_types(keys: list[Ed25519PrivateKey]) -> None:
    env = signed_by(keys[0])
    with pytest.raises(SignatureError, match="existing signatures are for"):
        sign_payload(PAYLOAD, keys[1], env, TRUST_PAYLOAD_TYPE)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not a valid signature file"),
        (b"{", "not a valid signature file"),
        (b"\xff\xfe{}", "not a valid signature file"),
        (b"[]", "must be a JSON object"),
        (b'{"signatures": []}', "payload_type"),
        (json.dumps({"payload_type": 5, "signatures": []}).encode(), "payload_type"),
        (json.dumps({"payload_type": "x"}).encode(), "'signatures' must be a list"),
        (json.dumps({"payload_type": "x", "signatures": {}}).encode(), "must be a list"),
        (json.dumps({"payload_type": "x", "signatures": [1]}).encode(), "must be an object"),
        (
            json.dumps({"payload_type": "x", "signatures": [], "junk": 1}).encode(),
            "unknown field 'junk'",
        ),
        (
            b'{"payload_type": "x", "payload_type": "y", "signatures": []}',
            "duplicate key",
        ),
        (b'{"payload_type": "x", "signatures": [], "n": NaN}', "NaN is not allowed"),
        (b"[" * 100_00 + b"]" * 100_00, "not a valid signature file"),
    ],
)
def test_malformed_envelopes(data: bytes, match: str) -> None:
    with pytest.raises(SignatureError, match=match) as info:
        parse_envelope(data, "p.sig")
    assert "\n" not in str(info.value)


def test_signature_entry_checks() -> None:
    good = base64.b64encode(b"\x01" * 64).decode()
    with pytest.raises(SignatureError, match="keyid"):
        parse_envelope(sig_file(good, keyid="ABC"), "p.sig")
    doc = json.loads(sig_file(good))
    doc["signatures"][0]["extra"] = 1
    with pytest.raises(SignatureError, match="unknown field 'extra'"):
        parse_envelope(json.dumps(doc).encode(), "p.sig")
    del doc["signatures"][0]["extra"]
    del doc["signatures"][0]["sig"]
    with pytest.raises(SignatureError, match="'sig' must be"):
        parse_envelope(json.dumps(doc).encode(), "p.sig")


def test_trailing_junk_after_json_rejected(keys: list[Ed25519PrivateKey]) -> None:
    data = signed_by(keys[0]).to_bytes()
    with pytest.raises(SignatureError):
        parse_envelope(data + b"{}", "p.sig")


def test_oversized_signature_file_rejected() -> None:
    data = b" " * (MAX_ENVELOPE_BYTES + 1)
    with pytest.raises(SignatureError, match="larger than 64 KiB"):
        parse_envelope(data, "p.sig")


def test_too_many_signatures_rejected() -> None:
    good = base64.b64encode(b"\x01" * 64).decode()
    doc = {
        "payload_type": POLICY_PAYLOAD_TYPE,
        "signatures": [{"keyid": "0" * 64, "sig": good}] * 65,
    }
    with pytest.raises(SignatureError, match="more than 64 signatures"):
        parse_envelope(json.dumps(doc).encode(), "p.sig")


def test_empty_signature_list_verifies_false(keys: list[Ed25519PrivateKey]) -> None:
    env = parse_envelope(b'{"payload_type": "%s", "signatures": []}' % POLICY_PAYLOAD_TYPE.encode())
    result = verify_envelope(PAYLOAD, env, [keys[0].public_key()], 1)
    assert not result.ok
    assert result.reason.startswith("0 of 1")


def test_threshold_below_one_is_a_programming_error(keys: list[Ed25519PrivateKey]) -> None:
    with pytest.raises(ValueError, match="threshold"):
        verify_envelope(PAYLOAD, signed_by(keys[0]), [keys[0].public_key()], 0)


def test_errors_are_project_errors() -> None:
    assert issubclass(SignatureError, ProscribeError)
    sig = Signature(keyid="0" * 64, sig=b"\x00" * 64)
    assert Envelope(POLICY_PAYLOAD_TYPE, (sig,)).to_bytes().endswith(b"\n")


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_trusted_public_key_not_32_bytes_is_rejected(size: int) -> None:
    from proscribe.core.errors import KeyFileError
    from proscribe.core.policy.keys import parse_public_key

    with pytest.raises(KeyFileError, match=f"public key is {size} bytes"):
        parse_public_key("ed25519:" + base64.b64encode(b"\x07" * size).decode())
