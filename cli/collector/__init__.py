"""``proscribe collector …``: one module per verb group, registered explicitly.

* ``serve``   — ``serve``, ``migrate``
* ``admin``   — ``enroll-secret create|list|revoke``, ``agent list|revoke``,
  ``user add|list|reset|disable``, ``purge --older-than AGE``, ``audit verify``
* ``report``  — ``report --since 30d --format html|json|csv``
* ``forward`` — ``forward status [--json]``, ``forward test NAME``
* ``backup``  — ``backup --to FILE`` (SQLite, online)
"""

from __future__ import annotations

import argparse
from typing import Any

from proscribe.cli.collector import admin, backup, forward, report, serve

VERB_MODULES = (serve, admin, report, forward, backup)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "collector", help="run and administer the collector (server, secrets, users, reports)"
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=type(parser))
    for module in VERB_MODULES:
        module.register(verbs)

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)
