"""``proscribe policy sign`` and ``proscribe policy verify``.

``sign FILE --key K.key`` checks the file first (a policy must pass lint, a trust file must
parse), then adds the key's signature to ``FILE.sig``, keeping the signatures already there, so
several people can sign one after another until the threshold is met. Signing again with the
same key replaces that key's signature.

``verify FILE --trust PUB … [--threshold N]`` exits 0 only if N distinct trusted keys signed
the exact bytes of FILE, 1 ("verified false") with the count when they did not, and 2 when a
file or key is missing or malformed. A correctly signed policy that an agent would still refuse
(it has already expired) is also "verified false", exit 1, with the agent's reason: installers
run this before handing a policy to a host. ``--type trust`` does the same for a ``trust.toml`` and
also requires the file's own threshold of its own keys, as agents do when rotating.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proscribe.core.errors import PolicyRejected, ProscribeError, SignatureError, UsageError
from proscribe.core.fs import atomic_write
from proscribe.core.policy.bundle import read_capped
from proscribe.core.policy.envelope import (
    MAX_ENVELOPE_BYTES,
    POLICY_PAYLOAD_TYPE,
    TRUST_PAYLOAD_TYPE,
    Envelope,
    parse_envelope,
    sign_payload,
    verify_envelope,
)
from proscribe.core.policy.keys import key_id, load_private_key, parse_public_key
from proscribe.core.policy.loader import load_policy
from proscribe.core.policy.model import MAX_POLICY_BYTES, Policy
from proscribe.core.policy.state import judge_offer
from proscribe.core.policy.trustchain import MAX_TRUST_BYTES, parse_trust

PAYLOAD_TYPES = {"policy": POLICY_PAYLOAD_TYPE, "trust": TRUST_PAYLOAD_TYPE}
_LIMITS = {"policy": MAX_POLICY_BYTES, "trust": MAX_TRUST_BYTES}


def register(verbs: Any) -> None:
    sign = verbs.add_parser(
        "sign",
        help="add your signature to FILE.sig (each signer runs this in turn)",
        description="Check FILE, then add the signature of --key to FILE.sig (created if "
        "missing; other signers' signatures are kept).",
    )
    sign.add_argument("file", type=Path, metavar="FILE")
    sign.add_argument("--key", type=Path, required=True, metavar="K.key", help="private key")
    sign.add_argument(
        "--allow-expired",
        action="store_true",
        help="sign a policy whose [meta] expires is past (agents will refuse it as new)",
    )
    _add_type(sign)
    sign.set_defaults(func=run_sign)

    verify = verbs.add_parser(
        "verify",
        help="check FILE.sig against trusted public keys and a threshold",
        description="Exit 0 only if --threshold distinct --trust keys signed FILE; exit 1 "
        "(verified false) otherwise; exit 2 for missing or malformed files and keys.",
    )
    verify.add_argument("file", type=Path, metavar="FILE")
    verify.add_argument(
        "--trust",
        action="append",
        required=True,
        metavar="PUB",
        help="trusted public key: a .pub file or an 'ed25519:…' string (repeatable)",
    )
    verify.add_argument(
        "--threshold", type=int, default=1, metavar="N", help="distinct trusted signers needed"
    )
    verify.add_argument("--sig", type=Path, metavar="FILE.sig", help="default: FILE.sig")
    _add_type(verify)
    verify.set_defaults(func=run_verify)


def _add_type(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--type",
        choices=sorted(PAYLOAD_TYPES),
        default="policy",
        help="what FILE is: a policy (default) or a trust.toml for key rotation",
    )


def _read_input(path: Path, kind: str) -> bytes:
    try:
        return read_capped(path, _LIMITS[kind])
    except PolicyRejected as err:
        # At the command line a missing or huge file is a usage problem (exit 2), not a verdict.
        raise ProscribeError(str(err)) from err


def _check_content(data: bytes, kind: str, source: str) -> str:
    """Parse FILE as its kind; returns a short description. Raises the loader's error."""
    if kind == "policy":
        policy = load_policy(data, source)
        return f"policy {policy.meta.id!r} serial {policy.meta.serial}"
    trust = parse_trust(data, source)
    return f"trust version {trust.version} ({len(trust.keys)} keys, threshold {trust.threshold})"


def _agent_refusal(policy: Policy) -> str | None:
    """Why an agent with no policy yet would refuse this one (expiry), by the agent's rule."""
    verdict = judge_offer(
        None,
        policy_id=policy.meta.id,
        serial=policy.meta.serial,
        sha256=policy.sha256,
        expires=policy.meta.expires,
        now=datetime.now(UTC),
    )
    return verdict.reason if verdict.outcome == "reject" else None


def _sig_path(file: Path, given: Path | None = None) -> Path:
    return given if given is not None else Path(f"{file}.sig")


def _read_envelope(path: Path) -> Envelope | None:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_ENVELOPE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise SignatureError(f"{path}: cannot read: {err.strerror}") from err
    return parse_envelope(data, str(path))


def run_sign(args: argparse.Namespace) -> int:
    kind: str = args.type
    data = _read_input(args.file, kind)
    what = _check_content(data, kind, str(args.file))
    if kind == "policy":
        policy = load_policy(data, str(args.file))
        expires = policy.meta.expires
        if expires is not None and expires <= datetime.now(UTC):
            stamp = expires.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            if not getattr(args, "allow_expired", False):
                raise UsageError(
                    f"{args.file}: [meta] expires {stamp} is past; agents would refuse it "
                    "(fix: set a later expires, or pass --allow-expired to sign it anyway)"
                )
            print(f"warning: {args.file}: signing an expired policy ({stamp})", file=sys.stderr)
    key = load_private_key(args.key)
    sig_path = _sig_path(args.file)
    existing = _read_envelope(sig_path)
    kid = key_id(key.public_key())
    replaced = existing is not None and any(s.keyid == kid for s in existing.signatures)
    envelope = sign_payload(data, key, existing, PAYLOAD_TYPES[kind])
    atomic_write(sig_path, envelope.to_bytes(), 0o644)
    count = len(envelope.signatures)
    verb = "replaced the signature of" if replaced else "signed with"
    print(f"{args.file}: {what}: {verb} key {kid}")
    print(f"{sig_path}: now holds {count} signature{'s' if count != 1 else ''}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    kind: str = args.type
    if args.threshold < 1:
        raise UsageError(f"--threshold must be at least 1, not {args.threshold}")
    trusted = [parse_public_key(text) for text in args.trust]
    data = _read_input(args.file, kind)
    sig_path = _sig_path(args.file, args.sig)
    envelope = _read_envelope(sig_path)
    if envelope is None:
        raise SignatureError(
            f"{sig_path}: not found "
            f"(fix: sign with 'proscribe policy sign {args.file} --key K.key')"
        )
    result = verify_envelope(data, envelope, trusted, args.threshold, PAYLOAD_TYPES[kind])
    if not result.ok:
        print(f"verified false: {args.file}: {result.reason}")
        return 1
    # Only the verified buffer is parsed, as agents do.
    what = _check_content(data, kind, str(args.file))
    if kind == "trust":
        trust = parse_trust(data, str(args.file))
        own = verify_envelope(data, envelope, trust.keys, trust.threshold, TRUST_PAYLOAD_TYPE)
        if not own.ok:
            print(f"verified false: {args.file}: not signed by its own keys: {own.reason}")
            return 1
    if kind == "policy":
        refusal = _agent_refusal(load_policy(data, str(args.file)))
        if refusal:
            print(f"verified false: {args.file}: signed, but an agent refuses it: {refusal}")
            return 1
    print(f"verified: {args.file}: {what}: {result.reason}")
    for signer in result.signers:
        print(f"  signed by {signer}")
    return 0
