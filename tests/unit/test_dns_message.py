"""DNS message parsing: questions, CNAME chains, compression, and malformed input."""

from __future__ import annotations

import dns.message
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proscribe.agent.sensors.dns.message import MalformedDnsMessage, parse_message, read_name


def _response(qname: str, qtype: str, *records: tuple[str, str, str]) -> bytes:
    query = dns.message.make_query(qname, qtype)
    response = dns.message.make_response(query)
    for owner, rtype, value in records:
        response.answer.append(dns.rrset.from_text(owner, 60, "IN", rtype, value))
    return response.to_wire()


def test_query_is_normalized() -> None:
    facts = parse_message(dns.message.make_query("chat.DeepSeek.com.", "A").to_wire())
    assert (facts.qname, facts.qtype, facts.is_response) == ("chat.deepseek.com", "A", False)
    assert facts.names_to_check == ("chat.deepseek.com",)


@pytest.mark.parametrize("qtype", ["AAAA", "HTTPS", "TXT", "MX"])
def test_qtype_text(qtype: str) -> None:
    assert parse_message(dns.message.make_query("api.deepseek.com", qtype).to_wire()).qtype == qtype


def test_cname_chain_is_followed_through_compression() -> None:
    wire = _response(
        "track.example.",
        "A",
        ("track.example.", "CNAME", "edge.cloak.example."),
        ("edge.cloak.example.", "CNAME", "API.deepseek.com."),
        ("api.deepseek.com.", "A", "1.2.3.4"),
    )
    facts = parse_message(wire)
    assert facts.is_response and facts.rcode == "NOERROR"
    assert facts.cname_targets == ("edge.cloak.example", "api.deepseek.com")
    assert facts.names_to_check == ("track.example", "edge.cloak.example", "api.deepseek.com")
    assert facts.answer_names == ("track.example", "edge.cloak.example", "api.deepseek.com")


def test_nxdomain_rcode() -> None:
    query = dns.message.make_query("x.example", "A")
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.NXDOMAIN)
    assert parse_message(response.to_wire()).rcode == "NXDOMAIN"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00" * 11,
        b"\x00" * 12,  # no question
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07deepsee",  # label cut short
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # loop
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x45abc",  # bad label type
        b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
    ],
)
def test_malformed_raises_the_one_error(payload: bytes) -> None:
    with pytest.raises(MalformedDnsMessage):
        parse_message(payload)


def test_truncated_answer_is_malformed() -> None:
    wire = _response("a.example.", "A", ("a.example.", "CNAME", "b.example."))
    with pytest.raises(MalformedDnsMessage):
        parse_message(wire[:-3])


def test_name_longer_than_255_is_rejected() -> None:
    wire = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00"
    with pytest.raises(MalformedDnsMessage):
        read_name(wire, 0)


def test_non_ascii_label_cannot_equal_a_policy_name() -> None:
    name, end = read_name(b"\x04d\xe9ep\x03com\x00", 0)
    assert name == "d\\xe9ep.com" and end == 10


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_only_the_one_error(payload: bytes) -> None:
    try:
        parse_message(payload)
    except MalformedDnsMessage:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=80))
def test_every_prefix_of_a_real_answer_parses_or_is_malformed(cut: int) -> None:
    wire = _response(
        "a.example.", "A", ("a.example.", "CNAME", "b.example."), ("b.example.", "A", "1.1.1.1")
    )
    try:
        parse_message(wire[:cut])
    except MalformedDnsMessage:
        pass
