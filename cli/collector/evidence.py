"""``proscribe collector inventory import|list`` and ``proscribe collector signer
add|list|retire``: the hosts that must be covered, and who the policy's signing keys are.

Both go through :mod:`proscribe.collector.storage.admin_actions`, so a change is audited the
same whether it came from here, the API or the dashboard.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from proscribe.cli.collector.common import (
    add_config_argument,
    cli_actor,
    open_migrated,
    settings_from_args,
)
from proscribe.core.errors import UsageError

MAX_INVENTORY_BYTES = 32 * 1024 * 1024


def _usage(parser: argparse.ArgumentParser) -> Any:
    def run(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return run


def register(verbs: Any) -> None:
    inv = verbs.add_parser("inventory", help="import or list the hosts that must be covered")
    inv_verbs = inv.add_subparsers(dest="action", metavar="ACTION")
    imp = inv_verbs.add_parser(
        "import",
        help="replace the inventory with a CSV: hostname,asset_id,owner,group[,machine_id]",
    )
    imp.add_argument("csv_file", help="the CSV file ('-' for standard input)")
    add_config_argument(imp)
    imp.set_defaults(func=inventory_import)
    lst = inv_verbs.add_parser("list", help="the inventory, each host's match and state")
    lst.add_argument("--json", action="store_true")
    add_config_argument(lst)
    lst.set_defaults(func=inventory_list)
    inv.set_defaults(func=_usage(inv))

    sig = verbs.add_parser("signer", help="name the keys that sign policies")
    sig_verbs = sig.add_subparsers(dest="action", metavar="ACTION")
    add = sig_verbs.add_parser("add", help="name a signing key (its .pub file or ed25519:… text)")
    add.add_argument("public_key", help="the signer's public key file, or 'ed25519:BASE64'")
    add.add_argument("--name", required=True, help="who holds the key, e.g. 'Vera Lind'")
    add.add_argument("--role", default="", help="e.g. 'CISO'")
    add_config_argument(add)
    add.set_defaults(func=signer_add)
    slist = sig_verbs.add_parser("list", help="registered signing keys")
    slist.add_argument("--json", action="store_true")
    add_config_argument(slist)
    slist.set_defaults(func=signer_list)
    retire = sig_verbs.add_parser("retire", help="mark a key retired (its name stays on record)")
    retire.add_argument("keyid")
    add_config_argument(retire)
    retire.set_defaults(func=signer_retire)
    sig.set_defaults(func=_usage(sig))


def _now_us() -> int:
    return int(time.time() * 1_000_000)


def inventory_import(args: argparse.Namespace) -> int:
    from proscribe.collector.storage import admin_actions
    from proscribe.collector.storage.inventory import InventoryError, parse_csv

    source = "<stdin>" if args.csv_file == "-" else args.csv_file
    try:
        if args.csv_file == "-":
            raw = sys.stdin.buffer.read(MAX_INVENTORY_BYTES + 1)
        else:
            with Path(args.csv_file).open("rb") as handle:
                raw = handle.read(MAX_INVENTORY_BYTES + 1)
    except OSError as err:
        raise UsageError(f"{source}: cannot read it: {err.strerror}") from err
    if len(raw) > MAX_INVENTORY_BYTES:
        raise UsageError(f"{source}: larger than {MAX_INVENTORY_BYTES} bytes (fix: split it)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UsageError(
            f"{source}: not UTF-8 at byte {err.start} (fix: save it as UTF-8)"
        ) from err
    try:
        entries = parse_csv(text, source)
    except InventoryError as err:
        raise UsageError(str(err)) from err
    db = open_migrated(settings_from_args(args))
    with db.write() as conn:
        count = admin_actions.import_inventory(
            conn, entries, actor=cli_actor(), via="cli", now_us=_now_us()
        )
    db.dispose()
    print(f"imported {count} host(s); the inventory is now exactly {source}")
    return 0


def inventory_list(args: argparse.Namespace) -> int:
    from proscribe.collector.compliance import fleet

    settings = settings_from_args(args)
    db = open_migrated(settings)
    with db.read() as conn:
        found = fleet(conn, now_us=_now_us(), window_us=int(settings.heartbeat_window * 1e6))
    db.dispose()
    rows = [h for h in found.hosts if h.inventory is not None or h.agent_id is not None]
    if args.json:
        out = [
            {
                "hostname": h.hostname,
                "agent_id": h.agent_id,
                "inventory": h.inventory.as_dict() if h.inventory else None,
                "matched_by": h.matched_by,
                **h.state.as_dict(),
            }
            for h in rows
            if not h.revoked
        ]
        print(json.dumps(out))
        return 0
    print(f"{'HOST':24} {'ASSET':14} {'OWNER':16} {'GROUP':12} {'MATCHED BY':11} STATE")
    for h in rows:
        if h.revoked:
            continue
        inv = h.inventory
        print(
            f"{h.hostname[:24]:24} {(inv.asset_id if inv else '-')[:14]:14} "
            f"{(inv.owner if inv else '-')[:16]:16} {(inv.group if inv else '-')[:12]:12} "
            f"{(h.matched_by or ('-' if inv else 'not in inventory'))[:16]:11} {h.state.label}"
        )
    return 0


def signer_add(args: argparse.Namespace) -> int:
    from proscribe.collector.storage import admin_actions
    from proscribe.collector.storage.signers import SignerExists
    from proscribe.core.policy.keys import key_id, parse_public_key

    name = args.name.strip()
    if not name or len(name) > 256 or len(args.role) > 256:
        raise UsageError("--name (1 to 256 characters) and --role (at most 256) are required")
    keyid = key_id(parse_public_key(args.public_key))  # a KeyFileError is its own one line
    db = open_migrated(settings_from_args(args))
    try:
        with db.write() as conn:
            admin_actions.add_signer(
                conn, keyid, name=name, role=args.role, actor=cli_actor(), via="cli",
                now_us=_now_us(),
            )  # fmt: skip
    except SignerExists as err:
        raise UsageError(
            f"key {keyid} is registered already (fix: 'proscribe collector signer list')"
        ) from err
    finally:
        db.dispose()
    print(f"signer {name} added: key id {keyid}")
    return 0


def signer_list(args: argparse.Namespace) -> int:
    from proscribe.collector.storage.signers import list_signers

    db = open_migrated(settings_from_args(args))
    with db.read() as conn:
        rows = list_signers(conn)
    db.dispose()
    if args.json:
        print(json.dumps([_signer_dict(s) for s in rows]))
        return 0
    print(f"{'KEY ID':66} {'STATUS':8} NAME (ROLE)")
    for s in rows:
        status = "retired" if s.retired_us is not None else "active"
        print(f"{s.keyid:66} {status:8} {s.name} ({s.role or '-'})")
    return 0


def _signer_dict(s: Any) -> dict[str, Any]:
    return {
        "keyid": s.keyid,
        "name": s.name,
        "role": s.role,
        "added_by": s.added_by,
        "added_us": s.added_us,
        "retired_us": s.retired_us,
    }


def signer_retire(args: argparse.Namespace) -> int:
    from proscribe.collector.storage import admin_actions

    db = open_migrated(settings_from_args(args))
    with db.write() as conn:
        done = admin_actions.retire_signer(
            conn, args.keyid, actor=cli_actor(), via="cli", now_us=_now_us()
        )
    db.dispose()
    if not done:
        raise UsageError(
            f"signer {args.keyid!r}: no active signer with that key id "
            "(fix: see 'proscribe collector signer list')"
        )
    print(f"signer {args.keyid} retired")
    return 0
