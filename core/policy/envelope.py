"""The detached signature envelope ``FILE.sig`` and its verification.

Format (JSON, UTF-8)::

    {"payload_type": "application/vnd.proscribe.policy+toml; version=1",
     "signatures": [{"keyid": "<hex sha256 of raw public key>", "sig": "<base64, 64 bytes>"}]}

Each signature is Ed25519 over ``PAE(payload_type, payload)``, the DSSE pre-authentication
encoding ``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``: the payload's exact bytes, no
canonicalization, and the type bound into what is signed so a trust file cannot be replayed as a
policy. Verification happens on the raw bytes before anything parses them.

Counting rules: a policy passes when ``threshold`` *distinct trusted keys* each made a valid
signature. Every signature is tried against every trusted key not yet counted (the keyid only
orders the attempts), so a wrong, swapped or duplicated keyid can neither add nor remove a vote,
and a key that signed twice counts once.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from proscribe.core.errors import SignatureError
from proscribe.core.policy.keys import key_id

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "MAX_SIGNATURES",
    "POLICY_PAYLOAD_TYPE",
    "TRUST_PAYLOAD_TYPE",
    "Envelope",
    "Signature",
    "VerifyResult",
    "distinct_keys",
    "pae",
    "parse_envelope",
    "sign_payload",
    "verify_envelope",
]

POLICY_PAYLOAD_TYPE = "application/vnd.proscribe.policy+toml; version=1"
TRUST_PAYLOAD_TYPE = "application/vnd.proscribe.trust+toml; version=1"
# A real envelope with a dozen signers is ~2 KiB; the cap keeps hostile input cheap to refuse.
MAX_ENVELOPE_BYTES = 64 * 1024
MAX_SIGNATURES = 64
SIGNATURE_BYTES = 64
_KEYID = re.compile(r"[0-9a-f]{64}")
_MAX_PAYLOAD_TYPE_CHARS = 200


@dataclass(frozen=True, slots=True)
class Signature:
    keyid: str  # a hint only
    sig: bytes  # exactly 64 raw bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    payload_type: str
    signatures: tuple[Signature, ...] = ()

    def to_bytes(self) -> bytes:
        doc = {
            "payload_type": self.payload_type,
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                for s in self.signatures
            ],
        }
        return (json.dumps(doc, indent=2, ensure_ascii=True) + "\n").encode("ascii")


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    signers: tuple[str, ...]  # key ids of the distinct trusted keys whose signature verified
    reason: str  # why not ok (or a summary when ok)
    required: int = 0


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding of ``payload`` under ``payload_type``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def parse_envelope(data: bytes, source: str = "<signature>") -> Envelope:
    """Parse and strictly check a ``.sig`` file; raise :class:`SignatureError` on any flaw."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise SignatureError(
            f"{source}: signature file is larger than {MAX_ENVELOPE_BYTES // 1024} KiB "
            "(fix: regenerate it with 'proscribe policy sign')"
        )
    try:
        text = data.decode("utf-8")
        doc = json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        detail = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise SignatureError(
            f"{source}: not a valid signature file: {detail} "
            "(fix: regenerate it with 'proscribe policy sign')"
        ) from err
    if not isinstance(doc, dict):
        raise SignatureError(f"{source}: signature file must be a JSON object")
    extra = sorted(set(doc) - {"payload_type", "signatures"})
    if extra:
        raise SignatureError(f"{source}: unknown field {_quote(extra[0])} in signature file")
    payload_type = doc.get("payload_type")
    if not isinstance(payload_type, str) or not payload_type:
        raise SignatureError(f"{source}: 'payload_type' must be a non-empty string")
    if len(payload_type) > _MAX_PAYLOAD_TYPE_CHARS:
        raise SignatureError(f"{source}: 'payload_type' is too long")
    raw_sigs = doc.get("signatures")
    if not isinstance(raw_sigs, list):
        raise SignatureError(f"{source}: 'signatures' must be a list")
    if len(raw_sigs) > MAX_SIGNATURES:
        raise SignatureError(f"{source}: more than {MAX_SIGNATURES} signatures")
    sigs = tuple(_parse_signature(item, i, source) for i, item in enumerate(raw_sigs))
    return Envelope(payload_type=payload_type, signatures=sigs)


def _parse_signature(item: object, index: int, source: str) -> Signature:
    where = f"{source}: signatures[{index}]"
    if not isinstance(item, dict):
        raise SignatureError(f"{where} must be an object with 'keyid' and 'sig'")
    extra = sorted(set(item) - {"keyid", "sig"})
    if extra:
        raise SignatureError(f"{where}: unknown field {_quote(extra[0])}")
    keyid = item.get("keyid")
    if not isinstance(keyid, str) or not _KEYID.fullmatch(keyid):
        raise SignatureError(f"{where}: 'keyid' must be 64 lower-case hex characters")
    sig_text = item.get("sig")
    if not isinstance(sig_text, str):
        raise SignatureError(f"{where}: 'sig' must be a base64 string")
    try:
        raw = base64.b64decode(sig_text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as err:
        raise SignatureError(f"{where}: 'sig' is not valid base64 (fix: re-sign the file)") from err
    if len(raw) != SIGNATURE_BYTES:
        raise SignatureError(
            f"{where}: signature is {len(raw)} bytes, an Ed25519 signature is "
            f"{SIGNATURE_BYTES} (fix: re-sign the file)"
        )
    return Signature(keyid=keyid, sig=raw)


def _quote(name: str) -> str:
    flat = name.encode("unicode_escape").decode("ascii")
    return repr(flat[:40])


def sign_payload(
    payload: bytes,
    key: Ed25519PrivateKey,
    envelope: Envelope | None = None,
    payload_type: str = POLICY_PAYLOAD_TYPE,
) -> Envelope:
    """Add ``key``'s signature to ``envelope`` (or start one).

    Signing again with a key already present replaces its old signature rather than adding a
    second copy, so re-running ``sign`` after an edit is safe and never inflates the count.
    """
    if envelope is not None and envelope.payload_type != payload_type:
        raise SignatureError(
            f"existing signatures are for {envelope.payload_type!r}, not {payload_type!r} "
            "(fix: use the matching --type, or remove the old .sig file)"
        )
    kid = key_id(key.public_key())
    new = Signature(keyid=kid, sig=key.sign(pae(payload_type, payload)))
    kept = [] if envelope is None else [s for s in envelope.signatures if s.keyid != kid]
    if len(kept) >= MAX_SIGNATURES:
        raise SignatureError(f"the signature file already holds {MAX_SIGNATURES} signatures")
    return Envelope(payload_type=payload_type, signatures=(*kept, new))


def _raw(pk: Ed25519PublicKey) -> bytes:
    return pk.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def distinct_keys(keys: Iterable[Ed25519PublicKey]) -> list[Ed25519PublicKey]:
    """``keys`` with repeats (same raw bytes) removed, order kept."""
    seen: set[bytes] = set()
    out: list[Ed25519PublicKey] = []
    for pk in keys:
        raw = _raw(pk)
        if raw not in seen:
            seen.add(raw)
            out.append(pk)
    return out


def _hint_last_key(hint: str) -> Callable[[tuple[str, Ed25519PublicKey]], bool]:
    def order(item: tuple[str, Ed25519PublicKey]) -> bool:
        return item[0] != hint  # False sorts first: the hinted key is tried first

    return order


def verify_envelope(
    payload: bytes,
    envelope: Envelope,
    trusted_keys: Sequence[Ed25519PublicKey],
    threshold: int,
    payload_type: str = POLICY_PAYLOAD_TYPE,
) -> VerifyResult:
    """Count the distinct trusted keys with a valid signature over ``payload``."""
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    if envelope.payload_type != payload_type:
        return VerifyResult(
            ok=False,
            signers=(),
            required=threshold,
            reason=f"payload type is {_quote(envelope.payload_type)}, expected {payload_type!r}",
        )
    keys = distinct_keys(trusted_keys)
    message = pae(payload_type, payload)
    pending = [(key_id(pk), pk) for pk in keys]
    signers: list[str] = []
    for sig in envelope.signatures:
        # The hinted key goes first only to save work; every remaining key is still tried.
        pending.sort(key=_hint_last_key(sig.keyid))
        for index, (kid, pk) in enumerate(pending):
            try:
                pk.verify(sig.sig, message)
            except InvalidSignature:
                continue
            signers.append(kid)
            del pending[index]
            break
    ok = len(signers) >= threshold
    summary = f"{len(signers)} of {threshold} required trusted signatures"
    if not ok and threshold > len(keys):
        summary += f" (only {len(keys)} distinct trusted keys were given)"
    return VerifyResult(ok=ok, signers=tuple(signers), reason=summary, required=threshold)
