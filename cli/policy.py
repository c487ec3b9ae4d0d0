"""``proscribe policy …``: write, sign and check policy. One module per verb group:

* ``policy_lint``  — ``lint``, ``show``
* ``policy_sign``  — ``sign``, ``verify``
* ``policy_test``  — ``test`` (evaluate against this host now)
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

VERB_MODULES = ("policy_lint", "policy_sign", "policy_test", "policy_export")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "policy", help="write, sign and check policy files"
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=type(parser))
    for module_name in VERB_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{module_name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__package__}.{module_name}":
                raise
            continue  # verb group not built yet
        module.register(verbs)

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)
