"""Typed reads of one TOML table of a policy.

:class:`Table` wraps a parsed table with its position; each read checks the type, records a
:class:`LintIssue` on the key's line when it is wrong and returns ``None``, so a builder can go
on and report every problem in one pass.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, cast

from proscribe.core.errors import LintIssue
from proscribe.core.policy.model import (
    ACTIONS,
    SEVERITIES,
    Action,
    Severity,
)

if TYPE_CHECKING:
    from proscribe.core.policy._lines import LineIndex, TableRef

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_MAX_TEXT = 4096


class Table:
    def __init__(
        self,
        raw: dict[str, Any],
        ref: TableRef,
        kind: str,
        lines: LineIndex,
        source: str,
        issues: list[LintIssue],
    ) -> None:
        self.raw = raw
        self.ref = ref
        self.kind = kind
        self.lines = lines
        self.source = source
        self.issues = issues
        self._arrays: dict[str, list[Table]] = {}

    @property
    def line(self) -> int | None:
        return self.lines.table(self.ref)

    def issue(self, key: str | None, message: str, fix: str = "") -> None:
        line = self.lines.key(self.ref, key) if key else self.line
        self.issues.append(LintIssue(self.source, line, f"{self.kind}: {message}", fix))

    def unknown_keys(self, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        for key in self.raw:
            if key in allowed:
                continue
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            fix = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
            self.issue(key, f"unknown key {key!r}", fix)

    def _get(self, key: str, required: bool) -> Any:
        if key not in self.raw:
            if required:
                self.issue(None, f"missing required key {key!r}", f"add {key} = …")
            return None
        return self.raw[key]

    def subtable(self, key: str, *, required: bool) -> Table | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.issue(key, f"{key!r} must be a table", f"write it as [{key}]")
            return None
        return Table(value, (key, 0), f"[{key}]", self.lines, self.source, self.issues)

    def array(self, key: str) -> list[Table]:
        if key in self._arrays:
            return self._arrays[key]
        found: list[Table] = []
        value = self.raw.get(key)
        qualified = f"{self.ref[0]}.{key}" if self.ref[0] else key
        if value is not None:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                self.issue(key, f"{key!r} must be an array of tables", f"write [[{qualified}]]")
            else:
                for index, item in enumerate(value):
                    label = f"[[{qualified}]] #{index + 1}"
                    ident = item.get("id")
                    if isinstance(ident, str) and ident:
                        label = f"[[{qualified}]] {ident!r}"
                    found.append(
                        Table(item, (qualified, index), label, self.lines, self.source, self.issues)
                    )
        self._arrays[key] = found
        return found

    def integer(self, key: str, *, required: bool = False) -> int | None:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.issue(key, f"{key!r} must be an integer, not {_toml_type(value)}", "e.g. 1")
            return None
        return value

    def boolean(self, key: str) -> bool | None:
        value = self._get(key, False)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.issue(key, f"{key!r} must be true or false, not {_toml_type(value)}")
            return None
        return value

    def text(self, key: str, *, required: bool = False) -> str | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, str):
            self.issue(key, f"{key!r} must be a string, not {_toml_type(value)}", 'use "…"')
            return None
        if len(value) > _MAX_TEXT:
            self.issue(key, f"{key!r} is longer than {_MAX_TEXT} characters", "shorten it")
            return None
        if required and not value.strip():
            self.issue(key, f"{key!r} is empty", "give it a value")
            return None
        return value

    def identifier(self, key: str, *, required: bool = False) -> str | None:
        value = self.text(key, required=required)
        if value is not None and not _ID.match(value):
            self.issue(
                key,
                f"{key} {value!r} is not a valid id",
                "use letters, digits, '.', '_', ':' or '-', starting with a letter or digit",
            )
            return None
        return value

    def date_text(self, key: str) -> str:
        value = self._get(key, False)
        if value is None:
            return ""
        if isinstance(value, date | str) and not isinstance(value, datetime):
            return str(value)
        if isinstance(value, datetime):
            return value.isoformat()
        self.issue(key, f"{key!r} must be a date such as 2025-01-24, not {_toml_type(value)}")
        return ""

    def instant(self, key: str, *, required: bool = False) -> datetime | None:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                self.issue(
                    key,
                    f"{key} {value.isoformat()} has no time zone",
                    f"add a zone, e.g. Z: {key} = {value.isoformat()}Z",
                )
                return None
            try:
                return value.astimezone(UTC)
            except OverflowError:
                self.issue(key, f"{key} {value.isoformat()} is out of range", "use a real date")
                return None
        if isinstance(value, date):
            self.issue(
                key,
                f"{key} {value.isoformat()} is a date without a time and zone",
                f"add a zone, e.g. Z: {key} = {value.isoformat()}T00:00:00Z",
            )
            return None
        self.issue(
            key,
            f"{key!r} must be a date-time with a zone, not {_toml_type(value)}",
            f"e.g. {key} = 2025-01-24T00:00:00Z (no quotes)",
        )
        return None

    def choice(self, key: str, allowed: tuple[str, ...]) -> str | None:
        value = self.text(key)
        if value is not None and value not in allowed:
            self.issue(
                key, f"{key} {value!r} is not one of {', '.join(allowed)}", f"use {allowed[0]!r}"
            )
            return None
        return value

    def action(self, key: str) -> Action | None:
        return cast("Action | None", self.choice(key, ACTIONS))

    def severity(self, key: str) -> Severity | None:
        return cast("Severity | None", self.choice(key, SEVERITIES))

    def strings(self, key: str, *, required: bool = False, empty_ok: bool = True) -> list[str]:
        value = self._get(key, required)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.issue(key, f"{key!r} must be a list of strings", f'{key} = ["…"]')
            return []
        if not value and not empty_ok:
            self.issue(key, f"{key!r} is an empty list", f"list at least one value or drop {key}")
        out: dict[str, None] = {}  # ordered set: duplicates dropped, order kept
        for item in value:
            if not item.strip():
                self.issue(key, f"{key!r} contains an empty string", "remove it")
            else:
                out[item] = None
        return list(out)


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, datetime | date):
        return "a date"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__
