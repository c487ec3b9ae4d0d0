"""``proscribe keygen NAME``: create a policy-signing key pair.

Writes ``NAME.key`` (the private key, mode 0600; keep it offline) and ``NAME.pub`` (one line,
``ed25519:…``, to paste into agents' ``trusted_keys`` or pass to ``policy verify --trust``).
An existing file is never overwritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from proscribe.core.policy.keys import generate_keypair, key_id, parse_public_key


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "keygen",
        help="create an Ed25519 key pair for signing policy",
        description="Write NAME.key (private, mode 0600) and NAME.pub (one line 'ed25519:…'). "
        "Existing files are never overwritten.",
    )
    parser.add_argument("name", metavar="NAME", type=Path, help="path prefix, e.g. keys/alice")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    key_path, pub_path = generate_keypair(args.name)
    public_line = pub_path.read_text(encoding="ascii").split()[0]
    print(f"private key: {key_path} (mode 0600; keep it secret, ideally offline)")
    print(f"public key:  {pub_path}")
    print(f"key id:      {key_id(parse_public_key(public_line))}")
    print(f"trusted_keys entry: {public_line}")
    return 0
