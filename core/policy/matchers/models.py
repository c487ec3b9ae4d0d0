"""Model matching: is this model (its identity, read from its files) denied by a ``[[model]]``?

Every criterion looks at what the file and its store say — never at the file's name:

* ``families``: a word (``deepseek``) found inside a name field or an architecture, both
  normalized to lower-case letters and digits, so ``DeepSeek-R1``, ``deepseek_v3``,
  ``DeepseekV3ForCausalLM`` and ``DEEPSEEK`` all contain ``deepseek``;
* ``architectures``: equal, any case, to an architecture field (``deepseek2``, ``deepseek_v3``);
* ``names``: case-insensitive globs on the name fields;
* ``digests``: a blob digest the store records (``sha256:…``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from proscribe.core.models.identity import ModelIdentity, normalize
from proscribe.core.policy.globs import compile_glob
from proscribe.core.policy.model import ModelRule

__all__ = ["ModelMatch", "ModelMatcher"]


_CRITERION = {
    "families": "family",
    "architectures": "architecture",
    "names": "name glob",
    "digests": "digest",
}


@dataclass(frozen=True, slots=True)
class ModelMatch:
    rule_index: int
    rule_id: str
    criterion: str  # families | architectures | names | digests
    pattern: str
    field: str  # where the value was read: "GGUF general.name", "Ollama manifest", "blob"
    value: str

    @property
    def explanation(self) -> str:
        what = _CRITERION[self.criterion]
        return f"model {what} {self.pattern!r} matched {self.field} = {self.value!r}"


class ModelMatcher:
    def __init__(self, rules: Sequence[ModelRule]) -> None:
        self.rules = tuple(rules)
        self._globs = [
            [(g, compile_glob(g, path=False, ignore_case=True)) for g in r.names] for r in rules
        ]

    def __len__(self) -> int:
        return len(self.rules)

    def match_all(self, identity: ModelIdentity) -> list[ModelMatch]:
        """The first reason each rule matches, in policy order."""
        names = [(f, v, normalize(v)) for f, v in identity.names]
        archs = [(f, v, normalize(v)) for f, v in identity.architectures]
        found = []
        for index, rule in enumerate(self.rules):
            m = self._one(index, rule, names, archs, identity.digests)
            if m is not None:
                found.append(m)
        return found

    def _one(
        self,
        index: int,
        rule: ModelRule,
        names: list[tuple[str, str, str]],
        archs: list[tuple[str, str, str]],
        digests: tuple[str, ...],
    ) -> ModelMatch | None:
        for digest in rule.digests:
            if digest in digests:
                return ModelMatch(index, rule.id, "digests", digest, "blob", digest)
        for field, value, _norm in archs:
            if value.lower() in rule.architectures:
                return ModelMatch(index, rule.id, "architectures", value.lower(), field, value)
        for family in rule.families:
            for field, value, norm in (*names, *archs):
                if family in norm:
                    return ModelMatch(index, rule.id, "families", family, field, value)
        for glob, regex in self._globs[index]:
            for field, value, _norm in names:
                if regex.match(value):
                    return ModelMatch(index, rule.id, "names", glob, field, value)
        return None
