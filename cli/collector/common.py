"""What every collector verb needs: the config and an open, migrated database.

The ``proscribe`` command imports every verb module to build its parser, so these modules
import storage and web code only inside the functions that run a verb."""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path
from typing import TYPE_CHECKING

from proscribe.collector.config import CollectorSettings, load_collector_config

if TYPE_CHECKING:
    from proscribe.collector.storage import Database


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default="/etc/proscribe/collector.toml",
        help="collector.toml (default: %(default)s)",
    )


def settings_from_args(args: argparse.Namespace) -> CollectorSettings:
    return load_collector_config(Path(args.config))


def open_migrated(settings: CollectorSettings) -> Database:
    # Imported here: `proscribe --help` and agent verbs must not pay for SQLAlchemy/Alembic.
    from proscribe.collector.storage import open_database, upgrade

    db = open_database(settings.database_url)
    upgrade(db)
    return db


def cli_actor() -> str:
    """Who did an admin action from the command line, for the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"
