"""Compiled matchers: is a process, a domain, a file or a model denied, and why?

Build one :class:`CompiledPolicy` per accepted policy and ask it; it is pure (no I/O, ``now``
injected). The individual matchers are public for benchmarks and tools that need only one kind.
"""

from __future__ import annotations

from proscribe.core.policy.matchers.compiled import CompiledPolicy, Decision
from proscribe.core.policy.matchers.domain import DomainMatch, DomainMatcher
from proscribe.core.policy.matchers.exemptions import ExemptionSet
from proscribe.core.policy.matchers.files import FileMatch, FileMatcher, GlobExpansion
from proscribe.core.policy.matchers.models import ModelMatch, ModelMatcher
from proscribe.core.policy.matchers.process import ProcessFacts, ProcessMatch, ProcessMatcher

__all__ = [
    "CompiledPolicy",
    "Decision",
    "DomainMatch",
    "DomainMatcher",
    "ExemptionSet",
    "FileMatch",
    "FileMatcher",
    "GlobExpansion",
    "ModelMatch",
    "ModelMatcher",
    "ProcessFacts",
    "ProcessMatch",
    "ProcessMatcher",
]
