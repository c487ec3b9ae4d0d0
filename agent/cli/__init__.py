"""The ``proscribe`` command: an explicit registry of subcommands, one module each.

Each subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (``(args) -> int``) as the parser default. :func:`main` translates every
:class:`~proscribe.agent.errors.ProscribeError` into one line on stderr and its exit code;
nothing a user can cause prints a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from proscribe.agent import __version__
from proscribe.agent.errors import ProscribeError

# name -> module (relative to this package). Order is the order shown in --help.
COMMANDS: dict[str, str] = {
    "keygen": "keygen",
    "policy": "policy",
    "scan": "scan",
    "agent": "agent",
    "collector": "collector",
    "demo": "demo",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="proscribe",
        description="Enforce and prove bans on AI tools: signed policy, endpoint agent, collector.",
    )
    parser.add_argument("--version", action="version", version=f"proscribe {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as err:
            if err.name == f"{__name__}.{module_name}":
                continue  # subcommand not built yet
            # A subcommand whose optional dependencies are missing (e.g. the collector extra)
            # still appears, and says what to install when used.
            missing = err.name or "a dependency"
            stub = sub.add_parser(name, help=f"(unavailable: {missing} not installed)")
            stub.set_defaults(func=_unavailable(name, missing))
            continue
        module.register(sub)
    return parser


def _unavailable(name: str, missing: str) -> object:
    def run(_args: argparse.Namespace) -> int:
        raise ProscribeError(
            f"'proscribe {name}' needs {missing}, which is not installed "
            f"(fix: pip install 'proscribe[collector]')"
        )

    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return func(args)
    except ProscribeError as err:
        print(f"proscribe: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
