"""``proscribe collector …``: the verbs live in :mod:`proscribe.collector.cli` (the
``collector`` extra); without it installed the registry shows a stub saying what to install."""

from __future__ import annotations

from proscribe.collector.cli import register

__all__ = ["register"]
