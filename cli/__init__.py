"""The ``proscribe`` command: an explicit registry of subcommands, one module each.

Each subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (``(args) -> int``) as the parser default. :func:`main` translates every
:class:`~proscribe.core.errors.ProscribeError` into one line on stderr and its exit code;
nothing a user can cause prints a traceback. A reader that closes the pipe early (``| head``)
ends any command quietly with :data:`EXIT_BROKEN_PIPE`, the status a shell shows for ``cat``
or ``grep`` stopped by SIGPIPE; this is handled here, once, for every command.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence

from proscribe.core import __version__
from proscribe.core.errors import ProscribeError

# name -> (module relative to this package, one-line help). Order is the order shown in --help.
# The help lines live here so that `proscribe X` imports only X's module: the daemon must not
# carry the collector's dependencies, and every command starts faster.
COMMANDS: dict[str, tuple[str, str]] = {
    "keygen": ("keygen", "create an Ed25519 key pair for signing policy"),
    "policy": ("policy", "write, sign and check policy files"),
    "scan": ("scan", "one-shot audit of running processes and files; exit 1 on a violation"),
    "agent": ("agent", "run the endpoint agent, show its status and events"),
    "collector": (
        "collector",
        "run and administer the collector (server, secrets, users, reports)",
    ),
    "demo": ("demo", "run the whole job on this machine: collector, agent, a violation, report"),
}
# The install extra a command's module needs beyond the agent's own dependencies.
EXTRAS: dict[str, str] = {"collector": "collector", "demo": "collector"}
# 128 + SIGPIPE: what `cat file | head -1` reports for cat.
EXIT_BROKEN_PIPE = 141


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser(only: str | None = "") -> argparse.ArgumentParser:
    """The full parser, or (``only``) one whose other subcommands are help-only placeholders.

    ``only=""`` imports every subcommand module (tests use it); ``only=None`` imports none (for
    ``proscribe --help``); ``only="agent"`` imports just that one.
    """
    parser = _Parser(
        prog="proscribe",
        description="Enforce and prove bans on AI tools: signed policy, endpoint agent, collector.",
    )
    parser.add_argument("--version", action="version", version=f"proscribe {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_line) in COMMANDS.items():
        if only is None or (only and name != only):
            sub.add_parser(name, help=help_line)
            continue
        try:
            if name in EXTRAS:
                _require_extra(EXTRAS[name])
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as err:
            if err.name == f"{__name__}.{module_name}":
                continue  # subcommand not built yet
            # A subcommand whose optional dependencies are missing (e.g. the collector extra)
            # still appears, and says what to install when used.
            missing = err.name or "a dependency"
            stub = sub.add_parser(name, help=f"(unavailable: {missing} not installed)")
            stub.set_defaults(func=_unavailable(name, missing), any_arguments=True)
            continue
        module.register(sub)
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def _require_extra(extra: str) -> None:
    """Raise ModuleNotFoundError naming the first distribution of ``proscribe[extra]`` that is
    not installed (read from the installed package's metadata, so pyproject.toml stays the one
    list)."""
    try:
        requirements = importlib.metadata.requires("proscribe") or []
    except importlib.metadata.PackageNotFoundError:
        return  # running from a tree that is not installed: let the imports speak
    for requirement in requirements:
        if f'extra == "{extra}"' not in requirement.replace("'", '"'):
            continue
        match = re.match(r"[A-Za-z0-9._-]+", requirement)
        if match is None:
            continue
        try:
            importlib.metadata.distribution(match.group(0))
        except importlib.metadata.PackageNotFoundError:
            raise ModuleNotFoundError(match.group(0), name=match.group(0)) from None


def _unavailable(name: str, missing: str) -> Callable[[argparse.Namespace], int]:
    extra = EXTRAS.get(name)
    fix = f"pip install 'proscribe[{extra}]'" if extra else f"pip install {missing}"
    needs = f"the {extra} extra" if extra else missing

    def run(_args: argparse.Namespace) -> int:
        raise ProscribeError(
            f"'proscribe {name}' needs {needs}, which is not installed "
            f"({missing} is missing) (fix: {fix})"
        )

    return run


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the handler: the flush at exit would print a traceback
    except BrokenPipeError:
        return _stdout_closed()
    except SystemExit as stop:  # argparse's --help and usage errors write before exiting
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            return _stdout_closed()
        raise stop from None
    return code


def _stdout_closed() -> int:
    """The reader went away. Python's documented idiom (signal module docs, "Note on
    SIGPIPE"): point stdout at devnull so the flush at exit stays quiet. SIGPIPE itself stays
    ignored: the agent and the collector must see EPIPE on a socket as an error, not die."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=_chosen_command(words))
    args, rest = parser.parse_known_args(words)
    if rest and not getattr(args, "any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
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
