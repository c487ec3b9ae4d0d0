"""The project's own errors.

Everything a user can cause surfaces as a :class:`ProscribeError` whose ``str()`` is one line
naming the file, field or request and the fix. The CLI prints that line and exits with
``exit_code``; it never prints a traceback for these. Lower-level exceptions (``OSError``,
``tomllib.TOMLDecodeError``, ``cryptography`` errors, ``json`` errors) are translated once, at
the boundary that reads the input, with ``raise ... from err``.

::

    ProscribeError (exit 2)
    ├── UsageError            bad command-line use
    ├── ConfigError           agent.toml / collector.toml invalid
    ├── PolicyError           policy TOML invalid (carries every LintIssue found)
    ├── KeyFileError          key file missing, wrong type, wrong permissions
    ├── SignatureError        .sig file malformed (JSON, base64, lengths, payload type)
    ├── VerificationFailed    (exit 1) signatures do not meet the trust threshold
    ├── PolicyRejected        (exit 1) verified but refused: rollback, same serial other hash,
    │                         already expired, oversized
    ├── TrustError            trust.toml chain invalid
    └── SpoolError            the durable spool cannot be opened or written
"""

from __future__ import annotations

from dataclasses import dataclass


class ProscribeError(Exception):
    """Base class: a problem the user can fix. ``str(err)`` is one line."""

    exit_code = 2


class UsageError(ProscribeError):
    """The command line was used wrongly."""


class ConfigError(ProscribeError):
    """A configuration file is missing, unreadable or has a bad key or value."""


@dataclass(frozen=True, slots=True)
class LintIssue:
    """One problem in a policy file: where it is, what is wrong, how to fix it."""

    file: str
    line: int | None
    message: str
    fix: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        tail = f" (fix: {self.fix})" if self.fix else ""
        return f"{where}: {self.message}{tail}"


class PolicyError(ProscribeError):
    """A policy file does not parse or does not pass the schema and semantic checks."""

    def __init__(self, issues: list[LintIssue] | LintIssue) -> None:
        self.issues = list(issues) if isinstance(issues, list) else [issues]
        first = str(self.issues[0]) if self.issues else "invalid policy"
        more = f" (+{len(self.issues) - 1} more)" if len(self.issues) > 1 else ""
        super().__init__(first + more)


class KeyFileError(ProscribeError):
    """A key file or key string is missing, unreadable or not an Ed25519 key of the right kind."""


class SignatureError(ProscribeError):
    """A signature envelope (``FILE.sig``) is malformed."""


class VerificationFailed(ProscribeError):
    """Signatures were checked and do not meet the threshold of trusted keys."""

    exit_code = 1


class PolicyRejected(ProscribeError):
    """A correctly signed policy was refused (rollback, conflicting hash, expired, too large)."""

    exit_code = 1


class TrustError(ProscribeError):
    """A trust file (``trust.toml``) or a rotation step is invalid."""


class SpoolError(ProscribeError):
    """The durable event spool cannot be opened or written."""
