"""What the kernel exec guard's maps must hold for a policy: a pure translation, no kernel.

Only what the kernel can decide exactly and without the user goes into the maps; everything else
stays with the process sensor (netlink), which keeps judging every start:

* ``block`` rules only, and only those no exemption can apply to on this host (an exemption by
  user needs the user, which the kernel side does not judge);
* name globs that are an exact name (``ollama``) or a name prefix (``deepseek*``), ASCII, short
  enough for the map's key (63 characters exact, 64 prefix); other globs (``*seek*``,
  ``deep?eek``) are left to the process sensor and counted in ``left_to_sensor``;
* path globs resolved to the (device, inode) of the files they match now (a pattern without
  wildcards is one ``stat``; one with wildcards is expanded with a bound per pattern); the agent
  refreshes this when the policy changes and periodically;
* sha256 rules are learned: an executable whose hash matched is added by its (device, inode)
  and its ctime, and lapses in the kernel once the file changes.

The dynamic loaders (``ld.so``) found on the host are listed so the kernel judges the FILE they
are asked to run by its name (``ld.so FILE``).
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from proscribe.core.policy.globs import compile_globs
from proscribe.core.policy.model import Policy, ProcessRule

__all__ = [
    "LOADER_GLOBS",
    "NAME_LEN",
    "FileId",
    "GuardPlan",
    "file_id",
    "kernel_dev",
    "plan_for",
    "resolve_loaders",
]

NAME_LEN = 64  # bytes of a name key in the kernel's trie
MAX_FILES_PER_GLOB = 4096
_WILDCARDS = frozenset("*?[")
LOADER_GLOBS = (
    "/lib64/ld-linux*.so*",
    "/lib/ld-linux*.so*",
    "/lib/ld-musl-*.so*",
    "/lib/*-linux-gnu/ld-linux*.so*",
    "/usr/lib64/ld-linux*.so*",
    "/usr/lib/*-linux-gnu/ld-linux*.so*",
)


@dataclass(frozen=True, slots=True, order=True)
class FileId:
    """A file as the kernel names it: the superblock's device number and the inode number."""

    dev: int  # kernel encoding: major << 20 | minor
    ino: int


def kernel_dev(st_dev: int) -> int:
    """``stat``'s device number in the kernel's internal encoding (``MKDEV``)."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def file_id(st: os.stat_result) -> FileId:
    return FileId(kernel_dev(st.st_dev), st.st_ino)


@dataclass(slots=True)
class GuardPlan:
    """The maps' contents: ``rules`` is the table the kernel's rule numbers index."""

    rules: list[str] = field(default_factory=list)
    exact: dict[str, int] = field(default_factory=dict)  # lower-cased name -> rule number
    prefixes: dict[str, int] = field(default_factory=dict)
    files: dict[FileId, tuple[int, str]] = field(default_factory=dict)  # -> (rule, path)
    left_to_sensor: list[str] = field(default_factory=list)  # "rule: glob (why)"

    def rule_number(self, rule_id: str) -> int:
        try:
            return self.rules.index(rule_id)
        except ValueError:
            self.rules.append(rule_id)
            return len(self.rules) - 1

    def covers_name(self, name: str) -> int | None:
        """The rule number the kernel applies to this file name, or None."""
        low = name.lower()
        hit = self.exact.get(low)
        if hit is not None:
            return hit
        best: tuple[int, int] | None = None  # the longest prefix wins, as in the trie
        for prefix, rule in self.prefixes.items():
            if low.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rule)
        return None if best is None else best[1]

    def summary(self) -> dict[str, int]:
        return {
            "rules": len(self.rules),
            "exact_names": len(self.exact),
            "name_prefixes": len(self.prefixes),
            "files": len(self.files),
            "left_to_sensor": len(self.left_to_sensor),
        }


def _exempt_here(policy: Policy, rule: ProcessRule, host: str, now: datetime) -> bool:
    """Whether some exemption may allow ``rule`` on this host (for some user) at ``now``."""
    if policy.meta.expires is not None and now >= policy.meta.expires:
        return False  # an expired policy drops its exemptions; bans stay
    for exemption in policy.exemptions:
        if rule.id not in exemption.rules and "*" not in exemption.rules:
            continue
        if exemption.expires is not None and now >= exemption.expires:
            continue
        if exemption.hosts:
            hosts = compile_globs(exemption.hosts, path=False, ignore_case=True)
            if not hosts.match(host):
                continue
        return True
    return False


def _name_kind(glob_text: str) -> tuple[str, str] | None:
    """("exact" | "prefix", lower-cased name) or None when the kernel cannot judge it."""
    if not glob_text.isascii() or "\0" in glob_text or "/" in glob_text:
        return None
    body = glob_text[:-1] if glob_text.endswith("*") else glob_text
    if not body or _WILDCARDS & set(body):
        return None
    if glob_text.endswith("*"):
        return ("prefix", body.lower()) if len(body) <= NAME_LEN else None
    return ("exact", body.lower()) if len(body) < NAME_LEN else None


def _files_for(pattern: str) -> Iterable[str]:
    if not _WILDCARDS & set(pattern):
        return [pattern]
    return itertools.islice(glob.iglob(pattern, recursive=True), MAX_FILES_PER_GLOB)


def plan_for(policy: Policy, host: str, now: datetime) -> GuardPlan:
    """The maps for ``policy`` on ``host`` at ``now`` (paths are resolved on this machine)."""
    plan = GuardPlan()
    for rule in policy.process:
        if rule.action != "block":
            continue
        if _exempt_here(policy, rule, host, now):
            plan.left_to_sensor.extend(f"{rule.id}: {g} (an exemption applies)" for g in rule.names)
            continue
        for name in rule.names:
            kind = _name_kind(name)
            if kind is None:
                plan.left_to_sensor.append(f"{rule.id}: {name} (not an exact name or prefix)")
                continue
            table = plan.exact if kind[0] == "exact" else plan.prefixes
            table.setdefault(kind[1], plan.rule_number(rule.id))
        for pattern in rule.paths:
            for path in _files_for(pattern):
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if os.path.isfile(path):
                    plan.files.setdefault(file_id(st), (plan.rule_number(rule.id), path))
        if rule.sha256 or rule.cmdline:
            plan.rule_number(rule.id)  # learned hashes and cmdline stay with the sensor
    return plan


def resolve_loaders(patterns: Iterable[str] = LOADER_GLOBS) -> dict[FileId, str]:
    """The dynamic loaders on this host by (device, inode), symlinks followed."""
    found: dict[FileId, str] = {}
    for pattern in patterns:
        for path in glob.glob(pattern):
            try:
                found.setdefault(file_id(os.stat(path)), path)
            except OSError:
                continue
    return found
