"""The proxy's NXDOMAIN for a denied name, built from the query's bytes (the fast path), says
exactly what dnspython's make_response-based answer says, for the query shapes real clients
send; other shapes are left to dnspython (``None``)."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from proscribe.agent.sensors.dns.proxy import (
    _blocked_response_dnspython,
    _blocked_response_fast,
    blocked_response,
)


def _query(name: str, rdtype: str = "A", **edns: object) -> bytes:
    message = dns.message.make_query(name, rdtype, **edns)  # type: ignore[arg-type]
    return message.to_wire()


def _cookie() -> dns.edns.Option:
    return dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01" * 8)


QUERIES = {
    "plain": _query("chat.deepseek.com"),
    "mixed case, AAAA": _query("Chat.DeepSeek.COM.", "AAAA"),
    "no RD": dns.message.make_query("chat.deepseek.com", "A", flags=0).to_wire(),
    "EDNS 1232": _query("chat.deepseek.com", use_edns=0, payload=1232),
    "EDNS 256 (raised to 512)": _query("a.deepseek.com", use_edns=0, payload=256),
    "EDNS with DO and a cookie": _query(
        "x.deepseek.com", use_edns=0, want_dnssec=True, options=[_cookie()]
    ),
    "root": _query(".", "NS"),
}


@pytest.mark.parametrize("name", sorted(QUERIES))
@pytest.mark.parametrize("rule_id", ["deepseek-web", None])
@pytest.mark.parametrize("ttl", [60, 5])
def test_fast_answer_equals_dnspython(name: str, rule_id: str | None, ttl: int) -> None:
    query = QUERIES[name]
    fast = _blocked_response_fast(query, rule_id, ttl)
    assert fast is not None, "this shape must take the fast path"
    expected = dns.message.from_wire(_blocked_response_dnspython(query, rule_id, ttl))
    got = dns.message.from_wire(fast)
    assert got == expected  # id, flags, every section (names, TTLs, SOA fields)
    assert got.flags == expected.flags and got.rcode() == dns.rcode.NXDOMAIN
    assert (got.edns, got.payload, got.ednsflags) == (
        expected.edns,
        expected.payload,
        expected.ednsflags,
    )
    assert got.options == expected.options
    assert got.authority[0].ttl == ttl
    if rule_id is not None and expected.edns >= 0:
        assert got.extended_errors()[0].text == f"blocked by policy rule {rule_id}"


def test_other_shapes_go_to_dnspython() -> None:
    two = dns.message.make_query("a.deepseek.com", "A")
    two.question.append(dns.message.make_query("b.deepseek.com", "A").question[0])
    padded = dns.message.make_query("a.deepseek.com", "A", use_edns=0, pad=128)
    notify = dns.message.make_query("a.deepseek.com", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    for message in (two, padded, notify):
        wire = message.to_wire()
        assert _blocked_response_fast(wire, "r", 60) is None
        answer = dns.message.from_wire(blocked_response(wire, "r", 60))
        assert answer.rcode() == dns.rcode.NXDOMAIN
    # garbage and truncation: no fast answer (the caller answers from the header)
    assert _blocked_response_fast(b"\x00" * 11, "r", 60) is None
    assert _blocked_response_fast(QUERIES["plain"][:-3], "r", 60) is None
    edns = QUERIES["EDNS 1232"]
    assert _blocked_response_fast(edns + b"\x00", "r", 60) is None  # trailing byte
