"""ExemptionSet: rule ids and "*", host globs, users, expiry, dropped once the policy expires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from proscribe.core.policy.matchers import ExemptionSet
from proscribe.core.policy.model import Exemption

NOW = datetime(2025, 2, 1, 12, 0, tzinfo=UTC)
POLICY_EXPIRES = datetime(2025, 3, 1, tzinfo=UTC)

LAB = Exemption(
    id="lab-eval",
    rules=("deepseek-web",),
    hosts=("ai-lab-*",),
    users=("alice",),
    expires=datetime(2025, 2, 15, tzinfo=UTC),
    reason="Red-team evaluation, ticket SEC-1234",
)
EVERYTHING_ON_SOC = Exemption(id="soc", rules=("*",), hosts=("SOC-Analyst-1",))


def exemptions(*items: Exemption) -> ExemptionSet:
    return ExemptionSet(items, POLICY_EXPIRES)


@pytest.mark.parametrize(
    ("rule", "host", "user", "now", "expected"),
    [
        ("deepseek-web", "ai-lab-3", "alice", NOW, "lab-eval"),
        ("deepseek-web", "AI-LAB-3.example.mil", "alice", NOW, "lab-eval"),  # host case-folded
        ("deepseek-web", "ai-lab-3", "Alice", NOW, None),  # users are exact
        ("deepseek-web", "ai-lab-3", None, NOW, None),  # unknown user is not exempt by name
        ("deepseek-web", "ai-lab-3", "bob", NOW, None),
        ("deepseek-web", "desk-7", "alice", NOW, None),
        ("deepseek-app", "ai-lab-3", "alice", NOW, None),  # other rule
        ("deepseek-web", "ai-lab-3", "alice", datetime(2025, 2, 15, tzinfo=UTC), None),  # expired
        ("deepseek-web", "ai-lab-3", "alice", NOW + timedelta(days=13), "lab-eval"),
        ("anything", "soc-analyst-1", None, NOW, "soc"),  # "*" rule, no user list
        ("deepseek-web", "soc-analyst-1", "alice", NOW, "soc"),
    ],
)
def test_exemption_applies(
    rule: str, host: str, user: str | None, now: datetime, expected: str | None
) -> None:
    found = exemptions(LAB, EVERYTHING_ON_SOC).find(rule, host, user, now)
    assert (found.id if found else None) == expected


def test_first_in_policy_order_wins_across_star_and_named() -> None:
    star = Exemption(id="star-first", rules=("*",))
    named = Exemption(id="named", rules=("r",))
    assert exemptions(star, named).find("r", "h", None, NOW).id == "star-first"  # type: ignore[union-attr]
    assert exemptions(named, star).find("r", "h", None, NOW).id == "named"  # type: ignore[union-attr]


def test_expired_policy_drops_every_exemption() -> None:
    s = exemptions(LAB, EVERYTHING_ON_SOC, Exemption(id="forever", rules=("*",)))
    after = POLICY_EXPIRES + timedelta(seconds=1)
    assert s.find("x", "soc-analyst-1", None, POLICY_EXPIRES - timedelta(seconds=1)) is not None
    assert s.policy_expired(POLICY_EXPIRES)
    assert s.find("x", "soc-analyst-1", None, after) is None
    assert s.find("deepseek-web", "ai-lab-1", "alice", after) is None
    assert s.active(after) == []
    assert [e.id for e in s.active(NOW)] == ["lab-eval", "soc", "forever"]
    assert [e.id for e in s.active(NOW + timedelta(days=20))] == ["soc", "forever"]


def test_policy_without_expiry_never_drops() -> None:
    s = ExemptionSet([Exemption(id="e", rules=("*",))], None)
    assert not s.policy_expired(datetime(2999, 1, 1, tzinfo=UTC))
    assert s.find("r", "h", None, datetime(2999, 1, 1, tzinfo=UTC)) is not None
    assert len(s) == 1
