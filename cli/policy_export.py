"""``proscribe policy export FILE --format rpz|unbound|dnsmasq|hosts|adblock``.

The policy's blocked domains in a format a central resolver loads (``core/policy/export.py``
says what each format covers). An invalid policy is a usage error (its problems on stderr,
exit 2): there is nothing to export.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from proscribe.core.errors import UsageError
from proscribe.core.fs import atomic_write
from proscribe.core.policy.export import EXPORT_FORMATS, export_policy
from proscribe.core.policy.loader import lint_policy, load_policy, read_policy_bytes


def register(verbs: Any) -> None:
    export = verbs.add_parser(
        "export",
        help="write the policy's blocked domains for a central resolver (RPZ, Unbound, …)",
        description="Print the domains the policy blocks in a resolver's format: rpz (BIND, "
        "Unbound, PowerDNS, Knot), unbound, dnsmasq, hosts, adblock (AdGuard Home, Pi-hole). "
        "Exit 2 when the file is not a valid policy.",
    )
    export.add_argument("file", type=Path, metavar="FILE")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    export.add_argument("--output", type=Path, metavar="OUT", help="write here (default: stdout)")
    export.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    data = read_policy_bytes(args.file)
    issues = lint_policy(data, str(args.file))
    if issues:
        for issue in issues:
            print(issue, file=sys.stderr)
        raise UsageError(f"{args.file}: not a valid policy ({len(issues)} problem(s) above)")
    text = export_policy(load_policy(data, str(args.file)), args.format)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        atomic_write(args.output, text, 0o644)
    except OSError as err:
        raise UsageError(f"--output {args.output}: {err.strerror}") from err
    print(f"wrote {args.output}: {args.format}", file=sys.stderr)
    return 0
