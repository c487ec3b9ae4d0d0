"""``proscribe collector backup --to FILE``: an online copy of a SQLite collector database."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from proscribe.cli.collector.common import add_config_argument, open_migrated, settings_from_args


def register(verbs: Any) -> None:
    backup = verbs.add_parser(
        "backup",
        help="copy the SQLite database while the collector runs (PostgreSQL: use pg_dump)",
    )
    backup.add_argument("--to", required=True, help="the new file to write (mode 0600)")
    add_config_argument(backup)
    backup.set_defaults(func=run_backup)


def run_backup(args: argparse.Namespace) -> int:
    from proscribe.collector.storage.backup import backup_sqlite

    db = open_migrated(settings_from_args(args))
    try:
        result = backup_sqlite(db, Path(args.to))
    finally:
        db.dispose()
    print(
        f"backed up {result.events} events to {result.path} "
        f"({result.bytes / 1e6:.1f} MB, integrity_check ok)"
    )
    return 0
