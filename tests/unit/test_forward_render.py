"""Rendering events for destinations: the docs/integrations.md table covers every field of the
event schema and names exactly what the code emits (syslog SD-PARAM, ECS, CEF); escaping;
size caps; poison events; the webhook signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from proscribe.collector.api.schema import EventIn
from proscribe.collector.forward.render import RenderError, parse_body, to_ecs
from proscribe.collector.forward.syslog import cef, cef_extension, frame, rfc5424
from proscribe.collector.forward.webhook import sign, verify
from proscribe.core.events import new_event
from tests.support.rsyslog import sd_params

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"


def _leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        inner = [a for a in getattr(info.annotation, "__args__", (info.annotation,))]
        nested = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested:
            out += _leaves(nested[0], f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def _table() -> dict[str, tuple[list[str], list[str], list[str]]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        code = [re.findall(r"`([^`]+)`", c) for c in cells]
        rows[code[0][0]] = (code[1], code[2], code[3])
    return rows


def full_event() -> dict[str, Any]:
    """Every schema field set, each to a value of its own."""
    return {
        "id": "0f0e0d0c-0b0a-4908-8706-050403020100",
        "time": "2026-01-28T09:14:03.120Z",
        "kind": "process",
        "rule": "deepseek-desktop",
        "policy": {"id": "ai-ban", "serial": 7, "sha256": "a1" * 32},
        "action": "killed",
        "severity": "critical",
        "host": {"agent_id": "agent-17", "hostname": "ws-17", "os": "linux"},
        "process": {
            "pid": 4242,
            "ppid": 4241,
            "name": "deepseek",
            "argv0": "ds-argv0",
            "exe": "/opt/deepseek/bin/deepseek",
            "cmdline": ["deepseek", "--chat"],
            "user": "alice",
            "uid": 1000,
            "euid": 1001,
            "sha256": "b2" * 32,
            "start_time": 1769591643.5,
        },
        "dns": {"qname": "chat.deepseek.com", "qtype": "AAAA", "resolver": "127.0.0.53"},
        "file": {
            "path": "/home/alice/ds.AppImage",
            "sha256": "c3" * 32,
            "owner": "alice",
            "uid": 1002,
            "size": 4096,
            "mtime": "2026-01-27T10:00:00Z",
            "model": {
                "format": "gguf",
                "name": "DeepSeek-R1-Distill",
                "evidence": ["general.name", "general.architecture"],
                "digests": ["d4" * 32],
            },
            "quarantine": "q-0001",
        },
        "detail": "the detail",
        "count": 3,
    }


def _ecs_get(doc: dict[str, Any], dotted: str) -> Any:
    where: Any = doc
    for part in dotted.split("."):
        if not isinstance(where, dict) or part not in where:
            return None
        where = where[part]
    return where


def test_the_table_covers_every_schema_field_and_names_what_the_code_emits() -> None:
    table = _table()
    leaves = _leaves(EventIn)
    assert sorted(table) == sorted(leaves), "docs/integrations.md: a schema field without a row"
    event = full_event()
    EventIn.model_validate(event)  # the sample is a valid event
    ecs = to_ecs(event)
    sd = sd_params(rfc5424(event).decode().split(" ", 6)[6].rsplit("] ", 1)[0] + "]")
    cef_keys = dict(cef_extension(event))
    for field, (sd_names, ecs_names, cef_names) in table.items():
        for name in sd_names:
            assert name in sd, (field, name)
        for name in ecs_names:
            assert _ecs_get(ecs, name) is not None, (field, name)
        for name in cef_names:
            assert name in cef_keys or name == "Severity", (field, name)
    # spot checks that the value is the field's, not a neighbour's
    assert sd["euid"] == "1001" and sd["uid"] == "1000" and sd["file_sha256"] == "c3" * 32
    assert ecs["process"]["user"]["id"] == "1001" and ecs["user"]["id"] == "1000"
    assert ecs["file"]["hash"]["sha256"] == "c3" * 32
    assert ecs["process"]["hash"]["sha256"] == "b2" * 32
    assert ecs["process"]["start"] == "2026-01-28T09:14:03.500Z"
    assert ecs["event"]["severity"] == 99 and ecs["event"]["type"] == ["denied"]
    assert cef_keys["cs3"] == "b2" * 32 and cef_keys["fileHash"] == "c3" * 32
    assert cef_keys["rt"] == "1769591643120" and cef_keys["cn3"] == "1001"
    assert sd["file_uid"] == "1002" and ecs["file"]["uid"] == "1002"
    assert sd["model_evidence"] == "general.name; general.architecture"
    assert ecs["proscribe"]["model"]["digests"] == ["d4" * 32]
    assert cef_keys["proscribeModelName"] == "DeepSeek-R1-Distill" and cef_keys["fsize"] == "4096"


def test_sd_values_escape_quote_backslash_and_bracket() -> None:
    event = new_event(
        "process",
        rule='a"b\\c]d',
        action="killed",
        host={"hostname": "h o\tst", "agent_id": "x"},
        process={"name": "]]]", "cmdline": ['"', "\\", "]"]},
    )
    message = rfc5424(event).decode()
    head, sd_and_msg = message.split(" [", 1)
    assert head.split(" ")[2] == "h_o_st"  # HOSTNAME: printable ASCII only
    sd = "[" + sd_and_msg.rsplit("] ", 1)[0] + "]"
    params = sd_params(sd)
    assert params["rule"] == 'a"b\\c]d' and params["process_name"] == "]]]"
    assert params["cmdline"] == '" \\ ]'
    assert 'rule="a\\"b\\\\c\\]d"' in sd


def test_long_values_are_cut_to_fit_and_the_id_never_is() -> None:
    event = new_event(
        "process",
        rule="r",
        action="killed",
        process={"cmdline": ["x" * 4000] * 200, "name": "n" * 4000},
        detail="d" * 8000,
    )
    message = rfc5424(event, max_bytes=8192)
    assert len(message) <= 8192
    assert f'id="{event["id"]}"' in message.decode()
    assert "…" in message.decode()
    assert frame(b"abc") == b"3 abc"
    assert frame("é".encode()) == b"2 \xc3\xa9"  # octets, not characters


@pytest.mark.parametrize(
    "body",
    ["{not json", "[1, 2]", '{"no": "id"}', json.dumps({"id": "x", "host": "not-an-object"})],
)
def test_poison_bodies_are_render_errors(body: str) -> None:
    with pytest.raises(RenderError):
        event = parse_body(body)
        rfc5424(event)


def test_an_unencodable_value_and_a_bad_time_are_render_errors() -> None:
    event = new_event("process", rule="r", action="killed", detail="lone \ud800 surrogate")
    with pytest.raises(RenderError, match="UTF-8"):
        rfc5424(event)
    with pytest.raises(RenderError, match="time"):
        to_ecs({**event, "time": "yesterday"})


def test_cef_escapes_header_and_extension() -> None:
    event = new_event(
        "process",
        rule="r|u\\le",
        action="killed",
        process={"cmdline": ["a=b", "c\\d", "e\nf"], "user": "bob"},
    )
    message = cef(event).decode()
    line = message[message.index("CEF:0") :]
    assert line.startswith("CEF:0|Proscribe|Proscribe|")
    assert "|r\\|u\\\\le|" in line
    assert "cs6=a\\=b c\\\\d e\\nf" in line
    assert "cs6Label=cmdline" in line and "suser=bob" in line
    assert "cs2Label" not in line  # no label without its value


def test_webhook_signature_verifies_and_detects_tampering() -> None:
    secret = b"s" * 32
    body = b'{"events": []}'
    header = sign(secret, body, 1_700_000_000)
    stamp, mac = header.split(",")
    assert stamp == "t=1700000000"
    expected = hmac.new(secret, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert mac == f"v1={expected}"
    assert verify(secret, body, header, now=1_700_000_100)
    assert not verify(secret, body + b" ", header, now=1_700_000_100)
    assert not verify(b"t" * 32, body, header, now=1_700_000_100)
    assert not verify(secret, body, header, now=1_700_001_000)  # replayed too late
    assert not verify(secret, body, "garbage", now=1_700_000_000)


@pytest.mark.parametrize("fmt", ["json", "slack", "teams", "ecs"])
def test_webhook_and_hec_renders_refuse_what_cannot_be_sent(fmt: str) -> None:
    from proscribe.collector.forward.settings import ForwardSettings
    from proscribe.collector.forward.splunk import SplunkHecDestination
    from proscribe.collector.forward.webhook import WebhookDestination

    event = parse_body(json.dumps(new_event("process", rule="r", action="killed", detail="\ud800")))
    hook = WebhookDestination(ForwardSettings("h", "webhook", "https://h.example/x", fmt))
    with pytest.raises(RenderError):
        hook.render(event)
    if fmt in ("json", "ecs"):
        hec = SplunkHecDestination(
            ForwardSettings("s", "splunk-hec", "https://h.example/x", fmt, secret=b"t" * 16)
        )
        with pytest.raises(RenderError):
            hec.render(event)
    bad_start = {**full_event(), "process": {**full_event()["process"], "start_time": "soon"}}
    with pytest.raises(RenderError, match="start_time"):
        cef(bad_start)
    with pytest.raises(RenderError, match="start_time"):
        to_ecs(bad_start)
