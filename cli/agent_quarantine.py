"""``proscribe agent quarantine list|restore ID``: model files the agent moved aside.

The agent moves a file a ``[[model]]`` rule with ``action = "quarantine"`` denies into a
root-only folder on the same file system and records it (``agent/model_quarantine.py``); it never
deletes one. ``list`` prints what is in quarantine; ``restore ID`` moves a file back to where it
was, with its owner and mode unchanged (a rename keeps them).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from proscribe.agent.config import load_agent_config
from proscribe.agent.model_quarantine import Quarantine

__all__ = ["register_quarantine"]


def register_quarantine(verbs: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    parser: argparse.ArgumentParser = verbs.add_parser(
        "quarantine", help="model files moved aside by [[model]] quarantine rules: list, restore"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    listing = actions.add_parser("list", help="files in quarantine")
    config_arg(listing)
    listing.add_argument("--json", action="store_true", help="one JSON array")
    listing.set_defaults(func=cmd_list)
    restore = actions.add_parser("restore", help="move a quarantined file back")
    config_arg(restore)
    restore.add_argument("id", metavar="ID", help="the id shown by 'quarantine list'")
    restore.set_defaults(func=cmd_restore)

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)


def _quarantine(args: argparse.Namespace) -> Quarantine:
    config = load_agent_config(args.config)
    folder = config.models.quarantine_dir or config.state_dir / "quarantine"
    return Quarantine(folder, config.state_dir / "quarantine.jsonl")


def cmd_list(args: argparse.Namespace) -> int:
    records = _quarantine(args).records()
    if args.json:
        json.dump(records, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not records:
        print("quarantine is empty")
        return 0
    for r in records:
        print(
            f"{r['id']}  {r.get('time', '')}  rule {r.get('rule', '')}  uid {r.get('uid', '')}  "
            f"{r.get('size', '')} bytes  sha256 {r.get('sha256', '')[:16]}…  {_safe(r['path'])}"
        )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    record = _quarantine(args).restore(args.id)
    print(f"restored {_safe(str(record['path']))}")
    return 0


def _safe(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
