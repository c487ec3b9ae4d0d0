"""A policy compiled for enforcement: one object the sensors ask "is this denied?".

:class:`CompiledPolicy` is built once per accepted policy and is pure: it does no I/O and never
reads the clock (``now`` is passed to every check). A check returns a :class:`Decision` that says
which rule, which field, which pattern and which value — enough to explain the decision to the
person whose process was killed. An exempted decision is still returned, with ``exempted_by`` set,
because the agent reports it ("exempted") instead of acting on it.

When the policy has expired (``meta.expires`` passed) bans are still enforced, exemptions are
dropped, and :meth:`CompiledPolicy.stale` is true so the agent can report it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from proscribe.core.models.identity import ModelIdentity
from proscribe.core.policy.matchers.domain import DomainMatch, DomainMatcher
from proscribe.core.policy.matchers.exemptions import ExemptionSet
from proscribe.core.policy.matchers.files import FileMatch, FileMatcher
from proscribe.core.policy.matchers.models import ModelMatch, ModelMatcher
from proscribe.core.policy.matchers.process import ProcessFacts, ProcessMatch, ProcessMatcher
from proscribe.core.policy.model import (
    DomainRule,
    FileRule,
    ModelAction,
    ModelRule,
    Policy,
    ProcessRule,
    Severity,
)

Kind = Literal["process", "dns", "file", "model"]


@dataclass(frozen=True, slots=True)
class Decision:
    """A rule that applies to what was seen, and why."""

    rule_id: str
    kind: Kind
    action: ModelAction  # "quarantine" only from a model rule
    severity: Severity
    message: str
    directives: tuple[str, ...]
    exempted_by: str | None  # exemption id, or None when the rule is enforced
    explanation: str  # "rule deepseek-desktop: name glob 'deepseek*' matched comm 'deepseek'"
    field: str  # process: name|argv0|exe_name|path|cmdline|sha256; dns: "domain"; file: "path";
    # model: where the value was read ("GGUF general.name", "Ollama manifest", "blob")
    pattern: str  # the glob, regex, digest or list entry that matched
    value: str = ""  # what it matched (comm, exe, query name, file path, matched text)

    @property
    def exempted(self) -> bool:
        return self.exempted_by is not None


class CompiledPolicy:
    """The matchers and exemptions of one :class:`Policy`."""

    __slots__ = ("_domains", "_exemptions", "_files", "_models", "_processes", "policy")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._processes = ProcessMatcher(policy.process)
        self._domains = DomainMatcher.from_rules(policy.domain)
        self._files = FileMatcher(policy.file)
        self._models = ModelMatcher(policy.model)
        self._exemptions = ExemptionSet(policy.exemptions, policy.meta.expires)

    @classmethod
    def compile(cls, policy: Policy) -> CompiledPolicy:
        """Compile every rule once. Raises ``ValueError`` only for input the loader rejects."""
        return cls(policy)

    # -- state --------------------------------------------------------------------------------

    @property
    def needs_sha256(self) -> bool:
        """Whether sensors must hash executables (only when some rule lists digests)."""
        return self._processes.needs_sha256

    def stale(self, now: datetime) -> bool:
        """The policy has expired: bans stay, exemptions are dropped; agents report it."""
        return self._exemptions.policy_expired(now)

    @property
    def domains(self) -> DomainMatcher:
        return self._domains

    @property
    def files(self) -> FileMatcher:
        return self._files

    @property
    def models(self) -> ModelMatcher:
        return self._models

    @property
    def processes(self) -> ProcessMatcher:
        return self._processes

    @property
    def exemptions(self) -> ExemptionSet:
        return self._exemptions

    # -- checks -------------------------------------------------------------------------------

    def check_process(self, facts: ProcessFacts, host: str, now: datetime) -> list[Decision]:
        """Every process rule ``facts`` violates (exempted ones included, marked)."""
        user = facts.user or None
        return [
            self._decide(self.policy.process[m.rule_index], "process", m, host, user, now)
            for m in self._processes.match(facts)
        ]

    def check_domain(
        self, qname: str, host: str, user: str | None, now: datetime
    ) -> Decision | None:
        """The decision for a queried name (or a CNAME in its answer), or None if allowed.

        The most specific listing wins; if its rule is exempted here, a less specific listing of
        another rule that is not exempted is preferred, so one exemption cannot open a name that a
        second rule still denies.
        """
        best = self._domains.match(qname)  # the common case: one listing, not exempted
        if best is None:
            return None
        first = self._decide(self.policy.domain[best.rule_index], "dns", best, host, user, now)
        if first.exempted_by is None:
            return first
        for m in self._domains.match_all(qname):
            decision = self._decide(self.policy.domain[m.rule_index], "dns", m, host, user, now)
            if decision.exempted_by is None:
                return decision
        return first

    def check_file(
        self,
        path: str,
        host: str,
        user: str | None,
        now: datetime,
        *,
        home: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Decision | None:
        """The decision for a file path owned by ``user`` with that user's home and environment.

        Without ``home`` the ``~`` globs are skipped; without ``env`` every ``$VAR`` glob is.
        """
        first: Decision | None = None
        for m in self._files.match_all(path, home, env or {}):
            decision = self._decide(self.policy.file[m.rule_index], "file", m, host, user, now)
            if decision.exempted_by is None:
                return decision
            if first is None:
                first = decision
        return first

    def check_model(
        self, identity: ModelIdentity, host: str, user: str | None, now: datetime
    ) -> Decision | None:
        """The decision for a model file owned by ``user``: the first rule not exempted, else
        the first exempted one, else None."""
        first: Decision | None = None
        for m in self._models.match_all(identity):
            decision = self._decide(self.policy.model[m.rule_index], "model", m, host, user, now)
            if decision.exempted_by is None:
                return decision
            if first is None:
                first = decision
        return first

    def expand_file_globs(self, home: str | None, env: Mapping[str, str] | None) -> list[str]:
        """Concrete glob patterns a file scanner should look at for one user."""
        return self._files.expand(home, env or {})

    # -- helpers ------------------------------------------------------------------------------

    def _decide(
        self,
        rule: ProcessRule | DomainRule | FileRule | ModelRule,
        kind: Kind,
        match: ProcessMatch | DomainMatch | FileMatch | ModelMatch,
        host: str,
        user: str | None,
        now: datetime,
    ) -> Decision:
        exemption = self._exemptions.find(rule.id, host, user, now)
        if isinstance(match, ProcessMatch):
            field, pattern, value = match.field, match.pattern, match.value
        elif isinstance(match, DomainMatch):
            field, pattern, value = "domain", match.entry, match.query
        elif isinstance(match, ModelMatch):
            field, pattern, value = match.field, match.pattern, match.value
        else:
            field, pattern, value = "path", match.glob, match.path
        explanation = f"rule {rule.id}: {match.explanation}"
        if exemption is not None:
            explanation += f"; exempted by {exemption.id}"
        return Decision(
            rule_id=rule.id,
            kind=kind,
            action=rule.action,
            severity=rule.severity,
            message=rule.message or self.policy.meta.title,
            directives=rule.directives,
            exempted_by=exemption.id if exemption is not None else None,
            explanation=explanation,
            field=field,
            pattern=pattern,
            value=value,
        )
