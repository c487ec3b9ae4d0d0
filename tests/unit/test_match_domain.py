"""DomainMatcher: label walk, exact entries, normalization, several rules, and a reference model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proscribe.core.policy.matchers import DomainMatcher
from proscribe.core.policy.model import DomainRule
from tests.support.domain_lists import NULLGEN_AI, read_domain_list


def matcher(*names: str, rule_id: str = "r") -> DomainMatcher:
    return DomainMatcher.from_rules([DomainRule(id=rule_id, names=names)])


def test_name_covers_itself_and_every_subdomain() -> None:
    m = matcher("deepseek.com")
    for q in ("deepseek.com", "chat.deepseek.com", "a.b.c.api.deepseek.com"):
        found = m.match(q)
        assert found is not None, q
        assert (found.rule_id, found.entry, found.exact) == ("r", "deepseek.com", False)
    hit = m.match("chat.api.deepseek.com")
    assert hit is not None
    assert hit.matched_name == "deepseek.com"
    assert "subdomain" in hit.explanation


@pytest.mark.parametrize(
    "query",
    ["notdeepseek.com", "deepseek.com.evil.org", "deepseek.co", "com", "eepseek.com", "", "."],
)
def test_other_names_do_not_match(query: str) -> None:
    assert matcher("deepseek.com").match(query) is None
    assert not matcher("deepseek.com").contains(query)


@pytest.mark.parametrize(
    "query", ["DeepSeek.COM", "chat.deepseek.com.", "CHAT.DEEPSEEK.COM.", "Chat.DeepSeek.Com"]
)
def test_case_and_root_dot_are_folded(query: str) -> None:
    found = matcher("deepseek.com").match(query)
    assert found is not None
    assert found.query == query.lower().rstrip(".")


def test_idna_query_matches_punycode_entry() -> None:
    m = matcher("xn--bcher-kva.example")  # bücher.example, as the loader stores it
    found = m.match("Shop.Bücher.Example")
    assert found is not None
    assert found.query == "shop.xn--bcher-kva.example"


def test_exact_entry_matches_only_the_name_itself() -> None:
    m = matcher("=chat.qwen.ai")
    hit = m.match("chat.qwen.ai")
    assert hit is not None
    assert hit.exact
    assert hit.entry == "=chat.qwen.ai"
    assert "exact" in hit.explanation
    assert m.match("x.chat.qwen.ai") is None
    assert m.match("qwen.ai") is None
    assert not m.contains("x.chat.qwen.ai")
    assert m.contains("chat.qwen.ai")


def test_apex_is_never_implied_by_a_subdomain_entry() -> None:
    m = matcher("dashscope.aliyuncs.com")
    assert m.match("aliyuncs.com") is None
    assert m.match("oss.aliyuncs.com") is None
    assert m.match("x.dashscope.aliyuncs.com") is not None


def test_most_specific_listing_first_and_every_rule_reported() -> None:
    m = DomainMatcher.from_rules(
        [
            DomainRule(id="broad", names=("deepseek.com",)),
            DomainRule(id="chat", names=("chat.deepseek.com", "=api.deepseek.com")),
            DomainRule(id="dup", names=("deepseek.com",)),
        ]
    )
    hits = list(m.match_all("chat.deepseek.com"))
    assert [(h.rule_id, h.matched_name) for h in hits] == [
        ("chat", "chat.deepseek.com"),
        ("broad", "deepseek.com"),
        ("dup", "deepseek.com"),
    ]
    assert [h.rule_id for h in m.match_all("api.deepseek.com")] == ["chat", "broad", "dup"]
    assert [h.rule_id for h in m.match_all("v1.api.deepseek.com")] == ["broad", "dup"]
    assert len(m) == 3  # one key per distinct name


def test_parents_of_listed_names_are_not_listed() -> None:
    m = matcher("chat.deepseek.com", "=a.b.example.org")
    assert len(m) == 2  # the stored parents ("deepseek.com", "com", ...) are not entries
    for q in ("deepseek.com", "com", "b.example.org", "example.org", "x.deepseek.com"):
        assert m.match(q) is None, q
        assert not m.contains(q)
        assert list(m.match_all(q)) == []
    assert m.match("x.chat.deepseek.com") is not None
    deep = ".".join(["l"] * 120) + ".chat.deepseek.com"
    hit = m.match(deep)
    assert hit is not None
    assert hit.matched_name == "chat.deepseek.com"


def test_same_name_exact_and_wide_in_one_rule() -> None:
    m = matcher("=x.example", "x.example")
    assert [h.exact for h in m.match_all("x.example")] == [True, False]
    assert m.contains("a.x.example")


def test_from_names_folds_case_and_exact_marker() -> None:
    m = DomainMatcher.from_names(["Example.COM.", "=Only.Example.org", ""], rule_id="bench")
    assert m.rule_ids == ("bench",)
    assert m.contains("www.example.com")
    assert m.contains("only.example.org")
    assert not m.contains("www.only.example.org")


def test_real_ai_list_entries_and_their_subdomains() -> None:
    names = read_domain_list(NULLGEN_AI)
    m = DomainMatcher.from_names(names, rule_id="ai")
    assert len(m) == len(set(names))
    for name in names:
        assert m.contains(name)
        assert m.match("sub." + name) is not None
    assert m.match("chat.deepseek.com") is not None
    assert m.match("example.org") is None


# -- property: agrees with a straightforward reference ------------------------------------------

_label = st.sampled_from(["a", "b", "ab", "c-d", "x1", "deepseek", "com", "org"])
_name = st.lists(_label, min_size=1, max_size=5).map(".".join)
_entry = st.tuples(st.booleans(), _name).map(lambda t: ("=" if t[0] else "") + t[1])


def reference_match(entries: list[str], query: str) -> bool:
    q = query.lower().rstrip(".")
    for entry in entries:
        if entry.startswith("="):
            if q == entry[1:]:
                return True
        elif q == entry or q.endswith("." + entry):
            return True
    return False


@settings(max_examples=300, deadline=None)
@given(st.lists(_entry, max_size=12), _name, st.booleans(), st.booleans())
def test_agrees_with_reference(entries: list[str], query: str, upper: bool, dot: bool) -> None:
    m = matcher(*entries)
    q = (query.upper() if upper else query) + ("." if dot else "")
    expected = reference_match(entries, q)
    assert (m.match(q) is not None) == expected
    assert m.contains(q.lower().rstrip(".")) == expected
    for hit in m.match_all(q):
        assert hit.entry in entries
        assert hit.query == hit.matched_name or hit.query.endswith("." + hit.matched_name)
