"""Pure parsing of one DNS message (bytes in, facts out).

Sockets live elsewhere (``capture.py``, ``proxy.py``); this module only turns a payload into a
:class:`DnsMessageFacts` or raises :class:`MalformedDnsMessage`, the one error type callers
count. Only the header, question and answer section are decoded; authority and additional
records are skipped. The names worth checking against the denylist are the question name plus
every CNAME target in the answer section (CNAME cloaking: ``tracker.example`` answering
``CNAME api.deepseek.com``). The decoding is this module's own (see :func:`read_name`: dnspython's
objects cost too much per packet); dnspython only supplies the type and rcode tables here, and
the proxy uses it to build answers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.flags
import dns.rcode
import dns.rdatatype

MAX_CNAME_CHAIN = 16  # longer chains are cut here; resolvers give up well before this
MAX_QUESTIONS = 64  # more is malformed here (the proxy answers FORMERR, capture counts it)


class MalformedDnsMessage(ValueError):
    """The payload is not a DNS message this parser can read (garbage, truncated, no question,
    a bad label or compression pointer)."""


@dataclass(frozen=True, slots=True)
class DnsMessageFacts:
    """What one DNS message says, with names normalized for matching."""

    msg_id: int
    is_response: bool
    qname: str
    qtype: str
    rcode: str
    truncated: bool
    answer_names: tuple[str, ...]  # owner names of answer records
    cname_targets: tuple[str, ...]  # every CNAME target in the answer chain, in order
    # every question's name, the first one (``qname``) first: a message may ask several, and a
    # resolver may answer them all, so each one is checked (not only the first)
    questions: tuple[str, ...] = ()

    @property
    def names_to_check(self) -> tuple[str, ...]:
        """The question names, then each CNAME target not already listed."""
        seen = [self.qname]
        for name in (*self.questions, *self.cname_targets):
            if name not in seen:
                seen.append(name)
        return tuple(seen)


_HEADER = struct.Struct("!HHHHHH")
_QUESTION = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")
_CNAME = int(dns.rdatatype.CNAME)
_QR = int(dns.flags.QR)
_TC = int(dns.flags.TC)
_RCODE_TEXT = {int(code): dns.rcode.to_text(code) for code in dns.rcode.Rcode if int(code) < 16}
_MAX_POINTERS = 32  # compression pointers followed per name; loops are rejected
_TYPE_TEXT: dict[int, str] = {}


def _type_text(value: int) -> str:
    text = _TYPE_TEXT.get(value)
    if text is None:
        text = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(value))
        if len(_TYPE_TEXT) < 1024:
            _TYPE_TEXT[value] = text
    return text


def read_name(wire: bytes, offset: int) -> tuple[str, int]:
    """Decode the (possibly compressed) name at ``offset``: ``(normalized name, next offset)``.

    A hand-rolled decoder because dnspython's ``Name`` objects cost ~20 µs per name (parse plus
    ``to_text``), too slow for passive capture at 5k qps; the rules are RFC 1035 §4.1.4's.
    Labels are ASCII on the wire; any other byte is kept as a ``\\xNN`` escape so the name can
    still be reported but can never equal a normalized policy name.
    """
    labels: list[str] = []
    end = -1
    pointers = 0
    length = len(wire)
    total = 0
    while True:
        if offset >= length:
            raise MalformedDnsMessage("name runs past the end of the message")
        size = wire[offset]
        if size == 0:
            offset += 1
            break
        if size >= 0xC0:
            if offset + 1 >= length:
                raise MalformedDnsMessage("truncated compression pointer")
            pointers += 1
            if pointers > _MAX_POINTERS:
                raise MalformedDnsMessage("compression pointer loop")
            if end < 0:
                end = offset + 2
            offset = ((size & 0x3F) << 8) | wire[offset + 1]
            continue
        if size > 63:
            raise MalformedDnsMessage(f"bad label type 0x{size:02x}")
        label = wire[offset + 1 : offset + 1 + size]
        if len(label) != size:
            raise MalformedDnsMessage("label runs past the end of the message")
        total += size + 1
        if total > 255:
            raise MalformedDnsMessage("name longer than 255 octets")
        labels.append(label.decode("ascii", "backslashreplace").lower())
        offset += 1 + size
    return ".".join(labels), (end if end >= 0 else offset)


def parse_message(payload: bytes) -> DnsMessageFacts:
    """Parse a DNS payload (no TCP length prefix) or raise :class:`MalformedDnsMessage`."""
    try:
        msg_id, flags, qdcount, ancount, _ns, _ar = _HEADER.unpack_from(payload)
        if qdcount < 1:
            raise MalformedDnsMessage("no question section")
        if qdcount > MAX_QUESTIONS:
            raise MalformedDnsMessage(f"{qdcount} questions (at most {MAX_QUESTIONS} are read)")
        qname, offset = read_name(payload, 12)
        qtype, _qclass = _QUESTION.unpack_from(payload, offset)
        offset += 4
        questions = [qname]
        for _ in range(qdcount - 1):
            name, offset = read_name(payload, offset)
            offset += 4
            if name not in questions:
                questions.append(name)
        answer_names: list[str] = []
        cname_targets: list[str] = []
        for _ in range(ancount if flags & _QR else 0):
            owner, offset = read_name(payload, offset)
            rdtype, _rdclass, _ttl, rdlen = _RR_FIXED.unpack_from(payload, offset)
            offset += 10
            if offset + rdlen > len(payload):
                raise MalformedDnsMessage("record data runs past the end of the message")
            if owner not in answer_names:
                answer_names.append(owner)
            if rdtype == _CNAME and len(cname_targets) < MAX_CNAME_CHAIN:
                target, after = read_name(payload, offset)
                if after != offset + rdlen:
                    raise MalformedDnsMessage("CNAME record length does not match its name")
                cname_targets.append(target)
            offset += rdlen
    except struct.error as err:
        raise MalformedDnsMessage(f"truncated message: {err}") from err
    return DnsMessageFacts(
        msg_id=msg_id,
        is_response=bool(flags & _QR),
        qname=qname,
        qtype=_type_text(qtype),
        rcode=_RCODE_TEXT.get(flags & 0x000F) or str(flags & 0x000F),
        truncated=bool(flags & _TC),
        answer_names=tuple(answer_names),
        cname_targets=tuple(cname_targets),
        questions=tuple(questions),
    )
