"""The policy model (schema 1): plain, immutable data.

A :class:`Policy` is produced by :func:`proscribe.core.policy.loader.load_policy` from the
verified bytes of a policy file; nothing else constructs one from untrusted input. Compiled
matchers (``proscribe.core.policy.matchers``) are built from it once per accepted policy.

``line`` fields record where a table starts in the source file so that later checks (and the
explanation of a decision) can point at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Action = Literal["report", "block"]
Severity = Literal["low", "medium", "high", "critical"]

ACTIONS: tuple[Action, ...] = ("report", "block")
# A model rule may also move the file aside (agent/model_quarantine.py); never delete it.
ModelAction = Literal["report", "block", "quarantine"]
MODEL_ACTIONS: tuple[ModelAction, ...] = ("report", "block", "quarantine")
SEVERITIES: tuple[Severity, ...] = ("low", "medium", "high", "critical")
SCHEMA_VERSION = 1
MAX_POLICY_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Reference:
    """A directive or source a policy enforces (``[[meta.reference]]``)."""

    id: str
    title: str
    url: str = ""
    issued: str = ""  # free-form date of the directive, e.g. "2025-01-24"
    authority: str = ""  # who issued it, e.g. "US Navy (OPNAV)"


@dataclass(frozen=True, slots=True)
class Meta:
    schema: int
    id: str
    serial: int
    issued: datetime  # always timezone-aware (UTC)
    expires: datetime | None
    title: str
    description: str = ""
    references: tuple[Reference, ...] = ()


@dataclass(frozen=True, slots=True)
class Defaults:
    action: Action = "report"
    severity: Severity = "high"


@dataclass(frozen=True, slots=True)
class ProcessRule:
    id: str
    names: tuple[str, ...] = ()  # case-insensitive globs on comm, argv0 and exe basename
    paths: tuple[str, ...] = ()  # globs on the resolved executable path ("**" crosses "/")
    cmdline: tuple[str, ...] = ()  # regexes searched in the space-joined command line
    sha256: tuple[str, ...] = ()  # lower-case hex digests of the executable
    action: Action = "report"
    severity: Severity = "high"
    message: str = ""
    directives: tuple[str, ...] = ()  # ids of meta.reference entries this rule enforces
    description: str = ""
    kill_children: bool = False
    line: int | None = None
    # case-insensitive globs on the executable's own name (exe basename, or comm — never argv0):
    # the programs the cmdline regexes apply to, which then search the arguments only
    programs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DomainRule:
    id: str
    names: tuple[str, ...] = ()  # normalized; "name" = name and subdomains, "=name" = exact
    action: Action = "report"
    severity: Severity = "high"
    message: str = ""
    directives: tuple[str, ...] = ()
    description: str = ""
    line: int | None = None


@dataclass(frozen=True, slots=True)
class FileRule:
    id: str
    globs: tuple[str, ...] = ()  # "~" and "$VAR"/"${VAR}" expanded per user at scan time
    action: Action = "report"  # files are reported; "block" is refused by lint (not built)
    severity: Severity = "high"
    message: str = ""
    directives: tuple[str, ...] = ()
    description: str = ""
    line: int | None = None


@dataclass(frozen=True, slots=True)
class ModelRule:
    """``[[model]]``: a local AI model judged by what its files say about themselves
    (:mod:`proscribe.core.models.identity`), wherever it is and whatever it is called."""

    id: str
    families: tuple[str, ...] = ()  # normalized words found in a name field or architecture
    architectures: tuple[str, ...] = ()  # exact, any case: GGUF general.architecture, model_type…
    names: tuple[str, ...] = ()  # case-insensitive globs on the model's own name fields
    digests: tuple[str, ...] = ()  # "sha256:<hex>" of blobs (Ollama, OCI, Hugging Face LFS)
    action: ModelAction = "report"  # block: stop runtimes that load it; quarantine: also move it
    severity: Severity = "high"
    message: str = ""
    directives: tuple[str, ...] = ()
    description: str = ""
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Exemption:
    id: str
    rules: tuple[str, ...]  # rule ids; "*" = every rule
    hosts: tuple[str, ...] = ()  # case-insensitive hostname globs; empty = any host
    users: tuple[str, ...] = ()  # user names (exact); empty = any user
    expires: datetime | None = None  # timezone-aware; None = until the policy expires
    reason: str = ""
    line: int | None = None


Rule = ProcessRule | DomainRule | FileRule | ModelRule


@dataclass(frozen=True, slots=True)
class Policy:
    meta: Meta
    defaults: Defaults = field(default_factory=Defaults)
    process: tuple[ProcessRule, ...] = ()
    domain: tuple[DomainRule, ...] = ()
    file: tuple[FileRule, ...] = ()
    exemptions: tuple[Exemption, ...] = ()
    sha256: str = ""  # hex digest of the exact file bytes this policy was parsed from
    source: str = ""  # file name it was read from (for messages)
    model: tuple[ModelRule, ...] = ()

    def rules(self) -> tuple[Rule, ...]:
        return (*self.process, *self.domain, *self.file, *self.model)

    def rule(self, rule_id: str) -> Rule | None:
        for r in self.rules():
            if r.id == rule_id:
                return r
        return None
