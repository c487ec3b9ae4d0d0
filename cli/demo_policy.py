"""The demo's own policy: a pack rewritten so that it can only ever match what the demo starts.

``proscribe demo`` runs a real agent in enforce mode on the machine it is run on, often a
developer's laptop. Enforcing the pack as shipped would kill every program named ``deepseek*``
on that machine and report every program's DNS for ``deepseek.com``. So the demo enforces a
copy in which:

* every process rule's ``names`` globs become ``paths`` globs under the demo's work directory
  (``deepseek*`` becomes ``WORK/**/deepseek*``): a program of that name elsewhere never matches;
* process rules that match anywhere else (machine ``paths``, ``cmdline`` regexes, ``sha256``)
  are left out, and so are ``[[file]]`` rules (home-directory paths; the agent does not act on
  them anyway);
* domain rules stay as they are: the demo's agent learns about DNS only through its own proxy
  on a private loopback port that nothing but the demo asks (see ``cli/demo.py``).

The result is written as TOML and signed like any policy; :func:`scoped_pack` says what it
changed so the demo can print it.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

__all__ = ["ScopedPack", "escape_glob", "scoped_pack"]

# Process-rule keys that can match a program outside the work directory.
_UNSCOPED_KEYS = ("names", "paths", "cmdline", "sha256")


@dataclass(frozen=True, slots=True)
class ScopedPack:
    text: str  # the TOML to sign
    policy_id: str
    kept: tuple[str, ...]  # rule ids enforced (process rules scoped, domain rules as is)
    left_out: tuple[str, ...]  # rule ids that cannot be scoped to the work directory


def escape_glob(text: str) -> str:
    """``text`` as a glob that matches exactly itself (``*``, ``?`` and ``[`` in classes)."""
    return "".join(f"[{ch}]" if ch in "*?[" else ch for ch in text)


def scoped_pack(pack: bytes, work: Path) -> ScopedPack:
    """The pack with its process rules confined to ``work`` (an absolute, resolved path)."""
    data = tomllib.loads(pack.decode("utf-8"))
    meta = dict(data["meta"])
    policy_id = f"{meta['id']}-demo"
    meta["id"] = policy_id
    meta["title"] = f"{meta['title']} — demo copy, enforced only under {work}"
    kept: list[str] = []
    left_out: list[str] = []
    processes: list[dict[str, Any]] = []
    for rule in data.get("process", []):
        names = rule.get("names") or []
        if not names:
            left_out.append(rule["id"])
            continue
        scoped = {k: v for k, v in rule.items() if k not in _UNSCOPED_KEYS}
        scoped["paths"] = [f"{escape_glob(str(work))}/**/{name}" for name in names]
        processes.append(scoped)
        kept.append(rule["id"])
    domains = list(data.get("domain", []))
    kept += [rule["id"] for rule in domains]
    left_out += [rule["id"] for rule in data.get("file", [])]
    left_out += [rule["id"] for rule in data.get("model", [])]  # would judge every home
    tables: list[tuple[str, dict[str, Any]]] = [("meta", meta)]
    if "defaults" in data:
        tables.append(("defaults", data["defaults"]))
    tables += [("domain", rule) for rule in domains]
    tables += [("process", rule) for rule in processes]
    tables += [("exemption", rule) for rule in data.get("exemption", [])]
    return ScopedPack(_dump(tables), policy_id, tuple(kept), tuple(left_out))


def _dump(tables: list[tuple[str, dict[str, Any]]]) -> str:
    """TOML for the shapes a policy has: tables and arrays of tables of scalars and lists."""
    out = ["# Written by proscribe demo (cli/demo_policy.py): see its docstring.", ""]
    for name, table in tables:
        out.append(f"[{name}]" if name in ("meta", "defaults") else f"[[{name}]]")
        nested: list[tuple[str, dict[str, Any]]] = []
        for key, value in table.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                nested += [(f"{name}.{key}", item) for item in value]
            else:
                out.append(f"{key} = {_value(value)}")
        out.append("")
        for sub, item in nested:
            out.append(f"[[{sub}]]")
            out += [f"{key} = {_value(value)}" for key, value in item.items()]
            out.append("")
    return "\n".join(out)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    # JSON string escapes are valid TOML basic-string escapes (as installer/common does).
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
