"""Property tests: hostile signature files and payloads produce only the project's own errors,
and no mutation of a signed policy ever verifies."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proscribe.core.errors import ProscribeError
from proscribe.core.policy.bundle import PolicyStore, TrustConfig, verify_policy_bytes
from proscribe.core.policy.envelope import (
    POLICY_PAYLOAD_TYPE,
    parse_envelope,
    sign_payload,
    verify_envelope,
)
from proscribe.core.policy.trustchain import parse_trust, rotate

KEYS = [Ed25519PrivateKey.generate() for _ in range(2)]
TRUST = TrustConfig(keys=tuple(k.public_key() for k in KEYS), threshold=1)
POLICY = b"""[meta]
schema = 1
id = "fuzz"
serial = 1
issued = 2025-01-24T00:00:00Z
title = "Fuzz"

[[domain]]
id = "d"
names = ["deepseek.com"]
"""
SIG = sign_payload(POLICY, KEYS[0]).to_bytes()
NOW = datetime(2025, 2, 1, tzinfo=UTC)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=90),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
signature_entries = st.fixed_dictionaries(
    {
        "keyid": st.one_of(st.text(max_size=70), st.just("0" * 64), st.integers()),
        "sig": st.one_of(
            st.text(max_size=100),
            st.binary(min_size=0, max_size=70).map(lambda b: base64.b64encode(b).decode()),
            st.integers(),
        ),
    }
)
envelopes = st.fixed_dictionaries(
    {
        "payload_type": st.one_of(st.just(POLICY_PAYLOAD_TYPE), st.text(max_size=50), json_values),
        "signatures": st.one_of(st.lists(signature_entries, max_size=4), json_values),
    },
    optional={"junk": json_values},
)


def only_project_errors(sig: bytes, payload: bytes = POLICY) -> None:
    try:
        env = parse_envelope(sig, "f.sig")
    except ProscribeError as err:
        assert "\n" not in str(err)
        return
    result = verify_envelope(payload, env, TRUST.keys, TRUST.threshold)
    if result.ok:
        # only possible when the payload is the signed one and a real signature survived
        assert payload == POLICY


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_as_signature_file(data: bytes) -> None:
    only_project_errors(data)


@settings(max_examples=150, deadline=None)
@given(envelopes)
def test_structured_garbage_envelopes(doc: object) -> None:
    only_project_errors(json.dumps(doc).encode())


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_real_signature_file(data: st.DataObject) -> None:
    raw = bytearray(SIG)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        pos = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif op == "delete":
            del raw[pos]
        else:
            raw.insert(pos, data.draw(st.integers(0, 255)))
    only_project_errors(bytes(raw))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_policy_never_verifies(data: st.DataObject) -> None:
    raw = bytearray(POLICY)
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    try:
        verify_policy_bytes(bytes(raw), SIG, TRUST, "p.toml")
    except ProscribeError:
        return
    raise AssertionError(f"mutated policy verified (byte {pos})")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=st.binary(max_size=300), sig=st.binary(max_size=300))
def test_store_offer_never_raises(tmp_path: Path, payload: bytes, sig: bytes) -> None:
    store = PolicyStore(tmp_path / "state", TRUST)
    result = store.offer(payload, sig, NOW, "fuzz")
    assert result.rejected
    assert store.current() is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=500), st.binary(max_size=500))
def test_trust_parsing_and_rotation_raise_only_project_errors(data: bytes, sig: bytes) -> None:
    for call in (lambda: parse_trust(data, "t.toml"), lambda: rotate(TRUST, data, sig, "t.toml")):
        try:
            call()
        except ProscribeError as err:
            assert "\n" not in str(err)
